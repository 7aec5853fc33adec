package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Report is a bench run's results; it is also the JSON the tool writes.
type Report struct {
	Started  time.Time  `json:"started"`
	Elapsed  string     `json:"elapsed"`
	Machine  Machine    `json:"machine"`
	Command  string     `json:"command,omitempty"`
	Rounds   int        `json:"rounds"`
	Duration string     `json:"duration"`
	Quick    bool       `json:"quick"`
	Paths    []PathInfo `json:"paths"`
	// Workloads hold one row per path the workload applies to.
	Workloads []*WorkloadResult `json:"workloads"`
	// Targets are weir's stated performance goals, met or not.
	Targets []Target `json:"targets"`
	// AgentConnections is weir_connections_total{direction="outbound"} per
	// weir path at the end: proof that the weir rows went through weir.
	AgentConnections map[string]float64 `json:"agentConnections"`
	// AgentSniff is weir_sniff_total by result and AgentHTTPRequests
	// weir_http_requests_total by protocol, per agent at the end (keyed by
	// its first path's name): what the sniffer decided and what the L7
	// half proxied.
	AgentSniff map[string]map[string]float64 `json:"agentSniff"`
	// AgentAccel is weir_ebpf_accel_total by event, for agents in eBPF
	// mode: how much of the path the kernel's sockmap redirect carried.
	AgentAccel        map[string]map[string]float64 `json:"agentAccel,omitempty"`
	AgentHTTPRequests map[string]map[string]float64 `json:"agentHttpRequests"`
	// AgentWarnings are the WARN and ERROR lines weir-agent logged during
	// the run; a healthy run has none.
	AgentWarnings []string `json:"agentWarnings,omitempty"`
	// RuleChanges are the nftables generations `nft monitor` saw inside
	// captured pods during the rounds, each naming the process that made it;
	// a healthy run has none.
	RuleChanges []string `json:"ruleChanges,omitempty"`
	// Profiles are the perf counts and reports of --profile.
	Profiles []Profile `json:"profiles,omitempty"`
}

// Machine is where the bench ran.
type Machine struct {
	CPUs     int               `json:"cpus"`
	CPUModel string            `json:"cpuModel"`
	Kernel   string            `json:"kernel"`
	Go       string            `json:"go"`
	Tools    map[string]string `json:"tools"`
}

// PathInfo names a path and says what sits between client and server.
type PathInfo struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
	Desc string `json:"desc"`
}

// WorkloadResult is one workload's rows.
type WorkloadResult struct {
	Name     string `json:"name"`
	Desc     string `json:"desc"`
	RateUnit string `json:"rateUnit"`
	CPUUnit  string `json:"cpuUnit"`
	// BestPeerRate and BestPeerCPU name the peers the ratios compare with:
	// the highest rate and the lowest CPU per unit among the peers.
	BestPeerRate string `json:"bestPeerRate,omitempty"`
	BestPeerCPU  string `json:"bestPeerCpu,omitempty"`
	Rows         []*Row `json:"rows"`
	// Notes say how a path carries this workload when its description
	// does not; Skipped names the paths that cannot carry it, and why.
	Notes    []PathNote `json:"notes,omitempty"`
	Skipped  []PathNote `json:"skipped,omitempty"`
	cpuScale float64
}

// PathNote is a remark about one path under one workload.
type PathNote struct {
	Path string `json:"path"`
	Note string `json:"note"`
}

// Row is one path under one workload: every round's sample and medians.
type Row struct {
	Path     string   `json:"path"`
	Kind     string   `json:"kind"`
	Samples  []Sample `json:"samples"`
	Failures []string `json:"failures,omitempty"`
	// Medians over the samples.
	Rate  float64 `json:"rate"`
	P50us float64 `json:"p50us,omitempty"`
	P99us float64 `json:"p99us,omitempty"`
	// CPU is the median proxy CPU per unit, in the workload's CPU unit
	// (0 for the direct path).
	CPU float64 `json:"cpu"`
	// MachineCPU is the median whole-machine CPU per unit (Sample.
	// MachineCPU), in the workload's CPU unit, for every path.
	MachineCPU float64 `json:"machineCpu"`
	// RSS is the median peak RSS of the proxy processes, bytes.
	RSS    int64 `json:"rssBytes"`
	Errors int64 `json:"errors"`
	// WeirL7Requests is the sum of the samples' WeirL7Requests: non-zero
	// proves a weir row went through the L7 half, zero that it did not.
	WeirL7Requests float64 `json:"weirL7Requests,omitempty"`
	// WeirConnections is the sum of the samples' WeirConnections.
	WeirConnections float64 `json:"weirConnections,omitempty"`
	// RateVsBestPeer is Rate over the best peer's; CPUVsBestPeer is CPU
	// over the lowest peer's. NaN when there is nothing to compare.
	RateVsBestPeer float64 `json:"rateVsBestPeer"`
	CPUVsBestPeer  float64 `json:"cpuVsBestPeer"`
}

