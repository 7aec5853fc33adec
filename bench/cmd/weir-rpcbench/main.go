// Command weir-rpcbench measures Dubbo through weir: a real dubbo-go
// consumer (one connection, -parallel calls in flight) against a real
// dubbo-go provider, directly, through weir at L4 (the service declared
// tcp) and through weir at L7 (declared dubbo: every call framed, its id
// rewritten and balanced on its own). It prints calls/s, the consumer's
// p50 and p99 call latency, the agent's CPU per call, and the ratios of L7
// to L4 and to direct, all from the same run. It needs root and the peers
// of hack/rpc-peers.sh.
//
//	go run ./bench/cmd/weir-rpcbench
//	go run ./bench/cmd/weir-rpcbench -calls 50000 -parallel 16 -rounds 3 -mode tproxy
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/weir-mesh/weir/bench"
)

func main() {
	var o bench.RPCOptions
	flag.StringVar(&o.Mode, "mode", "redirect", "interception mode: redirect or tproxy")
	flag.IntVar(&o.Calls, "calls", 20000, "calls per run")
	flag.IntVar(&o.Parallel, "parallel", 8, "calls in flight (goroutines of one consumer, one connection)")
	flag.IntVar(&o.Rounds, "rounds", 2, "runs per path, the paths taking turns")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weir-rpcbench: needs root (network namespaces)")
		os.Exit(2)
	}
	if o.Calls <= 0 || o.Parallel <= 0 || o.Rounds <= 0 {
		fmt.Fprintln(os.Stderr, "weir-rpcbench: -calls, -parallel and -rounds must be positive")
		os.Exit(2)
	}
	s := bench.NewSession(os.Stderr)
	var rs []bench.RPCResult
	ok := s.Guard(func() { rs = bench.MeasureDubbo(s, o) })
	s.Close()
	if !ok {
		os.Exit(1)
	}
	fmt.Printf("Dubbo (dubbo-go v3.3.0 consumer and provider, hessian2), %d calls × %d rounds per path, %d in flight on one connection, mode %s\n\n",
		o.Calls, o.Rounds, o.Parallel, o.Mode)
	fmt.Printf("%-20s %10s %9s %9s %16s\n", "path", "calls/s", "p50 µs", "p99 µs", "agent CPU µs/call")
	for _, r := range rs {
		fmt.Printf("%-20s %10.0f %9.0f %9.0f %16.2f\n", r.Path, r.CallsPerSecond(), r.P50, r.P99, r.CPUPerCall())
	}
	direct, l4, l7 := rs[0], rs[1], rs[2]
	fmt.Printf("\nL7/L4 agent CPU per call: %.2f× (goal ≤ 1.3×)\n", l7.CPUPerCall()/l4.CPUPerCall())
	fmt.Printf("throughput: L7 %.2f× direct, L4 %.2f× direct; p99: L7 %.2f× direct, L4 %.2f× direct\n",
		l7.CallsPerSecond()/direct.CallsPerSecond(), l4.CallsPerSecond()/direct.CallsPerSecond(), l7.P99/direct.P99, l4.P99/direct.P99)
}
