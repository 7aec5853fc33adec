// Command weir-rpcbench measures RPC protocols through weir, each path in
// turn in the same run, and prints the ratios.
//
// Dubbo: a real dubbo-go consumer (one connection, -parallel calls in
// flight) against a real dubbo-go provider, directly, through weir at L4
// (the service declared tcp) and through weir at L7 (declared dubbo: every
// call framed, its id rewritten and balanced on its own). It prints
// calls/s, the consumer's p50 and p99 call latency, the agent's CPU per
// call, and the ratios of L7 to L4 and to direct. It needs the peers of
// hack/rpc-peers.sh.
//
// Redis: redis-benchmark (SET and GET, -redis-clients connections, each
// with -pipeline commands in flight) against a real redis-server over the
// same three paths (declared redis at L7); it prints commands/s, p99 and
// the agent's CPU per command, and L7's throughput over direct's.
//
// It needs root.
//
//	go run ./bench/cmd/weir-rpcbench
//	go run ./bench/cmd/weir-rpcbench -protocols dubbo -calls 50000 -parallel 16 -rounds 3 -mode tproxy
//
// With -baseline-agent (a weir-agent built from main), a second node runs
// that agent and its L4 and L7 paths take turns with this build's, for an
// interleaved A/B; -perf adds the agent's system calls and context
// switches per call (perf stat attached to the agent during each run).
// When haproxy is installed, an haproxy-tcp path (haproxy in mode tcp, 2
// threads, in the uncaptured client pod) runs too: the ceiling of an L4
// proxy on the same machine.
//
//	go run ./bench/cmd/weir-rpcbench -baseline-agent /tmp/weir-agent-main -perf
//
// -record DIR writes perf record -g of the agent during every run to
// DIR/<path>-r<round>.data, to see where L7 spends what L4 does not
// (perf report -i FILE); the recording costs the agent CPU, so compare
// figures from runs without it.
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"

	"github.com/weir-mesh/weir/bench"
)

