package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// vipBolt is the SOFABolt service address of TestBolt.
const vipBolt = "10.96.0.60:12200"

// Issue 11, SOFABolt: a client made of npm's sofa-bolt-node calls a
// service address with two sofa-bolt-node servers behind it, in both
// capture modes, over one connection: its heartbeat is answered by the
// agent (counted), its calls to com.weir.Hello are balanced per request
// (both servers answer), and its calls to com.weir.Pay (the service
// header) are routed by rpcRoutes to server b only.
func TestBolt(t *testing.T) {
	testworld.RequireTool(t, "node")
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { testBolt(t, mode) })
	}
}

func testBolt(t *testing.T, mode string) {
	modules := filepath.Join(testworld.RPCPeers(t), "node_modules")
	_, err := os.Stat(filepath.Join(modules, "sofa-bolt-node"))
	testworld.Require(t, err == nil, "sofa-bolt-node in "+modules+" (hack/rpc-peers.sh)")
	script, err := filepath.Abs(filepath.Join("..", "tools", "bolt", "bolt-peer.js"))
	if err != nil {
		t.Fatal(err)
	}
	node := func(args ...string) []string {
		return append([]string{"env", "NODE_PATH=" + modules, "node", script}, args...)
	}
	world := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
	agent := world.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	sa := world.MustAddPod(t, "backend", "bolt-a")
	sb := world.MustAddPod(t, "backend", "bolt-b")
	for _, s := range []struct {
		p    *testworld.Pod
		name string
	}{{sa, "a"}, {sb, "b"}} {
		cmd := node("serve", s.name, "12200")
		s.p.Start(t, cmd[0], cmd[1:]...)
		s.p.WaitPort(t, "127.0.0.1:12200")
	}
	epa, epb := sa.IP4.String()+":12200", sb.IP4.String()+":12200"
	agent.Stop(t)
	agent = world.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			map[string]any{
				"name": "bolt", "address": vipBolt, "protocol": "bolt",
				"endpoints": []string{epa, epb},
				"rpcRoutes": []any{map[string]any{
					"name": "pay", "matches": []any{map[string]any{"service": "com.weir.Pay:1.0"}},
					"backendRefs": []any{map[string]any{"service": "bolt-b"}},
				}},
			},
			map[string]any{"name": "bolt-b", "endpoints": []string{epb}},
		},
	})
	client := world.MustAddPod(t, "demo", "bolt-client")
	call := func(service string, calls int) []string {
		t.Helper()
		before := agent.Metric(t, `weir_connections_total{direction="outbound"}`)
		host, port, _ := strings.Cut(vipBolt, ":")
		cmd := node("call", host, port, service, fmt.Sprint(calls))
		out, err := client.Run(cmd[0], cmd[1:]...)
		if err != nil {
			t.Fatalf("bolt client %s: %v\n%s\nagent log:\n%s", service, err, lastLines(out, 20), lastLines(agent.Log(), 30))
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != calls+1 || lines[0] != "heartbeat ack" {
			t.Fatalf("bolt client %s: %q", service, out)
		}
		if n := agent.Metric(t, `weir_connections_total{direction="outbound"}`) - before; n != 1 {
			t.Errorf("bolt client opened %v captured connections, want 1", n)
		}
		return lines[1:]
	}
	hello := call("com.weir.Hello:1.0", 20)
	if na, nb := countPrefix(hello, "a com.weir.Hello:1.0 "), countPrefix(hello, "b com.weir.Hello:1.0 "); na == 0 || nb == 0 || na+nb != 20 {
		t.Fatalf("20 calls over one connection: a %d, b %d: %q", na, nb, hello)
	}
	if pay := call("com.weir.Pay:1.0", 10); countPrefix(pay, "b com.weir.Pay:1.0 ") != 10 {
		t.Fatalf("com.weir.Pay calls not all on server b: %q", pay)
	}
	if n := agent.Metric(t, `weir_rpc_heartbeats_total{protocol="bolt",side="client"}`); n != 2 {
		t.Fatalf("weir_rpc_heartbeats_total{bolt,client} = %v, want 2 (one per client)", n)
	}
	if n := agent.Metric(t, `weir_rpc_requests_total{method="none",protocol="bolt",service="bolt",status="ok"}`); n != 30 {
		t.Fatalf("weir_rpc_requests_total for bolt = %v, want 30", n)
	}
}
