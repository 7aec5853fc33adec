package bench

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// RPCOptions set up MeasureDubbo.
type RPCOptions struct {
	// Mode is the interception mode: redirect or tproxy.
	Mode string
	// Calls per run, made by Parallel goroutines of one dubbo-go consumer
	// over one connection.
	Calls, Parallel int
	// Rounds repeats the three paths in turn, so load on the machine is
	// spread over them alike.
	Rounds int
}

// RPCResult is one path's measurement, summed over the rounds.
type RPCResult struct {
	Path string
	// Calls answered and the seconds they took; the consumer's p50 and p99
	// call latency (µs), the medians over the rounds.
	Calls      int
	Seconds    float64
	P50, P99   float64
	AgentCPU   time.Duration // the agent's user+system CPU during the runs
	p50s, p99s []float64
}

// CallsPerSecond is the throughput.
func (r RPCResult) CallsPerSecond() float64 { return float64(r.Calls) / r.Seconds }

// CPUPerCall is the agent's CPU per call in µs.
func (r RPCResult) CPUPerCall() float64 {
	return float64(r.AgentCPU.Microseconds()) / float64(r.Calls)
}

// Dubbo service addresses of the benchmark: the same provider declared
// dubbo (the agent's L7 RPC half) and tcp (relayed at L4).
const (
	rpcVIPL7 = "10.96.0.80:20880"
	rpcVIPL4 = "10.96.0.81:20880"
)

// MeasureDubbo runs a real dubbo-go consumer against a real dubbo-go
// provider over three paths: direct (an uncaptured pod), through weir at
// L4 (service declared tcp) and through weir at L7 (declared dubbo:
// framed, id-rewritten, balanced per call); and reports throughput, the
// consumer's latency and the agent's CPU per call. It needs root and the
// peers of hack/rpc-peers.sh (WEIR_RPC_PEERS_DIR or the script).
func MeasureDubbo(t testworld.T, opts RPCOptions) []RPCResult {
	peer := filepath.Join(testworld.RPCPeers(t), "dubbo-peer")
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": opts.Mode}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	provider := node.MustAddPod(t, "backend", "provider")
	tuneNetns(t, provider.Netns)
	provider.Start(t, peer, "provide", "-name", "p", "-port", "20880")
	provider.WaitPort(t, "127.0.0.1:20880")
	ep := provider.IP4.String() + ":20880"
	agent.Stop(t)
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			map[string]any{"name": "dubbo-l7", "address": rpcVIPL7, "protocol": "dubbo", "endpoints": []string{ep}},
			map[string]any{"name": "dubbo-l4", "address": rpcVIPL4, "protocol": "tcp", "endpoints": []string{ep}},
		},
	})
	captured := node.MustAddPod(t, "demo", "consumer")
	plain := node.MustAddPod(t, "plain", "consumer")
	for _, p := range []*testworld.Pod{captured, plain} {
		tuneNetns(t, p.Netns)
	}
	paths := []struct {
		name   string
		client *testworld.Pod
		addr   string
	}{
		{"direct", plain, ep},
		{"weir-" + opts.Mode + "-l4", captured, rpcVIPL4},
		{"weir-" + opts.Mode + "-l7", captured, rpcVIPL7},
	}
	results := make([]RPCResult, len(paths))
	for round := range opts.Rounds {
		for i, p := range paths {
			r := &results[i]
			r.Path = p.name
			cpu0, err := procCPU(agent.Pid())
			if err != nil {
				t.Fatalf("agent cpu: %v", err)
			}
			out, err := p.client.Run(peer, "consume", "-url", "dubbo://"+p.addr, "-calls", strconv.Itoa(opts.Calls),
				"-parallel", strconv.Itoa(opts.Parallel), "-conns", "1")
			if err != nil {
				t.Fatalf("round %d, %s: consumer: %v\n%s", round, p.name, err, tail(out, 20))
			}
			cpu1, err := procCPU(agent.Pid())
			if err != nil {
				t.Fatalf("agent cpu: %v", err)
			}
			var calls int
			var secs, p50, p99 float64
			found := false
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, "calls ") {
					if _, err := fmt.Sscanf(l, "calls %d elapsed_s %g p50_us %g p99_us %g", &calls, &secs, &p50, &p99); err == nil {
						found = true
					}
				}
			}
			if !found || calls != opts.Calls {
				t.Fatalf("round %d, %s: no summary line for %d calls in:\n%s", round, p.name, opts.Calls, tail(out, 20))
			}
			r.Calls += calls
			r.Seconds += secs
			r.AgentCPU += cpu1 - cpu0
			r.p50s = append(r.p50s, p50)
			r.p99s = append(r.p99s, p99)
			t.Logf("round %d %s: %d calls in %.2f s, p50 %.0f µs, p99 %.0f µs, agent CPU %s", round, p.name, calls, secs, p50, p99, cpu1-cpu0)
		}
	}
	for i := range results {
		results[i].P50 = median(results[i].p50s)
		results[i].P99 = median(results[i].p99s)
	}
	return results
}
