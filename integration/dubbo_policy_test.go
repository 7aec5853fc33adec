package integration

import (
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// The Dubbo service addresses of TestDubboTimeoutRetry: one with a
// stalling provider, one with a refusing endpoint.
const (
	vipDubboStall = "10.96.0.51:20880"
	vipDubboDown  = "10.96.0.52:20880"
)

// Issue 11, per-request timeouts and retries with real dubbo-go peers, in
// both capture modes.
//
// timeout: the service's rpc.timeout is 500ms and both providers stall 3s
// on every 10th call. A dubbo-go consumer making 40 calls from 4
// goroutines over one connection gets the agent's timeout error for each
// stalled call (well before the 3s, counted as status "timeout"), and an
// answer for every other call; the agent's one upstream connection to
// each provider stays open.
//
// retry: one endpoint of the service refuses connections (a pod with no
// provider). 30 calls are all answered by the live provider, retried past
// the refusing one (weir_rpc_retries_total{reason="connect-failure"}).
func TestDubboTimeoutRetry(t *testing.T) {
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { testDubboTimeoutRetry(t, mode) })
	}
}

func testDubboTimeoutRetry(t *testing.T, mode string) {
	peer := filepath.Join(testworld.RPCPeers(t), "dubbo-peer")
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	a := node.MustAddPod(t, "backend", "provider-a")
	b := node.MustAddPod(t, "backend", "provider-b")
	down := node.MustAddPod(t, "backend", "provider-down")
	a.Start(t, peer, "provide", "-name", "a", "-port", "20880", "-stall", "3s")
	b.Start(t, peer, "provide", "-name", "b", "-port", "20880", "-stall", "3s")
	a.WaitPort(t, "127.0.0.1:20880")
	b.WaitPort(t, "127.0.0.1:20880")
	epA, epB, epDown := a.IP4.String()+":20880", b.IP4.String()+":20880", down.IP4.String()+":20880"
	agent.Stop(t)
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			map[string]any{
				"name": "greeter", "address": vipDubboStall, "protocol": "dubbo",
				"endpoints": []string{epA, epB},
				"rpc":       map[string]any{"timeout": "500ms"},
			},
			map[string]any{
				"name": "greeter-down", "address": vipDubboDown, "protocol": "dubbo",
				"endpoints": []string{epDown, epA},
				"rpc":       map[string]any{"retry": map[string]any{"attempts": 1, "on": []string{"connect-failure", "busy"}}},
			},
		},
	})
	client := node.MustAddPod(t, "demo", "consumer")
	// upstream counts the connections a provider has from the agent.
	upstream := func(p *testworld.Pod) int {
		t.Helper()
		return strings.Count(p.MustRun(t, "ss", "-Htn", "state", "established", "( sport = :20880 )"), "\n")
	}

	t.Run("timeout", func(t *testing.T) {
		out, err := client.Run(peer, "consume", "-url", "dubbo://"+vipDubboStall, "-calls", "40", "-parallel", "4", "-stall", "10", "-report")
		if err != nil {
			t.Fatalf("consumer: %v\n%s\nagent log:\n%s", err, lastLines(out, 30), lastLines(agent.Log(), 30))
		}
		var ok, timedOut int
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			f := strings.SplitN(l, " ", 4)
			if len(f) < 4 || (f[0] != "ok" && f[0] != "err") {
				continue
			}
			i, _ := strconv.Atoi(f[1])
			ms, _ := strconv.Atoi(f[2])
			stalled := i%10 == 0
			switch {
			case f[0] == "ok" && stalled:
				t.Errorf("call %d stalled 3s at the provider and was answered after %d ms: the 500ms timeout did not apply", i, ms)
			case f[0] == "ok":
				ok++
			case stalled:
				if ms >= 2500 || !strings.Contains(strings.ToLower(f[3]), "timeout") {
					t.Errorf("stalled call %d: error after %d ms: %s; want the agent's timeout error before the provider's 3 s", i, ms, f[3])
				}
				timedOut++
			default:
				t.Errorf("call %d failed: %s", i, f[3])
			}
		}
		if ok != 36 || timedOut != 4 {
			t.Fatalf("%d plain calls answered (want 36), %d stalled calls timed out (want 4):\n%s", ok, timedOut, out)
		}
		if n := agent.Metric(t, `weir_rpc_requests_total{method="Hello",protocol="dubbo",service="greeter",status="timeout"}`); n != 4 {
			t.Errorf("timeouts counted: %v, want 4", n)
		}
		if na, nb := upstream(a), upstream(b); na != 1 || nb != 1 {
			t.Errorf("providers have %d and %d connections from the agent, want 1 each (a timeout must not close one)", na, nb)
		}
	})

	t.Run("retry", func(t *testing.T) {
		out, err := client.Run(peer, "consume", "-url", "dubbo://"+vipDubboDown, "-calls", "30")
		if err != nil {
			t.Fatalf("consumer (a call failed): %v\n%s\nagent log:\n%s", err, lastLines(out, 30), lastLines(agent.Log(), 30))
		}
		if n := strings.Count(out, "a / call"); n != 30 {
			t.Fatalf("%d of 30 calls answered by the live provider:\n%s", n, lastLines(out, 30))
		}
		if n := agent.Metric(t, `weir_rpc_retries_total{protocol="dubbo",reason="connect-failure",service="greeter-down"}`); n < 1 {
			t.Fatalf("connect-failure retries counted: %v, want at least 1 (the refusing endpoint was never picked?)", n)
		}
		if n := agent.Metric(t, `weir_rpc_requests_total{method="Hello",protocol="dubbo",service="greeter-down",status="ok"}`); n != 30 {
			t.Fatalf("calls counted ok: %v, want 30", n)
		}
		t.Logf("%v connect-failure retries for 30 calls", agent.Metric(t, `weir_rpc_retries_total{protocol="dubbo",reason="connect-failure",service="greeter-down"}`))
	})
}
