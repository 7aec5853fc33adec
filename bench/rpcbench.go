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
	agent, paths := rpcWorld(t, opts.Mode, "dubbo", rpcVIPL7, rpcVIPL4, 20880, func(p *testworld.Pod) {
		p.Start(t, peer, "provide", "-name", "p", "-port", "20880")
	})
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

// Redis service addresses of the benchmark: one redis-server declared
// redis (per command through the RPC framework) and tcp (L4).
const (
	redisVIPL7 = "10.96.0.82:6379"
	redisVIPL4 = "10.96.0.83:6379"
)

// RedisOptions set up MeasureRedis.
type RedisOptions struct {
	// Mode is the interception mode: redirect or tproxy.
	Mode string
	// Requests per redis-benchmark test (SET, then GET), Clients its
	// connections, Pipeline the commands each keeps in flight (-P).
	Requests, Clients, Pipeline int
	// Rounds repeats the three paths in turn.
	Rounds int
}

// RedisResult is one path's measurement, summed over the rounds: the
// commands redis-benchmark completed (SET and GET), the seconds they
// took by its own rates, its p99 (ms, the median over rounds and tests)
// and the agent's CPU.
type RedisResult struct {
	Path     string
	Requests int
	Seconds  float64
	P99      float64
	AgentCPU time.Duration
	p99s     []float64
}

// RequestsPerSecond is the throughput.
func (r RedisResult) RequestsPerSecond() float64 { return float64(r.Requests) / r.Seconds }

// CPUPerRequest is the agent's CPU per command in µs.
func (r RedisResult) CPUPerRequest() float64 {
	return float64(r.AgentCPU.Microseconds()) / float64(r.Requests)
}

// MeasureRedis runs redis-benchmark (pipelined) against a real
// redis-server over three paths: direct, through weir at L4 (declared
// tcp) and through weir at L7 (declared redis: every command framed and
// balanced on its own over the agent's shared pipelined connection); and
// reports throughput, p99 and the agent's CPU per command. It needs root,
// redis-server and redis-benchmark.
func MeasureRedis(t testworld.T, opts RedisOptions) []RedisResult {
	testworld.RequireTool(t, "redis-server", "redis-benchmark")
	agent, paths := rpcWorld(t, opts.Mode, "redis", redisVIPL7, redisVIPL4, 6379, func(p *testworld.Pod) {
		p.Start(t, "redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	})
	results := make([]RedisResult, len(paths))
	for round := range opts.Rounds {
		for i, p := range paths {
			r := &results[i]
			r.Path = p.name
			host, port, _ := strings.Cut(p.addr, ":")
			cpu0, err := procCPU(agent.Pid())
			if err != nil {
				t.Fatalf("agent cpu: %v", err)
			}
			out, err := p.client.Run("redis-benchmark", "-h", host, "-p", port, "-c", strconv.Itoa(opts.Clients),
				"-n", strconv.Itoa(opts.Requests), "-P", strconv.Itoa(opts.Pipeline), "-t", "set,get", "--csv")
			if err != nil {
				t.Fatalf("round %d, %s: redis-benchmark: %v\n%s", round, p.name, err, tail(out, 20))
			}
			cpu1, err := procCPU(agent.Pid())
			if err != nil {
				t.Fatalf("agent cpu: %v", err)
			}
			tests := 0
			for _, l := range strings.Split(out, "\n") {
				f := strings.Split(strings.ReplaceAll(strings.TrimSpace(l), `"`, ""), ",")
				if len(f) < 7 || (f[0] != "SET" && f[0] != "GET") {
					continue
				}
				rps, err1 := strconv.ParseFloat(f[1], 64)
				p99, err2 := strconv.ParseFloat(f[6], 64)
				if err1 != nil || err2 != nil || rps <= 0 {
					t.Fatalf("round %d, %s: bad line %q", round, p.name, l)
				}
				tests++
				r.Requests += opts.Requests
				r.Seconds += float64(opts.Requests) / rps
				r.p99s = append(r.p99s, p99)
			}
			if tests != 2 {
				t.Fatalf("round %d, %s: %d of 2 results (SET, GET) in:\n%s", round, p.name, tests, tail(out, 20))
			}
			r.AgentCPU += cpu1 - cpu0
			t.Logf("round %d %s: agent CPU %s\n%s", round, p.name, cpu1-cpu0, strings.TrimSpace(out))
		}
	}
	for i := range results {
		results[i].P99 = median(results[i].p99s)
	}
	return results
}

// rpcPath is one way from a client pod to the server.
type rpcPath struct {
	name   string
	client *testworld.Pod
	addr   string
}

// rpcWorld makes a node with one server pod (start starts it on port)
// behind two services, vipL7 declared protocol and vipL4 declared tcp,
// and two client pods, one captured and one not. It returns the agent and
// the three paths: direct, weir at L4, weir at L7.
func rpcWorld(t testworld.T, mode, protocol, vipL7, vipL4 string, port int, start func(*testworld.Pod)) (*testworld.Agent, []rpcPath) {
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	server := node.MustAddPod(t, "backend", "server")
	tuneNetns(t, server.Netns)
	start(server)
	server.WaitPort(t, fmt.Sprintf("127.0.0.1:%d", port))
	ep := fmt.Sprintf("%s:%d", server.IP4, port)
	agent.Stop(t)
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			map[string]any{"name": protocol + "-l7", "address": vipL7, "protocol": protocol, "endpoints": []string{ep}},
			map[string]any{"name": protocol + "-l4", "address": vipL4, "protocol": "tcp", "endpoints": []string{ep}},
		},
	})
	captured := node.MustAddPod(t, "demo", "client")
	plain := node.MustAddPod(t, "plain", "client")
	for _, p := range []*testworld.Pod{captured, plain} {
		tuneNetns(t, p.Netns)
	}
	return agent, []rpcPath{
		{"direct", plain, ep},
		{"weir-" + mode + "-l4", captured, vipL4},
		{"weir-" + mode + "-l7", captured, vipL7},
	}
}
