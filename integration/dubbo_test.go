package integration

import (
	"encoding/binary"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// vipDubbo is the Dubbo service address of TestDubbo.
const vipDubbo = "10.96.0.50:20880"

// Issue 11, Dubbo: a real dubbo-go consumer calls a service address with
// two real dubbo-go providers behind it, in both capture modes. Its calls
// go over one connection and are balanced per request (both providers
// answer); calls with group gold/1.0 and canary/2.0 are routed by the
// service's rpcRoutes to the one provider that exports them (the other
// would answer "no exporter", and the consumer would fail); a heartbeat is
// answered by the agent and counted; the agent counts the calls by method.
func TestDubbo(t *testing.T) {
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { testDubbo(t, mode) })
	}
}

func testDubbo(t *testing.T, mode string) {
	peer := filepath.Join(testworld.RPCPeers(t), "dubbo-peer")
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	p1 := node.MustAddPod(t, "backend", "provider-1")
	p2 := node.MustAddPod(t, "backend", "provider-2")
	p1.Start(t, peer, "provide", "-name", "p1", "-port", "20880", "-export", ":", "-export", "gold:1.0")
	p2.Start(t, peer, "provide", "-name", "p2", "-port", "20880", "-export", ":", "-export", "canary:2.0")
	p1.WaitPort(t, "127.0.0.1:20880")
	p2.WaitPort(t, "127.0.0.1:20880")
	ep1, ep2 := p1.IP4.String()+":20880", p2.IP4.String()+":20880"
	agent.Stop(t)
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			map[string]any{
				"name": "greeter", "address": vipDubbo, "protocol": "dubbo",
				"endpoints": []string{ep1, ep2},
				"rpcRoutes": []any{
					map[string]any{"name": "gold", "matches": []any{map[string]any{"service": "org.weir.Greeter", "group": "gold", "version": "1.0"}},
						"backendRefs": []any{map[string]any{"service": "greeter-p1"}}},
					map[string]any{"name": "canary", "matches": []any{map[string]any{"group": "canary"}},
						"backendRefs": []any{map[string]any{"service": "greeter-p2"}}},
				},
			},
			map[string]any{"name": "greeter-p1", "endpoints": []string{ep1}},
			map[string]any{"name": "greeter-p2", "endpoints": []string{ep2}},
		},
	})
	client := node.MustAddPod(t, "demo", "consumer")

	consume := func(calls int, args ...string) []string {
		t.Helper()
		before := agent.Metric(t, `weir_connections_total{direction="outbound"}`)
		out, err := client.Run(peer, append([]string{"consume", "-url", "dubbo://" + vipDubbo, "-calls", fmt.Sprint(calls)}, args...)...)
		if err != nil {
			t.Fatalf("dubbo-go consumer %v: %v\n%s\nagent log:\n%s", args, err, lastLines(out, 30), lastLines(agent.Log(), 30))
		}
		var answers []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "p1 ") || strings.HasPrefix(l, "p2 ") {
				answers = append(answers, l)
			}
		}
		if len(answers) != calls {
			t.Fatalf("consumer %v: %d answers, want %d:\n%s", args, len(answers), calls, lastLines(out, 30))
		}
		if n := agent.Metric(t, `weir_connections_total{direction="outbound"}`) - before; n != 1 {
			t.Errorf("consumer %v opened %v captured connections, want 1 (calls balanced per request over one connection)", args, n)
		}
		return answers
	}

	// Default group and version: both providers, per request.
	plain := consume(20)
	if n1, n2 := countPrefix(plain, "p1 /"), countPrefix(plain, "p2 /"); n1 == 0 || n2 == 0 || n1+n2 != 20 {
		t.Fatalf("20 calls over one connection: p1 %d, p2 %d: %q", n1, n2, plain)
	}
	// Group and version routes: every call to the one provider exporting it.
	if got := consume(10, "-group", "gold", "-version", "1.0"); countPrefix(got, "p1 gold/1.0 ") != 10 {
		t.Fatalf("gold/1.0 calls: %q", got)
	}
	if got := consume(10, "-group", "canary", "-version", "2.0"); countPrefix(got, "p2 canary/2.0 ") != 10 {
		t.Fatalf("canary/2.0 calls: %q", got)
	}

	// A heartbeat (an event request) is answered by the agent itself.
	c, err := client.Dial(vipDubbo, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	hb := []byte{0xda, 0xbb, 0xe2, 0, 0, 0, 0, 0, 0, 0, 0, 42, 0, 0, 0, 1, 'N'}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(hb); err != nil {
		t.Fatal(err)
	}
	reply := make([]byte, 17)
	if _, err := io.ReadFull(c, reply); err != nil {
		t.Fatalf("heartbeat reply: %v", err)
	}
	if reply[2]&0xa0 != 0x20 || reply[3] != 20 || binary.BigEndian.Uint64(reply[4:12]) != 42 {
		t.Fatalf("heartbeat reply % x", reply)
	}
	if n := agent.Metric(t, `weir_rpc_heartbeats_total{protocol="dubbo",side="client"}`); n < 1 {
		t.Fatalf("weir_rpc_heartbeats_total{client} = %v", n)
	}
	if n := agent.Metric(t, `weir_rpc_requests_total{method="Hello",protocol="dubbo",service="greeter",status="ok"}`); n != 40 {
		t.Fatalf("weir_rpc_requests_total for Hello = %v, want 40", n)
	}
}

// lastLines is the end of a long output, for failure messages.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// countPrefix counts the answers that start with prefix.
func countPrefix(answers []string, prefix string) int {
	n := 0
	for _, a := range answers {
		if strings.HasPrefix(a, prefix) {
			n++
		}
	}
	return n
}
