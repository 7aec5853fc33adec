package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
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
	// BaselineAgent, when set, is another weir-agent binary (a build of
	// main) measured in the same rounds on a node of its own: paths
	// weir-<mode>-base-l4 and -base-l7, for an interleaved A/B.
	BaselineAgent string
	// Perf counts the agent's system calls and context switches per call
	// with `perf stat` attached during each run.
	Perf bool
	// Record, when set, is a directory where `perf record -g` writes the
	// proxy's call graph of every run, <path>-r<round>.data, for finding
	// where one path spends what another does not.
	Record string
}

// RPCResult is one path's measurement, summed over the rounds.
type RPCResult struct {
	Path string
	// Calls answered and the seconds they took; the consumer's p50 and p99
	// call latency (µs), the medians over the rounds.
	Calls    int
	Seconds  float64
	P50, P99 float64
	AgentCPU time.Duration // the agent's user+system CPU during the runs
	// Syscalls and Switches are the agent's system calls and context
	// switches during the runs (with RPCOptions.Perf).
	Syscalls, Switches float64
	p50s, p99s         []float64
}

// SyscallsPerCall and SwitchesPerCall are the perf counts per call.
func (r RPCResult) SyscallsPerCall() float64 { return r.Syscalls / float64(r.Calls) }

// SwitchesPerCall is the agent's context switches per call.
func (r RPCResult) SwitchesPerCall() float64 { return r.Switches / float64(r.Calls) }

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
	paths := rpcWorld(t, opts.Mode, opts.BaselineAgent, "dubbo", rpcVIPL7, rpcVIPL4, 20880, func(p *testworld.Pod) {
		p.Start(t, peer, "provide", "-name", "p", "-port", "20880")
	})
	results := make([]RPCResult, len(paths))
	for round := range opts.Rounds {
		for i, p := range paths {
			r := &results[i]
			r.Path = p.name
			m := startMeter(t, p.pid, opts.Perf, recordTo(opts.Record, p.name, round))
			out, err := p.client.Run(peer, "consume", "-url", "dubbo://"+p.addr, "-calls", strconv.Itoa(opts.Calls),
				"-parallel", strconv.Itoa(opts.Parallel), "-conns", "1")
			if err != nil {
				t.Fatalf("round %d, %s: consumer: %v\n%s", round, p.name, err, tail(out, 20))
			}
			cpu, counts := m.stop(t)
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
			r.AgentCPU += cpu
			r.Syscalls += counts[perfSyscalls]
			r.Switches += counts[perfSwitches]
			r.p50s = append(r.p50s, p50)
			r.p99s = append(r.p99s, p99)
			t.Logf("round %d %s: %d calls in %.2f s, p50 %.0f µs, p99 %.0f µs, agent CPU %s", round, p.name, calls, secs, p50, p99, cpu)
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
	// BaselineAgent, Perf and Record are as in RPCOptions.
	BaselineAgent string
	Perf          bool
	Record        string
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
	// AgentUser is the user-space part of AgentCPU (the agent's own code
	// and the Go runtime, not the kernel's socket work).
	AgentUser time.Duration
	// MachineCPU is the whole machine's busy time (every process and the
	// kernel, all CPUs) and Wall the wall time over the same
	// redis-benchmark runs: with every process on the path sharing the
	// machine's cores, their ratio says whether the rate was bound by CPU.
	MachineCPU, Wall time.Duration
	// Syscalls and Switches are as in RPCResult.
	Syscalls, Switches float64
	p99s               []float64
}

// UserPerRequest is the agent's user-space CPU per command in µs.
func (r RedisResult) UserPerRequest() float64 {
	return float64(r.AgentUser.Microseconds()) / float64(r.Requests)
}

// MachineCPUPerRequest is the whole machine's CPU per command in µs.
func (r RedisResult) MachineCPUPerRequest() float64 {
	return float64(r.MachineCPU.Microseconds()) / float64(r.Requests)
}

// Busy is the share of the machine's CPUs that was busy while the path
// ran (1: all of them, all the time).
func (r RedisResult) Busy() float64 {
	if r.Wall <= 0 {
		return 0
	}
	return float64(r.MachineCPU) / float64(r.Wall) / float64(runtime.NumCPU())
}

// SyscallsPerRequest is the agent's system calls per command.
func (r RedisResult) SyscallsPerRequest() float64 { return r.Syscalls / float64(r.Requests) }

// SwitchesPerRequest is the agent's context switches per command.
func (r RedisResult) SwitchesPerRequest() float64 { return r.Switches / float64(r.Requests) }

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
	paths := rpcWorld(t, opts.Mode, opts.BaselineAgent, "redis", redisVIPL7, redisVIPL4, 6379, func(p *testworld.Pod) {
		p.Start(t, "redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	})
	results := make([]RedisResult, len(paths))
	for round := range opts.Rounds {
		for i, p := range paths {
			r := &results[i]
			r.Path = p.name
			host, port, _ := strings.Cut(p.addr, ":")
			m := startMeter(t, p.pid, opts.Perf, recordTo(opts.Record, p.name, round))
			busy0, err := machineBusy()
			if err != nil {
				t.Fatalf("round %d, %s: %v", round, p.name, err)
			}
			start := time.Now()
			out, err := p.client.Run("redis-benchmark", "-h", host, "-p", port, "-c", strconv.Itoa(opts.Clients),
				"-n", strconv.Itoa(opts.Requests), "-P", strconv.Itoa(opts.Pipeline), "-t", "set,get", "--csv")
			if err != nil {
				t.Fatalf("round %d, %s: redis-benchmark: %v\n%s", round, p.name, err, tail(out, 20))
			}
			wall := time.Since(start)
			busy1, berr := machineBusy()
			if berr != nil {
				t.Fatalf("round %d, %s: %v", round, p.name, berr)
			}
			cpu, counts := m.stop(t)
			r.MachineCPU += busy1 - busy0
			r.Wall += wall
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
			r.AgentCPU += cpu
			r.AgentUser += m.user
			r.Syscalls += counts[perfSyscalls]
			r.Switches += counts[perfSwitches]
			t.Logf("round %d %s: agent CPU %s (user %s)\n%s", round, p.name, cpu, m.user, strings.TrimSpace(out))
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
	// pid is the proxy's process on the path (its CPU is measured); nil:
	// direct
	pid func() int
}

// rpcWorld makes a node with one server pod (start starts it on port)
// behind two services, vipL7 declared protocol and vipL4 declared tcp,
// and two client pods, one captured and one not. It returns the three
// paths: direct, weir at L4, weir at L7; with baseline (another
// weir-agent binary), a second node like it adds weir at L4 and L7
// through that agent; then, when haproxy is installed, haproxy-tcp: an
// haproxy in the plain client pod relaying at L4 (2 threads), the
// ceiling of any proxy on the path.
func rpcWorld(t testworld.T, mode, baseline, protocol, vipL7, vipL4 string, port int, start func(*testworld.Pod)) []rpcPath {
	agent, captured, plain, ep := rpcNode(t, mode, "", protocol, vipL7, vipL4, port, start)
	paths := []rpcPath{
		{"direct", plain, ep, nil},
		{"weir-" + mode + "-l4", captured, vipL4, agent.Pid},
		{"weir-" + mode + "-l7", captured, vipL7, agent.Pid},
	}
	if baseline != "" {
		agent, captured, _, _ := rpcNode(t, mode, baseline, protocol, vipL7, vipL4, port, start)
		paths = append(paths,
			rpcPath{"weir-" + mode + "-base-l4", captured, vipL4, agent.Pid},
			rpcPath{"weir-" + mode + "-base-l7", captured, vipL7, agent.Pid})
	}
	if _, err := exec.LookPath("haproxy"); err != nil {
		t.Logf("haproxy is not installed: no haproxy-tcp path")
		return paths
	}
	listen := fmt.Sprintf("127.0.0.1:%d", 10000+port%10000)
	cfg := filepath.Join(t.TempDir(), "haproxy.cfg")
	conf := fmt.Sprintf("global\n  nbthread 2\n  maxconn 4000\n\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\n"+
		"frontend f\n  bind %s\n  default_backend b\n\nbackend b\n  server s1 %s\n", listen, ep)
	if err := os.WriteFile(cfg, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	hap := plain.Start(t, "haproxy", "-db", "-f", cfg)
	plain.WaitPort(t, listen)
	return append(paths, rpcPath{"haproxy-tcp", plain, listen, func() int { return hap.Process.Pid }})
}

// rpcNode builds one node of rpcWorld, its agent the node's build or,
// with bin, that binary; it returns the agent, the captured and the
// uncaptured client pods and the server's endpoint.
func rpcNode(t testworld.T, mode, bin, protocol, vipL7, vipL4 string, port int, start func(*testworld.Pod)) (*testworld.Agent, *testworld.Pod, *testworld.Pod, string) {
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
	startAgent := func(cfg map[string]any) *testworld.Agent {
		if bin != "" {
			return node.StartAgentBinary(t, cfg, bin)
		}
		return node.StartAgent(t, cfg)
	}
	agent := startAgent(map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	server := node.MustAddPod(t, "backend", "server")
	tuneNetns(t, server.Netns)
	start(server)
	server.WaitPort(t, fmt.Sprintf("127.0.0.1:%d", port))
	ep := fmt.Sprintf("%s:%d", server.IP4, port)
	agent.Stop(t)
	agent = startAgent(map[string]any{
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
	return agent, captured, plain, ep
}

// perf stat's event names, the keys of meter's counts.
const (
	perfSyscalls = "raw_syscalls:sys_enter"
	perfSwitches = "context-switches"
)

// meter measures a path's proxy over one run: its CPU, and with perf
// its system calls and context switches.
type meter struct {
	pid  int // 0: a direct path, nothing to measure
	cpu0 time.Duration
	// user0 is the user-space part of cpu0; user, once stopped, the
	// user-space CPU of the run
	user0, user time.Duration
	perf        *exec.Cmd
	out         string
	record      *exec.Cmd
}

// recordTo is where a run's perf record goes: "" (none) without dir.
func recordTo(dir, path string, round int) string {
	if dir == "" {
		return ""
	}
	return filepath.Join(dir, fmt.Sprintf("%s-r%d.data", path, round))
}

// startMeter starts measuring the process pid gives (nil: a direct path,
// nothing to measure); record, when set, is where perf record writes the
// process's call graph during the run.
func startMeter(t testworld.T, pid func() int, perf bool, record string) *meter {
	t.Helper()
	m := &meter{}
	if pid == nil {
		return m
	}
	m.pid = pid()
	user, sys, err := procTimes(m.pid)
	if err != nil {
		t.Fatalf("proxy cpu: %v", err)
	}
	m.cpu0, m.user0 = user+sys, user
	if perf {
		m.out = filepath.Join(t.TempDir(), "perf.stat")
		m.perf = exec.Command("perf", "stat", "-x,", "-o", m.out, "-e", perfSyscalls+","+perfSwitches, "-p", strconv.Itoa(m.pid))
		if err := m.perf.Start(); err != nil {
			t.Fatalf("perf stat: %v (Debian package linux-perf)", err)
		}
	}
	if record != "" {
		m.record = exec.Command("perf", "record", "-q", "-g", "-o", record, "-p", strconv.Itoa(m.pid))
		if err := m.record.Start(); err != nil {
			t.Fatalf("perf record: %v (Debian package linux-perf)", err)
		}
	}
	if m.perf != nil || m.record != nil {
		time.Sleep(200 * time.Millisecond) // let perf attach before the load starts
	}
	return m
}

// stop ends the measurement: the agent's CPU and perf's counts.
func (m *meter) stop(t testworld.T) (time.Duration, map[string]float64) {
	t.Helper()
	if m.pid == 0 {
		return 0, nil
	}
	user1, sys1, err := procTimes(m.pid)
	if err != nil {
		t.Fatalf("proxy cpu: %v", err)
	}
	cpu1 := user1 + sys1
	m.user = user1 - m.user0
	if m.record != nil {
		m.record.Process.Signal(os.Interrupt)
		if err := m.record.Wait(); err != nil {
			t.Logf("perf record: %v", err)
		}
	}
	if m.perf == nil {
		return cpu1 - m.cpu0, nil
	}
	m.perf.Process.Signal(os.Interrupt)
	m.perf.Wait()
	b, err := os.ReadFile(m.out)
	if err != nil {
		t.Fatalf("perf stat: %v", err)
	}
	return cpu1 - m.cpu0, parsePerfStat(b)
}
