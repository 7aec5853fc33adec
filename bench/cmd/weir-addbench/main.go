// Command weir-addbench measures what a pod's CNI ADD costs in weir-cni:
// for each capture backend it builds a node of network namespaces with the
// real chain (loopback, bridge + host-local, then weir-cni) and an agent
// capturing namespace demo, adds pods one after another through libcni as
// a container runtime does, and times every weir-cni ADD from fork to exit.
// It prints p50, p90 and p99 per backend, the medians of the first and the
// last 50 ADDs (a cost that grows with the number of pods shows there), the
// CPU time weir-cni and the agent spent per ADD (what the wall time would
// shrink towards on an idle node), and with -phases where the time went,
// phase by phase. It needs root and what hack/deps.sh installs.
//
//	go run ./bench/cmd/weir-addbench                       # 500 pods, nftables, nft, legacy
//	go run ./bench/cmd/weir-addbench -pods 100 -backends nftables -phases
//	go run ./bench/cmd/weir-addbench -nice -10             # less noise on a busy machine
//	go run ./bench/cmd/weir-addbench -backends nftables -baseline-plugin /tmp/main/weir-cni
//	                                                      # every other ADD by main's weir-cni
package main

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/bench"
)

func main() {
	pods := flag.Int("pods", 500, "pods added in sequence per backend")
	backends := flag.String("backends", "nftables,nft,legacy", "capture backends to measure, comma-separated")
	mode := flag.String("mode", "redirect", "interception mode: redirect or tproxy")
	phases := flag.Bool("phases", false, "print every phase's distribution per backend")
	nice := flag.Int("nice", 0, "scheduling niceness for this process and what it starts (the agent, the plugins), -20..19; negative needs root and lowers the noise of a busy machine")
	straceDir := flag.String("strace", "", "run every -strace-every th weir-cni ADD under strace -f -tt -T, one file per ADD in this directory (left out of the figures)")
	straceEvery := flag.Int("strace-every", 100, "with -strace: trace ADD 0, N, 2N, ...")
	baseline := flag.String("baseline-plugin", "", "another weir-cni binary (built from main, say) that runs every other ADD instead of this tree's, on the same node and agent; reported as BACKEND-base")
	noLinkIPv6 := flag.Bool("no-link-ipv6", false, "give the pods' links and the bridge's ports no IPv6 in this IPv4 run (their router solicitations and MLD reports, flooded by the bridge to every port, cost the whole node more as pods accumulate)")
	emptyNode := flag.Bool("empty-node", true, "after every ADD, time the same ADD on a second node that keeps no pods, and report the pod-count drift net of the machine's (paired drift); -empty-node=false halves the run time")
	gap := flag.Duration("gap", 0, "pause before each pod is made, so that what the node still does for the previous pod does not land on the next ADD (0: pods back to back)")
	flag.Parse()
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "weir-addbench: needs root (network namespaces)")
		os.Exit(2)
	}
	if *nice < -20 || *nice > 19 {
		fmt.Fprintln(os.Stderr, "weir-addbench: -nice must be within -20..19")
		os.Exit(2)
	}
	if *gap < 0 || *gap > time.Second {
		fmt.Fprintln(os.Stderr, "weir-addbench: -gap must be within 0..1s")
		os.Exit(2)
	}
	if *straceEvery < 1 {
		fmt.Fprintln(os.Stderr, "weir-addbench: -strace-every must be at least 1")
		os.Exit(2)
	}
	if *nice != 0 {
		// PRIO_PROCESS with who 0 sets only the calling thread on Linux;
		// the agent and plugins started later inherit what their forking
		// thread has, so every thread of this process gets it.
		if err := setNiceAllThreads(*nice); err != nil {
			fmt.Fprintf(os.Stderr, "weir-addbench: -nice %d: %v\n", *nice, err)
			os.Exit(2)
		}
	}
	if *baseline != "" {
		st, err := os.Stat(*baseline)
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			fmt.Fprintf(os.Stderr, "weir-addbench: -baseline-plugin %s: want an executable file (%v)\n", *baseline, err)
			os.Exit(2)
		}
	}
	var sums []bench.Summary
	for _, b := range strings.Split(*backends, ",") {
		s := bench.NewSession(os.Stderr)
		var r bench.ADDResult
		start := time.Now()
		ok := s.Guard(func() {
			r = bench.MeasureADD(s, b, bench.ADDOptions{Pods: *pods, Mode: *mode, StraceDir: *straceDir, StraceEvery: *straceEvery, BaselinePlugin: *baseline, NoLinkIPv6: *noLinkIPv6, Gap: *gap, EmptyNode: *emptyNode, Progress: func(done int) {
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
		if r.Baseline != nil {
			sums = append(sums, r.Baseline.Summarize())
		}
	}
	report(sums, *pods, *mode, *nice, *phases, *gap)
}

func report(sums []bench.Summary, pods int, mode string, nice int, phases bool, gap time.Duration) {
	ms := func(d time.Duration) string { return fmt.Sprintf("%.2f", float64(d)/float64(time.Millisecond)) }
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("weir-cni ADD wall time (fork to exit), %d pods added in sequence per backend, mode %s, IPv4, nice %d, gap %v before each pod, ms\n", pods, mode, nice, gap)
	fmt.Printf("load average at the end: %s\n", strings.TrimSpace(string(load)))
	fmt.Printf("%-13s %6s %6s %6s %7s %7s %7s   %7s %7s %7s   %7s %7s   %7s %7s\n", "backend", "min", "p10", "p50", "p90", "p99", "max", "first50", "last50", "drift", "cpu p50", "cpu p99", "start", "startcpu")
	for _, s := range sums {
		w := s.Wall
		fmt.Printf("%-13s %6s %6s %6s %7s %7s %7s   %7s %7s %+6.1f%%   %7s %7s   %7s %7s\n", s.Backend, ms(w.Min), ms(w.P10), ms(w.P50), ms(w.P90), ms(w.P99), ms(w.Max),
			ms(w.First50), ms(w.Last50), 100*w.Drift(), ms(s.CPU.P50), ms(s.CPU.P99), ms(s.Start), ms(s.StartCPU))
	}
	fmt.Println()
	fmt.Println("first50/last50: medians of the first and the last 50 ADDs; drift: last50/first50 - 1.")
	fmt.Println("cpu: weir-cni's CPU time (rusage) plus the agent's during the ADD; the wall time of an idle node tends to it plus")
	fmt.Println("the waits that burn no CPU. start/startcpu: weir-cni answering VERSION (process start and exit, no work), medians.")
	for _, s := range sums {
		if strings.HasSuffix(s.Backend, "-base") {
			continue // the agent's figures are the whole run's, in the main row
		}
		fmt.Printf("%s: agent CPU over the run from /proc: %s ms per ADD; agent heap allocation %.1f kB per ADD, %.0f GC cycles over the ADDs; %d ADDs under strace left out\n",
			s.Backend, ms(s.AgentCPUPerADD), s.AgentAllocPerADD/1e3, s.AgentGCs, s.Traced)
	}
	fmt.Printf("\nweir-cni DEL wall time, every pod deleted in sequence after the ADDs, ms\n")
	fmt.Printf("%-9s %6s %6s %6s %7s %7s %7s\n", "backend", "min", "p10", "p50", "p90", "p99", "max")
	for _, s := range sums {
		if strings.HasSuffix(s.Backend, "-base") {
			continue // every DEL runs this tree's weir-cni
		}
		d := s.Del
		fmt.Printf("%-9s %6s %6s %6s %7s %7s %7s\n", s.Backend, ms(d.Min), ms(d.P10), ms(d.P50), ms(d.P90), ms(d.P99), ms(d.Max))
	}
	if slices.ContainsFunc(sums, func(s bench.Summary) bool { return s.HasEmpty }) {
		fmt.Printf("\nthe same ADD on an empty node (a second node that keeps no pods), right after each ADD above, ms; paired drift: median of ADD/empty-node ADD over the last 50 pairs against the first 50\n")
		fmt.Printf("%-13s %6s %7s   %7s %7s %7s   %12s\n", "backend", "p50", "p99", "first50", "last50", "drift", "paired drift")
		for _, s := range sums {
			if !s.HasEmpty {
				continue
			}
			e := s.Empty
			fmt.Printf("%-13s %6s %7s   %7s %7s %+6.1f%%   %+11.1f%%\n", s.Backend, ms(e.P50), ms(e.P99), ms(e.First50), ms(e.Last50), 100*e.Drift(), 100*s.PairedDrift)
		}
	}
	for _, s := range sums {
		if s.Backend != "nftables" {
			continue
		}
		flat := s.Wall.Drift() <= 0.10 && s.Wall.Drift() >= -0.10
		fmt.Printf("\ngoal for nftables: p99 <= 10 ms: %v (%s ms); flat within 10%%: %v (%+.1f%%)\n", s.Wall.P99 <= 10*time.Millisecond, ms(s.Wall.P99), flat, 100*s.Wall.Drift())
		c := s.Control
		fmt.Printf("control: weir-cni VERSION right after every ADD (start and exit, no work, at the same moments): p50 %s, p99 %s ms; first50 %s, last50 %s, drift %+.1f%%\n",
			ms(c.P50), ms(c.P99), ms(c.First50), ms(c.Last50), 100*c.Drift())
		links := "the pods' links have IPv6 (their link-local chatter)"
		if s.NoLinkIPv6 {
			links = "no IPv6 on the pods' links (-no-link-ipv6)"
		}
		fmt.Printf("node bridge: %d frames received over the ADDs, %s\n", s.BridgeFrames, links)
		if s.HasEmpty {
			fmt.Printf("paired drift (ADD / empty-node ADD, median of the last 50 pairs against the first 50): %+.1f%%; flat within 10%% net of the machine: %v\n",
				100*s.PairedDrift, s.PairedDrift <= 0.10 && s.PairedDrift >= -0.10)
		}
	}
	if !phases {
		return
	}
	for _, s := range sums {
		fmt.Printf("\n%s: phases, ms (agent.* inside the agent, rules.* inside redirect.Apply)\n", s.Backend)
		fmt.Printf("%-18s %6s %6s %6s %7s %7s   %7s %7s %7s\n", "phase", "min", "p50", "p90", "p99", "max", "first50", "last50", "drift")
		for _, p := range s.Phases {
			fmt.Printf("%-18s %6s %6s %6s %7s %7s   %7s %7s %+6.1f%%\n", p.Name, ms(p.Min), ms(p.P50), ms(p.P90), ms(p.P99), ms(p.Max), ms(p.First50), ms(p.Last50), 100*p.Drift())
		}
	}
	fmt.Println()
	for _, k := range []string{"plugin.exec", "plugin.start", "plugin.skel", "plugin.exit", "plugin.parse", "plugin.netns", "plugin.agent", "plugin.rules", "plugin.main", "agent.transport", "cpu.plugin", "cpu.agent"} {
		fmt.Printf("%-16s %s\n", k, bench.PhaseDocs[k])
	}
}

// setNiceAllThreads sets the niceness of every thread of this process.
func setNiceAllThreads(n int) error {
	ents, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return err
	}
	for _, e := range ents {
		var tid int
		if _, err := fmt.Sscan(e.Name(), &tid); err != nil {
			continue
		}
		if err := unix.Setpriority(unix.PRIO_PROCESS, tid, n); err != nil {
			return fmt.Errorf("thread %d: %w", tid, err)
		}
	}
	return nil
}