// Target is one of weir's performance goals against a named peer.
type Target struct {
	Goal     string  `json:"goal"`
	Path     string  `json:"path"`
	Ratio    float64 `json:"ratio"`
	Want     string  `json:"want"`
	Met      bool    `json:"met"`
	Measured bool    `json:"measured"`
	// RoundRatios is the same ratio taken in each round alone, between
	// the cells that ran minutes apart at most (ordered by round; rounds
	// where a cell failed are left out). The ratio of medians above can
	// pass or fail by the noise between rounds; these show how much of it
	// there is, and RoundsMet how many rounds met the goal on their own.
	RoundRatios []float64 `json:"roundRatios,omitempty"`
	RoundsMet   int       `json:"roundsMet"`
}

func newReport(opts Options, started time.Time, paths []*path, wls []workload) *Report {
	r := &Report{Started: started, Machine: machine(), Rounds: opts.Rounds, Duration: opts.Duration.String(),
		Quick: opts.Quick, AgentConnections: map[string]float64{},
		AgentSniff: map[string]map[string]float64{}, AgentHTTPRequests: map[string]map[string]float64{},
		AgentAccel: map[string]map[string]float64{}}
	for _, p := range paths {
		r.Paths = append(r.Paths, PathInfo{Name: p.Name, Kind: p.Kind, Desc: p.Desc})
	}
	for _, wl := range wls {
		res := &WorkloadResult{Name: wl.Name, Desc: wl.Desc, RateUnit: wl.rateUnit, CPUUnit: wl.cpuUnit, cpuScale: wl.cpuScale}
		for _, p := range paths {
			if _, ok := p.addr[wl.backend]; ok {
				res.Rows = append(res.Rows, &Row{Path: p.Name, Kind: p.Kind})
				if n := p.notes[wl.backend]; n != "" {
					res.Notes = append(res.Notes, PathNote{Path: p.Name, Note: n})
				}
			} else if r := p.skip[wl.backend]; r != "" {
				res.Skipped = append(res.Skipped, PathNote{Path: p.Name, Note: r})
			}
		}
		r.Workloads = append(r.Workloads, res)
	}
	return r
}

func (w *WorkloadResult) row(path string) *Row {
	for _, r := range w.Rows {
		if r.Path == path {
			return r
		}
	}
	panic("no row for " + path)
}

// Row returns the row of a path, nil if the workload has none.
func (w *WorkloadResult) Row(path string) *Row {
	for _, r := range w.Rows {
		if r.Path == path {
			return r
		}
	}
	return nil
}

// Workload returns a workload's results by name, nil if it did not run.
func (r *Report) Workload(name string) *WorkloadResult {
	for _, w := range r.Workloads {
		if w.Name == name {
			return w
		}
	}
	return nil
}

// finish computes medians, ratios and targets.
func (r *Report) finish(elapsed time.Duration) {
	r.Elapsed = elapsed.Round(time.Second).String()
	r.summarize()
	r.Targets = nil
	r.targets()
	for round := 1; round <= r.Rounds; round++ {
		one := r.roundView(round)
		one.summarize()
		one.targets()
		for i, t := range one.Targets {
			if t.Measured && !math.IsNaN(t.Ratio) && !math.IsInf(t.Ratio, 0) && i < len(r.Targets) {
				r.Targets[i].RoundRatios = append(r.Targets[i].RoundRatios, t.Ratio)
				if t.Met {
					r.Targets[i].RoundsMet++
				}
			}
		}
	}
}

// roundView is a copy of r whose rows hold only the samples of one round
// (medians not yet computed): the report of that round alone.
func (r *Report) roundView(round int) *Report {
	v := &Report{Rounds: 1}
	for _, w := range r.Workloads {
		wc := *w
		wc.Rows = nil
		for _, row := range w.Rows {
			rc := &Row{Path: row.Path, Kind: row.Kind}
			for _, s := range row.Samples {
				if s.Round == round {
					rc.Samples = append(rc.Samples, s)
				}
			}
			wc.Rows = append(wc.Rows, rc)
		}
		v.Workloads = append(v.Workloads, &wc)
	}
	return v
}

