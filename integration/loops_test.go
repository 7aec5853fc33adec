package integration

import (
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

// The L4 event loops (runtime.loops) end to end, in both iptables modes
// and both families: a declared-tcp service balanced over both servers
// from the pod's own address, a connection into the pod (under TPROXY
// from the client's own address), half-close, a 256 MiB transfer each way
// byte-exact, and the counters. Takeover with the loops is
// TestTakeoverHandsConnectionsOver/loops-2.
func TestLoopsEndToEnd(t *testing.T) {
	for _, w := range []world{{"1.1.0", "redirect", "dual", ""}, {"1.1.0", "tproxy", "dual", ""}} {
		t.Run(w.String(), func(t *testing.T) {
			m := newMeshAgent(t, w, nil, "tcp", map[string]any{"runtime": map[string]any{"loops": 2}})
			waitLog(t, m.agent, `"msg":"L4 relays on event loops","loops":2`, 5*time.Second)
			for _, fam := range w.families() {
				seen := map[string]bool{}
				for range 6 {
					before := outbound(t, m.agent)
					body, err := m.client.Curl(t, url(vip(fam)))
					if err != nil {
						t.Fatalf("%s: through the service: %v", fam, err)
					}
					seen[strings.TrimSpace(body)] = true
					if got := outbound(t, m.agent) - before; got != 1 {
						t.Fatalf("%s: outbound counter rose by %v, want 1", fam, got)
					}
				}
				if !seen["server-a"] || !seen["server-b"] {
					t.Fatalf("%s: answers came from %v, want both servers", fam, seen)
				}
				clients := m.nginxA.Clients(t)
				if last := clients[len(clients)-1]; last != addr(m.client, fam).String() {
					t.Fatalf("%s: server saw client %s, want the pod's own %s", fam, last, addr(m.client, fam))
				}
			}

			assertInbound(t, m)

			// Half-close, then a stream each way, passthrough to server-a.
			for i, fam := range w.families() {
				port := 9100 + i
				ln := m.srvA.Listen(t, hostPort(addr(m.srvA, fam), uint16(port)))
				const size = 256 << 20
				type result struct {
					sum [32]byte
					err error
				}
				got := make(chan result, 1)
				go func() {
					c, err := ln.Accept()
					if err != nil {
						got <- result{err: err}
						return
					}
					defer c.Close()
					// Read the client's whole stream (to its FIN), then
					// answer with one of the same size after it.
					h := sha256.New()
					n, err := io.Copy(h, c)
					var r result
					copy(r.sum[:], h.Sum(nil))
					if err == nil && n != size {
						err = fmt.Errorf("server read %d bytes, want %d", n, size)
					}
					r.err = err
					got <- r
					io.Copy(c, io.LimitReader(newPattern(), size))
				}()
				c, err := m.client.Dial(hostPort(addr(m.srvA, fam), uint16(port)), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				c.SetDeadline(time.Now().Add(2 * time.Minute))
				h := sha256.New()
				if _, err := io.Copy(c, io.TeeReader(io.LimitReader(newPattern(), size), h)); err != nil {
					t.Fatalf("%s: send: %v", fam, err)
				}
				c.CloseWrite()
				r := <-got
				var want [32]byte
				copy(want[:], h.Sum(nil))
				if r.err != nil || r.sum != want {
					t.Fatalf("%s: upstream received %x (%v), sent %x", fam, r.sum, r.err, want)
				}
				back := sha256.New()
				n, err := io.Copy(back, c)
				c.Close()
				h2 := sha256.New()
				io.Copy(h2, io.LimitReader(newPattern(), size))
				if err != nil || n != size || string(back.Sum(nil)) != string(h2.Sum(nil)) {
					t.Fatalf("%s: after half-close the answer came back as %d bytes (%v), want %d byte-exact", fam, n, err, size)
				}
			}
			if up := m.agent.Metric(t, `weir_bytes_total{direction="outbound",stream="client_to_upstream"}`); up < 256<<20 {
				t.Fatalf("agent counted %v bytes upstream", up)
			}
		})
	}
}

// With the loops on, a listener whose connections go to L7 is served on
// goroutines (HTTP keeps working through the sniffer and the L7 proxy),
// and returns to its loop when they are L4 again; both kinds keep working
// throughout.
func TestLoopsListenerFollowsItsMix(t *testing.T) {
	w := world{"1.0.0", "redirect", "v4", ""}
	m := newMeshAgent(t, w, nil, "", map[string]any{"runtime": map[string]any{"loops": 2}})
	echoAt(t, m.srvA, hostPort(m.srvA.IP4, 9200))
	echo := func(i int) {
		c, err := m.client.Dial(hostPort(m.srvA.IP4, 9200), 5*time.Second)
		if err != nil {
			t.Fatalf("L4 connection %d: %v", i, err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := fmt.Sprintf("ping %d", i)
		c.Write([]byte(msg))
		b := make([]byte, len(msg))
		if _, err := io.ReadFull(c, b); err != nil || string(b) != msg {
			t.Fatalf("L4 connection %d echoed %q, %v", i, b, err)
		}
	}
	l7 := func(i int) {
		body, err := m.client.Curl(t, url(vip("v4")))
		if err != nil || !strings.HasPrefix(strings.TrimSpace(body), "server-") {
			t.Fatalf("L7 request %d: %v %q", i, err, body)
		}
	}
	for i := range 80 {
		l7(i)
	}
	waitLog(t, m.agent, "listener served on goroutines", 10*time.Second)
	for i := range 80 {
		echo(i)
	}
	waitLog(t, m.agent, "listener back on its event loop", 10*time.Second)
	for i := range 10 {
		l7(i)
		echo(i)
	}
	if n := sumMetric(t, m, "weir_http_requests_total"); n < 90 {
		t.Fatalf("the L7 proxy counted %v requests, want 90", n)
	}
}

// sumMetric adds up every series of a metric.
func sumMetric(t *testing.T, m *mesh, name string) float64 {
	t.Helper()
	body, err := m.agent.Get("/metrics")
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, name+"{") {
			var v float64
			fmt.Sscan(line[strings.LastIndexByte(line, ' ')+1:], &v)
			sum += v
		}
	}
	return sum
}

// A busy loop holds a P of its own and GOMAXPROCS grows by one for it; a
// quiet one parks, and GOMAXPROCS is the runtime's default again. Both
// states relay.
func TestLoopsHoldPsWhileBusy(t *testing.T) {
	w := world{"1.1.0", "redirect", "v4", ""}
	m := newMeshAgent(t, w, nil, "tcp", map[string]any{"runtime": map[string]any{"loops": 2}})
	waitLog(t, m.agent, `"msg":"L4 relays on event loops","loops":2`, 5*time.Second)
	base := m.agent.Metric(t, "weir_agent_gomaxprocs")
	if h := m.agent.Metric(t, "weir_event_loops_holding"); h != 0 || base < 1 {
		t.Fatalf("at the start %v loops hold a P (gomaxprocs %v), want none", h, base)
	}
	echoAt(t, m.srvA, hostPort(m.srvA.IP4, 9300))
	c, err := m.client.Dial(hostPort(m.srvA.IP4, 9300), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	msg, buf := []byte("ping"), make([]byte, 4)
	held := false
	for round := 0; round < 100 && !held; round++ {
		// Each round trip wakes the loop twice; 64 wake-ups in a second
		// make it hold.
		for range 200 {
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("echo %q, %v", buf, err)
			}
		}
		h := m.agent.Metric(t, "weir_event_loops_holding")
		if h > 0 {
			held = true
			if p := m.agent.Metric(t, "weir_agent_gomaxprocs"); p <= base {
				t.Fatalf("%v loops hold a P but gomaxprocs is %v, was %v", h, p, base)
			}
		}
	}
	if !held {
		t.Fatal("after 20,000 round trips no loop holds a P")
	}
	// Quiet: the loop parks within about two seconds.
	deadline := time.Now().Add(15 * time.Second)
	for m.agent.Metric(t, "weir_event_loops_holding") != 0 || m.agent.Metric(t, "weir_agent_gomaxprocs") != base {
		if time.Now().After(deadline) {
			t.Fatalf("quiet for 15 s: %v loops hold a P, gomaxprocs %v (was %v)",
				m.agent.Metric(t, "weir_event_loops_holding"), m.agent.Metric(t, "weir_agent_gomaxprocs"), base)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo once parked: %q, %v", buf, err)
	}
}