func main() {
	var o bench.RPCOptions
	var ro bench.RedisOptions
	protocols := flag.String("protocols", "dubbo,redis", "what to measure: dubbo, redis or both (comma-separated)")
	flag.StringVar(&o.Mode, "mode", "redirect", "interception mode: redirect or tproxy")
	flag.IntVar(&o.Calls, "calls", 20000, "Dubbo calls per run")
	flag.IntVar(&o.Parallel, "parallel", 8, "Dubbo calls in flight (goroutines of one consumer, one connection)")
	flag.IntVar(&o.Rounds, "rounds", 2, "runs per path, the paths taking turns")
	flag.IntVar(&ro.Requests, "redis-requests", 100000, "redis-benchmark requests per test (SET, GET) and run")
	flag.IntVar(&ro.Clients, "redis-clients", 10, "redis-benchmark connections")
	flag.IntVar(&ro.Pipeline, "pipeline", 16, "redis-benchmark commands in flight per connection (-P)")
	flag.StringVar(&o.BaselineAgent, "baseline-agent", "", "another weir-agent binary (a build of main) measured in the same rounds on a node of its own: paths weir-<mode>-base-l4 and -base-l7")
	flag.BoolVar(&o.Perf, "perf", false, "count the agent's system calls and context switches per call with perf stat (Debian package linux-perf)")
	flag.StringVar(&o.Record, "record", "", "a directory for perf record -g of the agent in every run (<path>-r<round>.data; perf report -i FILE)")
	flag.Parse()
	ro.Mode, ro.Rounds, ro.BaselineAgent, ro.Perf, ro.Record = o.Mode, o.Rounds, o.BaselineAgent, o.Perf, o.Record
	if o.Record != "" {
		if st, err := os.Stat(o.Record); err != nil || !st.IsDir() {
			fmt.Fprintf(os.Stderr, "weir-rpcbench: -record %s is not a directory\n", o.Record)
			os.Exit(2)
		}
	}
	if o.BaselineAgent != "" {
		if st, err := os.Stat(o.BaselineAgent); err != nil || !st.Mode().IsRegular() || st.Mode()&0o111 == 0 {
			fmt.Fprintf(os.Stderr, "weir-rpcbench: -baseline-agent %s is not an executable file\n", o.BaselineAgent)
			os.Exit(2)
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weir-rpcbench: needs root (network namespaces)")
		os.Exit(2)
	}
	want := strings.Split(*protocols, ",")
	for _, p := range want {
		if p != "dubbo" && p != "redis" {
			fmt.Fprintf(os.Stderr, "weir-rpcbench: -protocols: %q is not dubbo or redis\n", p)
			os.Exit(2)
		}
	}
	if o.Calls <= 0 || o.Parallel <= 0 || o.Rounds <= 0 || ro.Requests <= 0 || ro.Clients <= 0 || ro.Pipeline <= 0 {
		fmt.Fprintln(os.Stderr, "weir-rpcbench: -calls, -parallel, -rounds, -redis-requests, -redis-clients and -pipeline must be positive")
		os.Exit(2)
	}
	if slices.Contains(want, "dubbo") {
		s := bench.NewSession(os.Stderr)
		var rs []bench.RPCResult
		ok := s.Guard(func() { rs = bench.MeasureDubbo(s, o) })
		s.Close()
		if !ok {
			os.Exit(1)
		}
		fmt.Printf("Dubbo (dubbo-go v3.3.0 consumer and provider, hessian2), %d calls × %d rounds per path, %d in flight on one connection, mode %s\n\n",
			o.Calls, o.Rounds, o.Parallel, o.Mode)
		fmt.Printf("%-24s %10s %9s %9s %17s %13s %13s\n", "path", "calls/s", "p50 µs", "p99 µs", "agent CPU µs/call", "syscalls/call", "switches/call")
		for _, r := range rs {
			fmt.Printf("%-24s %10.0f %9.0f %9.0f %17.2f %13.2f %13.2f\n", r.Path, r.CallsPerSecond(), r.P50, r.P99, r.CPUPerCall(), r.SyscallsPerCall(), r.SwitchesPerCall())
		}
		direct := rs[0]
		for i := 1; i+1 < len(rs) && strings.HasPrefix(rs[i+1].Path, "weir-"); i += 2 {
			l4, l7 := rs[i], rs[i+1]
			fmt.Printf("\n%s/%s agent CPU per call: %.2f× (goal ≤ 1.3×)\n", l7.Path, l4.Path, l7.CPUPerCall()/l4.CPUPerCall())
			fmt.Printf("throughput: L7 %.2f× direct, L4 %.2f× direct; p99: L7 %.2f× direct, L4 %.2f× direct\n",
				l7.CallsPerSecond()/direct.CallsPerSecond(), l4.CallsPerSecond()/direct.CallsPerSecond(), l7.P99/direct.P99, l4.P99/direct.P99)
		}
		if last := rs[len(rs)-1]; last.Path == "haproxy-tcp" {
			fmt.Printf("\nhaproxy-tcp (L4 ceiling): throughput %.2f× direct, CPU %.2f µs/call (weir L4 %.2f×, L7 %.2f× its CPU)\n",
				last.CallsPerSecond()/direct.CallsPerSecond(), last.CPUPerCall(), rs[1].CPUPerCall()/last.CPUPerCall(), rs[2].CPUPerCall()/last.CPUPerCall())
		}
		fmt.Println()
	}
	if slices.Contains(want, "redis") {
		s := bench.NewSession(os.Stderr)
		var rs []bench.RedisResult
		ok := s.Guard(func() { rs = bench.MeasureRedis(s, ro) })
		s.Close()
		if !ok {
			os.Exit(1)
		}
		fmt.Printf("Redis (redis-benchmark -t set,get -P %d -c %d), %d requests per test × %d rounds per path, mode %s\n\n",
			ro.Pipeline, ro.Clients, ro.Requests, ro.Rounds, ro.Mode)
		fmt.Printf("%-24s %12s %9s %16s %13s %18s %12s %12s %12s\n", "path", "commands/s", "p99 ms", "agent CPU µs/cmd", "user µs/cmd", "machine CPU µs/cmd", "machine busy", "syscalls/cmd", "switches/cmd")
		for _, r := range rs {
			fmt.Printf("%-24s %12.0f %9.3f %16.2f %13.2f %18.2f %11.0f%% %12.3f %12.3f\n", r.Path, r.RequestsPerSecond(), r.P99, r.CPUPerRequest(), r.UserPerRequest(), r.MachineCPUPerRequest(), 100*r.Busy(), r.SyscallsPerRequest(), r.SwitchesPerRequest())
		}
		direct := rs[0]
		// When direct already keeps every core busy, a proxy's own CPU comes
		// out of the same cores: its rate is bounded by the machine, not by
		// how fast it relays.
		if d := direct.MachineCPUPerRequest(); d > 0 {
			fmt.Printf("\ndirect keeps the machine %.0f%% busy at %.2f µs of machine CPU per command: while the machine is the limit, a proxy whose own CPU is A µs/cmd reaches at most %.2f/(%.2f+A) of direct's rate; 0.8× needs A ≤ %.2f µs/cmd\n",
				100*direct.Busy(), d, d, d, d/4)
		}
		for i := 1; i+1 < len(rs) && strings.HasPrefix(rs[i+1].Path, "weir-"); i += 2 {
			l4, l7 := rs[i], rs[i+1]
			fmt.Printf("\n%s: pipelined throughput: L7 %.2f× direct (goal ≥ 0.8×), L4 %.2f× direct; L7/L4 agent CPU per command %.2f× (user space %.2f×)\n",
				l7.Path, l7.RequestsPerSecond()/direct.RequestsPerSecond(), l4.RequestsPerSecond()/direct.RequestsPerSecond(), l7.CPUPerRequest()/l4.CPUPerRequest(), l7.UserPerRequest()/l4.UserPerRequest())
		}
		if last := rs[len(rs)-1]; last.Path == "haproxy-tcp" {
			fmt.Printf("\nhaproxy-tcp (L4 ceiling): pipelined throughput %.2f× direct, CPU %.2f µs/cmd (weir L4 %.2f×, L7 %.2f× its CPU)\n",
				last.RequestsPerSecond()/direct.RequestsPerSecond(), last.CPUPerRequest(), rs[1].CPUPerRequest()/last.CPUPerRequest(), rs[2].CPUPerRequest()/last.CPUPerRequest())
		}
	}
}