// summarize computes every row's medians and its ratios to the best peers.
func (r *Report) summarize() {
	for _, w := range r.Workloads {
		bestRate, bestCPU := 0.0, math.Inf(1)
		for _, row := range w.Rows {
			var rate, p50, p99, cpu, rss, mcpu []float64
			for _, s := range row.Samples {
				rate = append(rate, s.Rate)
				p50 = append(p50, s.P50us)
				p99 = append(p99, s.P99us)
				if s.Units > 0 {
					mcpu = append(mcpu, s.MachineCPU/s.Units*w.cpuScale)
				}
				if row.Kind != kindDirect && s.Units > 0 {
					cpu = append(cpu, s.ProxyCPU/s.Units*w.cpuScale)
					rss = append(rss, float64(s.ProxyRSS))
				}
				row.Errors += s.Errors
				row.WeirL7Requests += s.WeirL7Requests
				row.WeirConnections += s.WeirConnections
			}
			row.Rate, row.P50us, row.P99us = median(rate), median(p50), median(p99)
			row.CPU, row.RSS, row.MachineCPU = median(cpu), int64(median(rss)), median(mcpu)
			if row.Kind == kindPeer && len(row.Samples) > 0 {
				if row.Rate > bestRate {
					bestRate, w.BestPeerRate = row.Rate, row.Path
				}
				if row.CPU < bestCPU {
					bestCPU, w.BestPeerCPU = row.CPU, row.Path
				}
			}
		}
		for _, row := range w.Rows {
			row.RateVsBestPeer, row.CPUVsBestPeer = math.NaN(), math.NaN()
			if len(row.Samples) == 0 {
				continue
			}
			if bestRate > 0 {
				row.RateVsBestPeer = row.Rate / bestRate
			}
			if row.Kind != kindDirect && bestCPU > 0 && !math.IsInf(bestCPU, 1) {
				row.CPUVsBestPeer = row.CPU / bestCPU
			}
		}
	}
}

