package integration

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

var v4world = world{"1.0.0", "redirect", "v4", ""}

func (m *mesh) endpointSeries(name, ep string) string {
	return fmt.Sprintf(`%s{cluster="web-v4",endpoint=%q}`, name, ep)
}

// Must show 2 (issue 4): with one endpoint's server stopped, every request
// to the service still succeeds (connect retry + ejection), the metrics show
// the ejection, and the endpoint gets traffic again once it is back and the
// ejection time has passed.
func TestEjectionAndRecovery(t *testing.T) {
	m := newMeshWith(t, v4world, map[string]any{
		"outlier": map[string]any{"consecutiveFailures": 2, "baseEjectionTime": "2s", "maxEjectionPercent": 50},
	})
	epB := hostPort(m.srvB.IP4, 8080)
	m.nginxB.Stop()
	m.srvB.WaitPortClosed(t, epB)
	for i := 0; i < 200; i++ {
		body, err := m.client.Get(url(vip("v4")))
		if err != nil || strings.TrimSpace(body) != "server-a" {
			t.Fatalf("request %d with server-b down: %v: %q", i, err, body)
		}
	}
	if ej := m.agent.Metric(t, m.endpointSeries("weir_endpoint_ejections_total", epB)); ej < 1 {
		t.Fatalf("server-b never ejected (ejections %v)", ej)
	}
	if f := m.agent.Metric(t, m.endpointSeries("weir_endpoint_connect_failures_total", epB)); f < 2 {
		t.Fatalf("connect failures to server-b counted %v", f)
	}
	m.nginxB = m.srvB.StartNginx(t, 8080, "server-b")
	deadline := time.Now().Add(20 * time.Second)
	for {
		body, err := m.client.Get(url(vip("v4")))
		if err != nil {
			t.Fatalf("request after server-b came back: %v", err)
		}
		if strings.TrimSpace(body) == "server-b" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server-b got no traffic within 20s of coming back (ejection 2s)")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Must show 3 (issue 4): ring hash keeps one client on one endpoint.
func TestRingHashAffinity(t *testing.T) {
	m := newMeshWith(t, v4world, map[string]any{"balancer": "ring_hash"})
	other := m.node.MustAddPod(t, "demo", "client-2")
	for _, c := range []struct {
		name string
		curl func() (string, error)
	}{
		{"client", func() (string, error) { return m.client.Curl(t, url(vip("v4"))) }},
		{"client-2", func() (string, error) { return other.Curl(t, url(vip("v4"))) }},
	} {
		seen := map[string]int{}
		for i := 0; i < 20; i++ {
			body, err := c.curl()
			if err != nil {
				t.Fatal(err)
			}
			seen[strings.TrimSpace(body)]++
		}
		if len(seen) != 1 {
			t.Fatalf("%s reached %v under ring hash; want one endpoint every time", c.name, seen)
		}
	}
}

// Must show 3 (issue 4): peak-EWMA gives a slow backend a smaller share. The
// delay is injected by dropping half the SYNs to server-b (each drop costs a
// 1s retransmit), since this kernel has no netem.
func TestPeakEWMAAvoidsSlowEndpoint(t *testing.T) {
	m := newMeshWith(t, v4world, map[string]any{"balancer": "peak_ewma", "connectTimeout": "3s"})
	m.srvB.MustRun(t, "iptables", "-w", "-I", "INPUT", "-p", "tcp", "--dport", "8080", "--syn",
		"-m", "statistic", "--mode", "random", "--probability", "0.5", "-j", "DROP")
	seen := map[string]int{}
	const n = 40
	for i := 0; i < n; i++ {
		body, err := m.client.Curl(t, url(vip("v4")))
		if err != nil {
			t.Fatal(err)
		}
		seen[strings.TrimSpace(body)]++
	}
	if seen["server-b"]*4 > n {
		t.Fatalf("slow server-b got %d of %d connections under peak-EWMA; want well under half (%v)", seen["server-b"], n, seen)
	}
	if seen["server-a"]+seen["server-b"] != n {
		t.Fatalf("answers %v", seen)
	}
	t.Logf("peak-EWMA shares with server-b slowed: %v", seen)
}

// Must show 4 (issue 4): past maxConnections new connections are refused at
// once and counted.
func TestCircuitBreaker(t *testing.T) {
	m := newMeshWith(t, v4world, map[string]any{"circuitBreaker": map[string]any{"maxConnections": 2}})
	// Hold two connections open through the agent.
	var held []net.Conn
	for i := 0; i < 2; i++ {
		c, err := m.client.Dial(vip("v4").String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 512)); err != nil {
			t.Fatalf("held connection %d: %v", i, err)
		}
		held = append(held, c)
	}
	before := m.agent.Metric(t, `weir_cluster_circuit_open_total{cluster="web-v4"}`)
	start := time.Now()
	body, err := m.client.Curl(t, url(vip("v4")))
	if err == nil {
		t.Fatalf("third connection got through the breaker: %q", body)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("refusal took %v; want it fast", d)
	}
	if got := m.agent.Metric(t, `weir_cluster_circuit_open_total{cluster="web-v4"}`) - before; got < 1 {
		t.Fatalf("circuit-open counter rose by %v", got)
	}
	for _, c := range held {
		c.Close()
	}
	// Once the held connections are gone, traffic flows again.
	var wg sync.WaitGroup
	deadline := time.Now().Add(10 * time.Second)
	for {
		if body, err := m.client.Curl(t, url(vip("v4"))); err == nil && strings.HasPrefix(body, "server-") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("breaker did not close after the held connections ended")
		}
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
}
