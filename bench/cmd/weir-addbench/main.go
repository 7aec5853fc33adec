// Command weir-addbench measures what a pod's CNI ADD costs in weir-cni:
// for each capture backend it builds a node of network namespaces with the
// real chain (loopback, bridge + host-local, then weir-cni) and an agent
// capturing namespace demo, adds pods one after another through libcni as
// a container runtime does, and times every weir-cni ADD from fork to exit.
// It prints p50, p90 and p99 per backend, the medians of the first and the
// last 50 ADDs (a cost that grows with the number of pods shows there), and
// where the time went: starting the process, the agent round trip, the
// redirect. It needs root and what hack/deps.sh installs.
//
//	go run ./bench/cmd/weir-addbench                       # 500 pods, nftables, nft, legacy
//	go run ./bench/cmd/weir-addbench -pods 100 -backends nftables
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/weir-mesh/weir/bench"
)

func main() {
	pods := flag.Int("pods", 500, "pods added in sequence per backend")
	backends := flag.String("backends", "nftables,nft,legacy", "capture backends to measure, comma-separated")
	mode := flag.String("mode", "redirect", "interception mode: redirect or tproxy")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weir-addbench: needs root (network namespaces)")
		os.Exit(2)
	}
	var sums []bench.Summary
	for _, b := range strings.Split(*backends, ",") {
		s := bench.NewSession(os.Stderr)
		var r bench.ADDResult
		start := time.Now()
		ok := s.Guard(func() {
			r = bench.MeasureADD(s, b, bench.ADDOptions{Pods: *pods, Mode: *mode, Progress: func(done int) {
				if done%100 == 0 {
					fmt.Fprintf(os.Stderr, "weir-addbench: %s: %d pods added (%s)\n", b, done, time.Since(start).Round(time.Second))
				}
			}})
		})
		fmt.Fprintf(os.Stderr, "weir-addbench: %s: tearing down\n", b)
		s.Close()
		if !ok {
			os.Exit(1)
		}
		sums = append(sums, r.Summarize())
	}
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
	fmt.Printf("weir-cni ADD wall time (fork to exit), %d pods added in sequence per backend, mode %s, IPv4, ms\n\n", *pods, *mode)
	fmt.Printf("%-9s %7s %7s %7s %7s   %8s %8s %7s   %9s %9s %9s %9s\n", "backend", "p50", "p90", "p99", "max", "first50", "last50", "drift", "start p50", "main p50", "agent p50", "rules p50")
	for _, s := range sums {
		fmt.Printf("%-9s %7s %7s %7s %7s   %8s %8s %+6.1f%%   %9s %9s %9s %9s\n", s.Backend, ms(s.P50), ms(s.P90), ms(s.P99), ms(s.Max),
			ms(s.First50), ms(s.Last50), 100*s.Drift, ms(s.Start50), ms(s.Main50), ms(s.Agent50), ms(s.Redirect50))
	}
	fmt.Println()
	fmt.Println("first50/last50: medians of the first and the last 50 ADDs; drift: last50/first50 - 1.")
	fmt.Println("start: weir-cni answering VERSION (process start, no work); main: weir-cni's first Go statement to")
	fmt.Println("its last log line (the rest of wall is process start, result printing and exit); agent: the ADD call to weir-agent;")
	fmt.Println("rules: redirect.Apply in the pod netns; both as weir-cni logs them.")
	for _, s := range sums {
		fmt.Printf("%s: agent first50 %s ms, last50 %s ms, p99 %s ms; rules first50 %s ms, last50 %s ms, p99 %s ms\n", s.Backend,
			ms(s.AgentFirst), ms(s.AgentLast), ms(s.AgentP99), ms(s.RedirectFirst), ms(s.RedirLast), ms(s.RedirectP99))
	}
	for _, s := range sums {
		if s.Backend != "nftables" {
			continue
		}
		flat := s.Drift <= 0.10 && s.Drift >= -0.10
		fmt.Printf("\ngoal for nftables: p99 <= 10 ms: %v (%s ms); flat within 10%%: %v (%+.1f%%)\n", s.P99 <= 10*time.Millisecond, ms(s.P99), flat, 100*s.Drift)
	}
}