// targets appends weir's stated goals to r.Targets, from the rows'
// medians (summarize first).
func (r *Report) targets() {
	cpu := func(a, b *Row) float64 { return a.CPU / b.CPU }
	atMost1 := func(x float64) bool { return x <= 1 }
	for _, m := range WeirModes {
		weir := "weir-" + m
		// The L4 goals are weir's L4 relay's: the -l4 path for HTTP (the
		// plain path proxies HTTP at L7); bulk is sniffed to L4 either way.
		r.target("L4 proxy CPU per request ≤ nginx stream's (keep-alive HTTP)", "http-keepalive", weir+"-l4", "nginx-stream", cpu, "≤ 1.00", atMost1)
		r.target("L4 proxy CPU per request ≤ nginx stream's (connection per request)", "http-close", weir+"-l4", "nginx-stream", cpu, "≤ 1.00", atMost1)
		r.target("single-stream bulk throughput ≥ 1.5 × nginx stream's", "bulk", weir, "nginx-stream",
			func(a, b *Row) float64 { return a.Rate / b.Rate }, "≥ 1.50", func(x float64) bool { return x >= 1.5 })
		// The L7 goals (issue 9): HTTP/1.1 first against haproxy, then
		// nginx; HTTP/2 against both.
		r.target("L7 CPU per HTTP/1.1 request ≤ haproxy http's (keep-alive)", "http-keepalive", weir, "haproxy-http", cpu, "≤ 1.00", atMost1)
		r.target("L7 CPU per HTTP/1.1 request ≤ nginx http's (keep-alive)", "http-keepalive", weir, "nginx-http", cpu, "≤ 1.00", atMost1)
		r.target("L7 CPU per HTTP/2 request ≤ haproxy http's (h2c, proto h2)", "h2-keepalive", weir, "haproxy-http", cpu, "≤ 1.00", atMost1)
		r.target("L7 CPU per HTTP/2 request ≤ nginx http's (h2c front)", "h2-keepalive", weir, "nginx-http", cpu, "≤ 1.00", atMost1)
	}
	// Issue 12: what eBPF capture adds over the direct path, against what
	// REDIRECT adds; its L4 CPU counted for the whole machine (the kernel
	// does the work user space no longer does).
	r.target("eBPF added p50 latency ≤ 0.5 × REDIRECT's (ping-pong, L4)", "pingpong", "weir-ebpf", "weir-redirect",
		r.added("pingpong", func(row *Row) float64 { return row.P50us }), "≤ 0.50", func(x float64) bool { return x <= 0.5 })
	r.target("eBPF added p50 latency ≤ 0.5 × REDIRECT's (connection per request, L4)", "http-close", "weir-ebpf-l4", "weir-redirect-l4",
		r.added("http-close", func(row *Row) float64 { return row.P50us }), "≤ 0.50", func(x float64) bool { return x <= 0.5 })
	// The same pinned to one CPU (client, agent or proxy, server): the
	// path's own work, without cross-CPU wake-ups. No goal for p99 but
	// that eBPF adds no more tail than REDIRECT.
	for _, wl := range []string{"pingpong-pinned", "connect-rt"} {
		r.target("eBPF added p50 latency ≤ 0.5 × REDIRECT's ("+wl+")", wl, "weir-ebpf", "weir-redirect",
			r.added(wl, func(row *Row) float64 { return row.P50us }), "≤ 0.50", func(x float64) bool { return x <= 0.5 })
		r.target("eBPF added p99 latency ≤ REDIRECT's ("+wl+")", wl, "weir-ebpf", "weir-redirect",
			r.added(wl, func(row *Row) float64 { return row.P99us }), "≤ 1.00", atMost1)
	}
	r.target("eBPF L4 machine CPU per request ≤ nginx stream's (keep-alive HTTP)", "http-keepalive", "weir-ebpf-l4", "nginx-stream",
		func(a, b *Row) float64 { return a.MachineCPU / b.MachineCPU }, "≤ 1.00", atMost1)
	// Issue 12 with kernel-balanced services (dataplane: kernel): no
	// proxy in the path, so a new connection costs no second handshake.
	// connect-rt's echo backend is relayed at L4 by the sniffed path (the
	// -l4 paths carry HTTP only), so its REDIRECT figure is weir-redirect's.
	machineCPU := func(a, b *Row) float64 { return a.MachineCPU / b.MachineCPU }
	r.target("eBPF kernel-balanced added p50 latency ≤ 0.5 × REDIRECT's (connection per request, L4)", "http-close", KernelPath, "weir-redirect-l4",
		r.added("http-close", func(row *Row) float64 { return row.P50us }), "≤ 0.50", func(x float64) bool { return x <= 0.5 })
	r.target("eBPF kernel-balanced added p50 latency ≤ 0.5 × REDIRECT's (connect-rt, L4)", "connect-rt", KernelPath, "weir-redirect",
		r.added("connect-rt", func(row *Row) float64 { return row.P50us }), "≤ 0.50", func(x float64) bool { return x <= 0.5 })
	r.target("eBPF kernel-balanced machine CPU per request ≤ nginx stream's (keep-alive HTTP)", "http-keepalive", KernelPath, "nginx-stream",
		machineCPU, "≤ 1.00", atMost1)
	r.target("eBPF kernel-balanced machine CPU per request ≤ nginx stream's (connection per request)", "http-close", KernelPath, "nginx-stream",
		machineCPU, "≤ 1.00", atMost1)
	// Issue 10: the cost of policy and telemetry on the L7 path.
	atMost115 := func(x float64) bool { return x <= 1.15 }
	r.target("L7 policy and telemetry cost: CPU per HTTP/1.1 request ≤ 1.15 × plain L7 (keep-alive)", "http-keepalive", PolicyPath, "weir-redirect", cpu, "≤ 1.15", atMost115)
	r.target("L7 policy and telemetry cost: CPU per HTTP/2 request ≤ 1.15 × plain L7 (h2c)", "h2-keepalive", PolicyPath, "weir-redirect", cpu, "≤ 1.15", atMost115)
}

// added returns a ratio of what two paths add over the direct path of a
// workload, by the figure f (a latency).
func (r *Report) added(workload string, f func(*Row) float64) func(a, b *Row) float64 {
	return func(a, b *Row) float64 {
		w := r.Workload(workload)
		if w == nil {
			return math.NaN()
		}
		d := w.Row("direct")
		if d == nil || len(d.Samples) == 0 {
			return math.NaN()
		}
		return (f(a) - f(d)) / (f(b) - f(d))
	}
}

