// Command weir-bench measures weir side by side with other proxies inside a
// test world of network namespaces: direct, weir in each interception mode
// (L7 and L4), nginx (stream and http), haproxy (tcp and http) and a plain Go
// relay, under keep-alive HTTP/1.1, a connection per request, keep-alive
// HTTP/2 (h2c), single-stream bulk and small-message ping-pong. It prints a table of medians, writes the full
// results as JSON, and with --doc rewrites docs/benchmarks.md.
//
// It needs root and Debian's nginx, libnginx-mod-stream, haproxy, wrk,
// nghttp2-client (h2load) and iperf3 (hack/deps.sh installs them); `make bench` runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/weir-mesh/weir/bench"
)

func main() {
	if code, ok := bench.HelperMain(os.Args[1:]); ok {
		os.Exit(code)
	}
	os.Exit(run())
}

func run() int {
	var opts bench.Options
	flag.BoolVar(&opts.Quick, "quick", false, fmt.Sprintf("smoke run: %d round of %s per cell, no warm-up (under 2 minutes)", bench.QuickRounds, bench.QuickDuration))
	flag.IntVar(&opts.Rounds, "rounds", 0, fmt.Sprintf("rounds of interleaved cells (default %d, quick %d)", bench.DefaultRounds, bench.QuickRounds))
	flag.DurationVar(&opts.Duration, "duration", 0, fmt.Sprintf("load time per cell, whole seconds (default %s, quick %s)", bench.DefaultDuration, bench.QuickDuration))
	paths := flag.String("paths", "", "comma-separated paths to keep (default all)")
	workloads := flag.String("workloads", "", "comma-separated workloads to keep (default all)")
	jsonPath := flag.String("json", "", "where to write the JSON results (default a new file in the temp dir)")
	doc := flag.String("doc", "", "rewrite this markdown file (docs/benchmarks.md) with the results")
	flag.StringVar(&opts.HTTP2Engine, "http2-engine", "", "the agent's http2.engine: frames (the default) or xnet")
	flag.StringVar(&opts.Loops, "loops", "", "runtime.loops for this build's weir-agent (auto, off or a number; default: the agent's default, auto): off measures the goroutine path")
	flag.StringVar(&opts.BaselineAgent, "baseline-agent", "", "another weir-agent binary (an older build) measured beside this one: paths weir-<mode>-base and weir-<mode>-base-l4, on nodes of their own")
	flag.StringVar(&opts.ProfileDir, "profile", "", "after the rounds, record weir-agent with perf per workload into this directory")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "weir-bench: unexpected arguments %q\n", flag.Args())
		return 2
	}
	opts.Paths, opts.Workloads = split(*paths), split(*workloads)
	opts.Log = os.Stderr

	s := bench.NewSession(os.Stderr)
	var rep *bench.Report
	var err error
	ok := s.Guard(func() { rep, err = bench.Run(s, opts) })
	s.Close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "weir-bench: %v\n", err)
		return 2
	}
	if !ok || rep == nil {
		return 1
	}
	rep.Command = "weir-bench " + strings.Join(os.Args[1:], " ")
	if w := os.Getenv("WEIR_BENCH_COMMAND"); w != "" {
		rep.Command = w
	}
	rep.WriteTable(os.Stdout)
	out := *jsonPath
	if out == "" {
		out = filepath.Join(os.TempDir(), "weir-bench-"+time.Now().Format("20060102-150405")+".json")
	}
	if err := rep.WriteJSON(out); err != nil {
		fmt.Fprintf(os.Stderr, "weir-bench: %v\n", err)
		return 1
	}
	fmt.Printf("\nJSON results: %s\n", out)
	if *doc != "" {
		if err := rep.WriteMarkdown(*doc); err != nil {
			fmt.Fprintf(os.Stderr, "weir-bench: %v\n", err)
			return 1
		}
		fmt.Printf("markdown: %s\n", *doc)
	}
	if rep.Failed() {
		fmt.Fprintln(os.Stderr, "weir-bench: some runs failed (see FAILED rows and the JSON)")
		return 1
	}
	return 0
}

func split(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}