func (r *Report) target(goal, workload, path, peer string, ratio func(a, b *Row) float64, want string, ok func(float64) bool) {
	t := Target{Goal: goal, Path: path, Want: want, Ratio: math.NaN()}
	if w := r.Workload(workload); w != nil {
		a, b := w.Row(path), w.Row(peer)
		if a != nil && b != nil && len(a.Samples) > 0 && len(b.Samples) > 0 {
			t.Ratio, t.Measured = ratio(a, b), true
			t.Met = ok(t.Ratio)
		}
	}
	r.Targets = append(r.Targets, t)
}

// Failed reports whether any cell failed.
func (r *Report) Failed() bool {
	for _, w := range r.Workloads {
		for _, row := range w.Rows {
			if len(row.Failures) > 0 {
				return true
			}
		}
	}
	return false
}

// WriteJSON writes the report as indented JSON (NaN ratios become null).
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(jsonSafe(r), "", "  ")
	if err != nil {
		return fmt.Errorf("encode report: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return nil
}

// jsonSafe replaces NaN (which encoding/json refuses) by -1 in a copy of
// the report's ratios; -1 reads as "not comparable".
func jsonSafe(r *Report) *Report {
	c := *r
	c.Workloads = nil
	for _, w := range r.Workloads {
		wc := *w
		wc.Rows = nil
		for _, row := range w.Rows {
			rc := *row
			rc.RateVsBestPeer, rc.CPUVsBestPeer = finite(rc.RateVsBestPeer), finite(rc.CPUVsBestPeer)
			wc.Rows = append(wc.Rows, &rc)
		}
		c.Workloads = append(c.Workloads, &wc)
	}
	c.Targets = nil
	for _, t := range r.Targets {
		t.Ratio = finite(t.Ratio)
		c.Targets = append(c.Targets, t)
	}
	return &c
}

func finite(x float64) float64 {
	if math.IsNaN(x) || math.IsInf(x, 0) {
		return -1
	}
	return x
}

func fmtRatio(x float64) string {
	if math.IsNaN(x) {
		return "-"
	}
	return fmt.Sprintf("%.2f", x)
}

func fmtMiB(b int64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", float64(b)/(1<<20))
}

func fmtCPU(row *Row) string {
	if row.Kind == kindDirect || len(row.Samples) == 0 {
		return "-"
	}
	switch {
	case row.CPU >= 100:
		return fmt.Sprintf("%.0f", row.CPU)
	default:
		return fmt.Sprintf("%.2f", row.CPU)
	}
}

// cells is a row as table cells: path, rate, p50, p99, CPU, RSS, ratios, errors.
func (w *WorkloadResult) cells(row *Row) []string {
	if len(row.Samples) == 0 {
		return []string{row.Path, "FAILED", "", "", "", "", "", "", "", fmt.Sprint(len(row.Failures))}
	}
	errs := fmt.Sprint(row.Errors)
	if len(row.Failures) > 0 {
		errs += fmt.Sprintf(" (+%d failed runs)", len(row.Failures))
	}
	return []string{row.Path, fmtRate(row.Rate), fmtUs(row.P50us), fmtUs(row.P99us), fmtCPU(row), fmtNum(row.MachineCPU), fmtMiB(row.RSS),
		fmtRatio(row.RateVsBestPeer), fmtRatio(row.CPUVsBestPeer), errs}
}

func (w *WorkloadResult) header() []string {
	return []string{"path", w.RateUnit, "p50", "p99", "proxy CPU " + w.CPUUnit, "machine CPU " + w.CPUUnit, "peak RSS MiB",
		"rate/best peer", "CPU/best peer", "errors"}
}

// fmtNum formats a CPU figure like fmtCPU, for any path.
func fmtNum(v float64) string {
	switch {
	case v == 0 || math.IsNaN(v):
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// WriteTable prints the human table.
func (r *Report) WriteTable(out io.Writer) {
	fmt.Fprintf(out, "weir bench: %d CPUs (%s), kernel %s, %s; %d rounds × %s per cell, interleaved; medians\n",
		r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Kernel, r.Machine.Go, r.Rounds, r.Duration)
	for _, w := range r.Workloads {
		fmt.Fprintf(out, "\n%s: %s (best peer: rate %s, CPU %s)\n", w.Name, w.Desc, orDash(w.BestPeerRate), orDash(w.BestPeerCPU))
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, strings.Join(w.header(), "\t")+"\t")
		for _, row := range w.Rows {
			fmt.Fprintln(tw, strings.Join(w.cells(row), "\t")+"\t")
		}
		tw.Flush()
		for _, n := range w.Notes {
			fmt.Fprintf(out, "  %s: %s\n", n.Path, n.Note)
		}
		for _, n := range w.Skipped {
			fmt.Fprintf(out, "  not run over %s: %s\n", n.Path, n.Note)
		}
		if l7 := w.l7Line(); l7 != "" {
			fmt.Fprintf(out, "  %s\n", l7)
		}
	}
	fmt.Fprintln(out, "\ntargets:")
	for _, t := range r.Targets {
		fmt.Fprintf(out, "  %-14s %-70s %s (want %s)%s\n", t.Path, t.Goal, targetVerdict(t), t.Want, roundsNote(t, "; per round: "))
	}
	if len(r.AgentConnections) > 0 {
		fmt.Fprintf(out, "\nconnections the agent relayed: %v\n", r.AgentConnections)
		fmt.Fprintf(out, "sniffer results: %v\nL7 requests by protocol: %v\n", r.AgentSniff, r.AgentHTTPRequests)
		if len(r.AgentAccel) > 0 {
			fmt.Fprintf(out, "eBPF acceleration (weir_ebpf_accel_total): %v\n", r.AgentAccel)
		}
	}
	if len(r.AgentWarnings) > 0 {
		fmt.Fprintf(out, "\nweir-agent logged %d warnings or errors during the run:\n", len(r.AgentWarnings))
		for _, w := range r.AgentWarnings {
			fmt.Fprintf(out, "  %s\n", w)
		}
	}
	if len(r.RuleChanges) > 0 {
		fmt.Fprintf(out, "\nrules inside captured pods changed %d times during the rounds (nft monitor):\n", len(r.RuleChanges))
		for _, c := range r.RuleChanges {
			fmt.Fprintf(out, "  %s\n", c)
		}
	}
	if len(r.Profiles) > 0 {
		fmt.Fprintln(out, "\nperf (one extra unrecorded run each; per request, round trip, or MB for bulk):")
		tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "workload\tpath\tper\tsyscalls\tcontext switches\tCPU µs\tperf report\t")
		for _, p := range r.Profiles {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f\t%.2f\t%.1f\t%s\t\n", p.Workload, p.Path, p.Per, p.Syscalls, p.ContextSwitches, p.CPUus, orDash(p.Report))
		}
		tw.Flush()
	}
}

// l7Line says how many requests weir's L7 half counted over each weir
// row's recorded runs: the proof that a weir-<mode> row was proxied at L7
// and a -l4 row was not. Empty for a workload without weir rows that
// carry HTTP.
func (w *WorkloadResult) l7Line() string {
	if w.RateUnit != "req/s" {
		return ""
	}
	var parts []string
	for _, row := range w.Rows {
		if row.Kind == kindWeir && len(row.Samples) > 0 {
			parts = append(parts, fmt.Sprintf("%s %.0f", row.Path, row.WeirL7Requests))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "Requests weir's L7 half counted (`weir_http_requests_total`, over the recorded runs): " + strings.Join(parts, ", ") + "."
}

// fmtCounts renders counters by label as "a 12, b 3" in label order.
func fmtCounts(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%s %.0f", k, m[k]))
	}
	return strings.Join(parts, ", ")
}

// roundsNote is a target's ratio per round and how many rounds met the
// goal alone ("0.81 0.98 1.12, met in 2 of 3"), after prefix; "" when
// there were no rounds to compare.
func roundsNote(t Target, prefix string) string {
	if len(t.RoundRatios) == 0 {
		return ""
	}
	parts := make([]string, len(t.RoundRatios))
	for i, x := range t.RoundRatios {
		parts[i] = fmt.Sprintf("%.2f", x)
	}
	return fmt.Sprintf("%s%s, met in %d of %d", prefix, strings.Join(parts, " "), t.RoundsMet, len(t.RoundRatios))
}

func targetVerdict(t Target) string {
	switch {
	case !t.Measured:
		return "not measured"
	case t.Met:
		return fmt.Sprintf("%.2f met", t.Ratio)
	default:
		return fmt.Sprintf("%.2f MISSED", t.Ratio)
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Markdown renders docs/benchmarks.md: machine, command, method, tables,
// targets.
func (r *Report) Markdown() string {
	var b strings.Builder
	b.WriteString("# weir benchmarks\n\n")
	b.WriteString("Generated by `make bench` (`hack/bench.sh`, the program in `bench/cmd/weir-bench`); do not edit by hand.\n\n")
	fmt.Fprintf(&b, "- ran: %s, took %s\n", r.Started.UTC().Format("2006-01-02 15:04 MST"), r.Elapsed)
	fmt.Fprintf(&b, "- machine: %d CPUs, %s, kernel %s, %s\n", r.Machine.CPUs, r.Machine.CPUModel, r.Machine.Kernel, r.Machine.Go)
	var tools []string
	for _, k := range []string{"nginx", "haproxy", "wrk", "h2load", "iperf3"} {
		if v, ok := r.Machine.Tools[k]; ok {
			tools = append(tools, "`"+v+"`")
		}
	}
	fmt.Fprintf(&b, "- tools: %s\n", strings.Join(tools, ", "))
	fmt.Fprintf(&b, "- command: `%s`\n", r.Command)
	fmt.Fprintf(&b, "- %d rounds × %s per cell, paths interleaved within each round (order rotated every round); every figure is the median over the rounds\n\n", r.Rounds, r.Duration)
	b.WriteString(method)
	b.WriteString("\n## Paths\n\n| path | what sits between client and server |\n|---|---|\n")
	for _, p := range r.Paths {
		fmt.Fprintf(&b, "| %s | %s |\n", p.Name, p.Desc)
	}
	b.WriteString("\n## Results\n")
	for _, w := range r.Workloads {
		fmt.Fprintf(&b, "\n### %s\n\n%s. Best peer by rate: %s; by CPU: %s.\n\n", w.Name, w.Desc, orDash(w.BestPeerRate), orDash(w.BestPeerCPU))
		h := w.header()
		b.WriteString("| " + strings.Join(h, " | ") + " |\n|" + strings.Repeat("---|", len(h)) + "\n")
		for _, row := range w.Rows {
			b.WriteString("| " + strings.Join(w.cells(row), " | ") + " |\n")
		}
		if len(w.Notes)+len(w.Skipped) > 0 {
			b.WriteString("\n")
		}
		for _, n := range w.Notes {
			fmt.Fprintf(&b, "- %s: %s\n", n.Path, n.Note)
		}
		for _, n := range w.Skipped {
			fmt.Fprintf(&b, "- not run over %s: %s\n", n.Path, n.Note)
		}
		if l7 := w.l7Line(); l7 != "" {
			fmt.Fprintf(&b, "\n%s\n", l7)
		}
	}
	b.WriteString("\n## Targets\n\nThe ratio is of the medians over the rounds; \"per round\" is the same ratio within each round alone (cells of one round ran minutes apart at most), and how many rounds met the goal by themselves.\n\n| path | goal | ratio | want | verdict | per round |\n|---|---|---|---|---|---|\n")
	for _, t := range r.Targets {
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", t.Path, t.Goal, fmtRatio(t.Ratio), t.Want, targetVerdict(t), orDash(roundsNote(t, "")))
	}
	if len(r.AgentConnections) > 0 {
		b.WriteString("\nConnections weir-agent counted (`weir_connections_total{direction=\"outbound\"}`), proof the weir rows went through it (one agent per mode, carrying both its L7 and its `-l4` path):")
		for _, k := range slices.Sorted(maps.Keys(r.AgentConnections)) {
			fmt.Fprintf(&b, " %s %.0f;", k, r.AgentConnections[k])
		}
		b.WriteString("\n")
		for _, k := range slices.Sorted(maps.Keys(r.AgentSniff)) {
			fmt.Fprintf(&b, "\nThe %s agent's sniffer (`weir_sniff_total` by result): %s; its L7 requests (`weir_http_requests_total` by protocol): %s.\n",
				k, fmtCounts(r.AgentSniff[k]), fmtCounts(r.AgentHTTPRequests[k]))
		}
	}
	if len(r.AgentWarnings) > 0 {
		fmt.Fprintf(&b, "\nweir-agent logged %d warnings or errors during the run:\n\n", len(r.AgentWarnings))
		for _, w := range r.AgentWarnings {
			fmt.Fprintf(&b, "    %s\n", w)
		}
	}
	if len(r.RuleChanges) > 0 {
		fmt.Fprintf(&b, "\nRules inside captured pods changed %d times during the rounds (`nft monitor`, naming the process):\n\n", len(r.RuleChanges))
		for _, c := range r.RuleChanges {
			fmt.Fprintf(&b, "    %s\n", c)
		}
	}
	if len(r.Profiles) > 0 {
		b.WriteString("\n## Where the proxies spend it (perf)\n\n")
		b.WriteString("One extra, unrecorded run per cell with `perf stat` attached to the proxy's processes: system calls, context switches and CPU (task-clock) per request, round trip, or MB for bulk.\n\n")
		b.WriteString("| workload | path | per | syscalls | context switches | CPU µs |\n|---|---|---|---|---|---|\n")
		for _, p := range r.Profiles {
			fmt.Fprintf(&b, "| %s | %s | %s | %.1f | %.2f | %.1f |\n", p.Workload, p.Path, p.Per, p.Syscalls, p.ContextSwitches, p.CPUus)
		}
	}
	b.WriteString("\n" + NotesMarker + "\n")
	return b.String()
}

// NotesMarker ends the generated part of docs/benchmarks.md. What follows it
// is hand-written analysis that WriteMarkdown carries over when it rewrites
// the file.
const NotesMarker = "<!-- Everything below this line is kept when the bench rewrites this file. -->"

// WriteMarkdown rewrites path with the report, keeping the notes after
// NotesMarker of the file it replaces.
func (r *Report) WriteMarkdown(path string) error {
	md := r.Markdown()
	if old, err := os.ReadFile(path); err == nil {
		if _, notes, ok := strings.Cut(string(old), NotesMarker+"\n"); ok {
			md += notes
		}
	} else if !os.IsNotExist(err) {
		return fmt.Errorf("read %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(md), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// method is the fixed part of docs/benchmarks.md: how the paths are placed
// and what each figure means.
const method = `## Method

Everything runs inside a test world of network namespaces (` + "`integration/testworld`" + `): a node
netns with a bridge, and pods attached through the real CNI chain (bridge + host-local, then
weir-cni). Nothing touches the machine's own network; every load is bounded in time.

- **server pod** (not captured): nginx with one worker answering a 13-byte ` + "`return 200`" + ` (no
  access log) over HTTP/1.1 on one port and h2c (` + "`listen … http2`" + `, prior knowledge) on another,
  ` + "`iperf3 -s`" + `, and a Go echo server.
- **captured client pod** (namespace ` + "`bench-weir-<mode>`" + `): weir-cni installed the mode's rules;
  the client connects to a virtual service address that exists only in the agent's config,
  so every byte goes through weir-agent's listener inside the pod netns and its upstream
  socket made in the same netns. ` + "`weir-<mode>`" + ` uses 10.96.0.10, whose services declare no
  protocol (auto): the agent sniffs each connection, proxies HTTP/1.1 and h2c per request
  (its L7 half, pooled upstream connections) and relays anything else at L4.
  ` + "`weir-<mode>-l4`" + ` uses 10.96.0.11, the same services declared ` + "`protocol: tcp`" + `: relayed at
  L4 with no sniffing. Same agent, same pod; the cells run one at a time.
- **plain client pod** (not captured): the direct path connects straight to the server pod.
  The peers run inside this pod, listening on 127.0.0.1, and the client reaches each through
  an iptables ` + "`nat OUTPUT REDIRECT`" + ` from a virtual address of its own (10.96.1.N) — the same
  kind of rule weir-cni installs. So client, interception, conntrack and the upstream connect
  from the pod's namespace are the same for weir and the peers; only the proxy differs.
  Peers get the same two cores weir does (nginx 2 workers, haproxy nbthread 2, Go
  GOMAXPROCS 2).

Figures: **rate** is what the client measured (requests/s from wrk or h2load, Gbit/s
received from iperf3, round trips/s from the ping-pong client); **p50/p99** are the client's
latency percentiles (h2load's from its per-request ` + "`--log-file`" + `); **proxy CPU** is the proxy's own user+system time over the run
(` + "`/proc/PID/stat`" + ` utime+stime deltas, summed over nginx's master and workers) divided by the
work done; **peak RSS** is the sum of ` + "`VmHWM`" + ` over the proxy's processes, reset through
` + "`/proc/PID/clear_refs`" + ` before each run; **machine CPU** is the whole machine's busy time
(` + "`/proc/stat`" + `: user, nice, system, irq, softirq, steal, every CPU) divided by the same work,
for every path: it counts the kernel's share (what eBPF capture moves out of user space) and
the client and server, and on a shared machine whatever else ran meanwhile. Ratios compare each path with the best peer (highest
rate; lowest CPU). Client, proxy and server share the machine's cores, so rates are noisy:
CPU per unit and the interleaved ratios are the steadier figures.
`
