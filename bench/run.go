package bench

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Options shape a bench run. The zero value is the full run.
type Options struct {
	// Quick is the smoke run: one round of short runs.
	Quick bool
	// Rounds is how many times every (workload, path) cell runs; the cells
	// are interleaved (A B C A B C …) and the table shows medians.
	Rounds int
	// Duration is each cell's load time.
	Duration time.Duration
	// Warmup is an unrecorded keep-alive HTTP run per path before round 1.
	Warmup time.Duration
	// Paths and Workloads, when set, keep only the named ones.
	Paths, Workloads []string
	// ProfileDir, when set, gets a perf profile of weir-agent per workload,
	// recorded in an extra unrecorded pass after the rounds.
	ProfileDir string
	// HTTP2Engine, when set, is the agent's http2.engine (frames or xnet),
	// to compare the HTTP/2 engines against the same peers.
	HTTP2Engine string
	// BaselineAgent, when set, is another weir-agent binary (an older
	// build) run beside the current one: each mode gets a second node with
	// paths "weir-<mode>-base" and "weir-<mode>-base-l4", so a change is
	// measured before and after in the same run, interleaved.
	BaselineAgent string
	// Loops, when set, is runtime.loops for this build's agents ("off"
	// measures the goroutine path); the baseline agent keeps its default.
	Loops string
	// Log receives progress lines; nil for none.
	Log io.Writer
}

// Default and quick sizes. The full run takes about 20 minutes on the
// 2-core reference machine (42 cells × 5 rounds × 4 s, setup, and with
// --profile one more run per proxy cell); the quick one about a minute.
const (
	DefaultRounds   = 5
	DefaultDuration = 4 * time.Second
	DefaultWarmup   = time.Second
	QuickRounds     = 1
	QuickDuration   = time.Second
	maxRounds       = 50
	maxDuration     = time.Minute
)

func (o *Options) fill() error {
	if o.Rounds == 0 {
		o.Rounds = DefaultRounds
		if o.Quick {
			o.Rounds = QuickRounds
		}
	}
	if o.Duration == 0 {
		o.Duration = DefaultDuration
		if o.Quick {
			o.Duration = QuickDuration
		}
	}
	if o.Warmup == 0 && !o.Quick {
		o.Warmup = DefaultWarmup
	}
	switch o.HTTP2Engine {
	case "", "frames", "xnet":
	default:
		return fmt.Errorf("http2-engine: want frames or xnet, got %q", o.HTTP2Engine)
	}
	if o.Rounds < 1 || o.Rounds > maxRounds {
		return fmt.Errorf("rounds: want 1..%d, got %d", maxRounds, o.Rounds)
	}
	if o.Duration < time.Second || o.Duration > maxDuration {
		return fmt.Errorf("duration: want 1s..%s, got %s", maxDuration, o.Duration)
	}
	if o.Warmup < 0 || o.Warmup > maxDuration {
		return fmt.Errorf("warmup: want 0..%s, got %s", maxDuration, o.Warmup)
	}
	if o.BaselineAgent != "" {
		st, err := os.Stat(o.BaselineAgent)
		if err != nil {
			return fmt.Errorf("baseline-agent: %w", err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("baseline-agent: %s is not an executable file", o.BaselineAgent)
		}
	}
	for _, p := range o.Paths {
		if strings.Contains(p, baseSuffix) && o.BaselineAgent == "" {
			return fmt.Errorf("path %s: needs --baseline-agent", p)
		}
	}
	if err := knownNames("path", o.Paths, pathNames()); err != nil {
		return err
	}
	var wl []string
	for _, w := range workloads {
		wl = append(wl, w.Name)
	}
	return knownNames("workload", o.Workloads, wl)
}

func pathNames() []string {
	names := []string{"direct"}
	for _, m := range WeirModes {
		names = append(names, "weir-"+m, "weir-"+m+"-l4", "weir-"+m+baseSuffix, "weir-"+m+baseSuffix+"-l4")
	}
	names = append(names, KernelPath, "weir-ebpf"+noAccelSuffix, "weir-ebpf"+noAccelSuffix+"-l4", "weir-ebpf"+spliceSuffix, "weir-ebpf"+spliceSuffix+"-l4", PolicyPath)
	for _, p := range peers {
		names = append(names, p.name)
	}
	return names
}

func knownNames(what string, asked, known []string) error {
	for _, a := range asked {
		if !slices.Contains(known, a) {
			return fmt.Errorf("unknown %s %q (known: %s)", what, a, strings.Join(known, ", "))
		}
	}
	return nil
}

func keep(filter []string, name string) bool {
	return len(filter) == 0 || slices.Contains(filter, name)
}

// Run builds the test world, runs every workload over every path it
// applies to, interleaved over the rounds, and returns the report. Bad
// options are an error before anything is built; a cell that fails is
// recorded in its row (Row.Failures) and the run goes on.
func Run(t testworld.T, opts Options) (*Report, error) {
	t.Helper()
	if err := opts.fill(); err != nil {
		return nil, err
	}
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "ip", "iptables", "sysctl", "nginx")
	var wls []workload
	for _, w := range workloads {
		if keep(opts.Workloads, w.Name) {
			if w.tool != "" {
				testworld.RequireTool(t, w.tool)
			}
			wls = append(wls, w)
		}
	}
	started := time.Now()
	w := buildWorld(t, &opts)
	var paths []*path
	for _, p := range w.paths {
		if keep(opts.Paths, p.Name) {
			paths = append(paths, p)
		}
	}

	rep := newReport(opts, started, paths, wls)
	if opts.Warmup > 0 {
		for _, p := range paths {
			w.logf("warm-up %s", p.Name)
			runWrk(wrkConnections, false)(w, p, opts.Warmup)
		}
	}
	for round := range opts.Rounds {
		for wi, wl := range wls {
			// Rotate the order every round so no path always runs first.
			for k := range paths {
				p := paths[(k+round)%len(paths)]
				if _, ok := p.addr[wl.backend]; !ok {
					continue
				}
				s, err := w.cell(wl, p, opts.Duration)
				row := rep.Workloads[wi].row(p.Name)
				if err != nil {
					w.logf("round %d %-15s %-14s FAILED: %v", round+1, wl.Name, p.Name, err)
					row.Failures = append(row.Failures, err.Error())
					continue
				}
				w.logf("round %d %-15s %-14s %s", round+1, wl.Name, p.Name, describe(wl, s))
				s.Round = round + 1
				row.Samples = append(row.Samples, s)
			}
		}
	}
	seen := map[*testworld.Agent]bool{}
	for _, p := range paths {
		if p.agent != nil && !seen[p.agent] {
			// The L7 and L4 paths of a mode share one agent: its counters
			// and log are reported once, under the first path's name.
			seen[p.agent] = true
			rep.AgentConnections[p.Name] = p.agent.Metric(t, `weir_connections_total{direction="outbound"}`)
			if m, err := agentMetrics(p.agent); err == nil {
				rep.AgentSniff[p.Name] = labelled(m, "weir_sniff_total", "result")
				rep.AgentHTTPRequests[p.Name] = labelled(m, "weir_http_requests_total", "protocol")
				if a := labelled(m, "weir_ebpf_accel_total", "event"); len(a) > 0 {
					rep.AgentAccel[p.Name] = a
				}
			}
			rep.AgentWarnings = append(rep.AgentWarnings, agentWarnings(p)...)
		}
	}
	rep.RuleChanges = w.ruleChanges()
	if opts.ProfileDir != "" {
		w.profile(paths, wls, opts.ProfileDir, rep)
	}
	rep.finish(time.Since(started))
	return rep, nil
}

// cell runs one workload over one path with the proxy's accounting around it.
func (w *world) cell(wl workload, p *path, d time.Duration) (Sample, error) {
	if err := p.check(); err != nil {
		return Sample{}, err
	}
	// The agent's L7 request counter around the run tells whether the
	// requests went through weir's L7 half (read outside the accounting).
	var l7Before, connsBefore float64
	if p.agent != nil {
		m, err := agentMetrics(p.agent)
		if err != nil {
			return Sample{}, err
		}
		l7Before = sumSeries(m, "weir_http_requests_total")
		connsBefore = m[`weir_connections_total{direction="outbound"}`]
	}
	if wl.pinned {
		restore, err := pinPath(p)
		if err != nil {
			return Sample{}, err
		}
		defer restore()
	}
	u, err := p.procs.begin()
	if err != nil {
		return Sample{}, err
	}
	busy0, err := machineBusy()
	if err != nil {
		return Sample{}, err
	}
	s, err := wl.run(w, p, d)
	if err != nil {
		if cerr := p.check(); cerr != nil {
			return Sample{}, fmt.Errorf("%w (%v)", cerr, err)
		}
		if p.agent != nil {
			if b, rerr := os.ReadFile(p.agent.LogPath); rerr == nil {
				err = fmt.Errorf("%w\n--- weir-agent log:\n%s", err, tail(string(b), 6))
			}
		}
		return Sample{}, err
	}
	cpu, rss, err := u.end()
	if err != nil {
		return Sample{}, err
	}
	busy1, err := machineBusy()
	if err != nil {
		return Sample{}, err
	}
	s.ProxyCPU, s.ProxyRSS, s.MachineCPU = cpu.Seconds(), rss, (busy1 - busy0).Seconds()
	if p.agent != nil {
		m, err := agentMetrics(p.agent)
		if err != nil {
			return Sample{}, err
		}
		s.WeirL7Requests = sumSeries(m, "weir_http_requests_total") - l7Before
		s.WeirConnections = m[`weir_connections_total{direction="outbound"}`] - connsBefore
	}
	return s, nil
}

// agentMetrics reads every series of the agent's /metrics: the series
// with its labels as written (`name{a="b"}`) to its value.
func agentMetrics(a *testworld.Agent) (map[string]float64, error) {
	body, err := a.Get("/metrics")
	if err != nil {
		return nil, fmt.Errorf("read weir-agent metrics: %w", err)
	}
	m := map[string]float64{}
	for _, line := range strings.Split(body, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	return m, nil
}

// sumSeries adds up every series of a metric, whatever its labels.
func sumSeries(m map[string]float64, name string) float64 {
	var sum float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			sum += v
		}
	}
	return sum
}

// labelled sums a metric's series by one label's value, leaving out
// zeros: labelled(m, "weir_sniff_total", "result")["http1"].
func labelled(m map[string]float64, name, label string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		rest, ok := strings.CutPrefix(k, name+"{")
		if !ok || v == 0 {
			continue
		}
		for _, kv := range strings.Split(strings.TrimSuffix(rest, "}"), ",") {
			if l, val, ok := strings.Cut(kv, "="); ok && l == label {
				out[strings.Trim(val, `"`)] += v
			}
		}
	}
	return out
}

// agentWarnings are the WARN and ERROR lines of a weir path's agent log:
// anything the agent complained about while it was being measured.
func agentWarnings(p *path) []string {
	b, err := os.ReadFile(p.agent.LogPath)
	if err != nil {
		return []string{fmt.Sprintf("%s: read agent log: %v", p.Name, err)}
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			out = append(out, p.Name+": "+line)
		}
	}
	return out
}

// check reports a dead server, proxy or agent the path needs.
func (p *path) check() error {
	for _, d := range p.deps {
		if err := d.check(); err != nil {
			return err
		}
	}
	if p.agent != nil {
		if err := syscall.Kill(p.agent.Pid(), 0); err != nil {
			return fmt.Errorf("weir-agent (pid %d) is gone: %w", p.agent.Pid(), err)
		}
	}
	return nil
}

func describe(wl workload, s Sample) string {
	out := fmt.Sprintf("%s %s", fmtRate(s.Rate), wl.rateUnit)
	if s.P50us > 0 {
		out += fmt.Sprintf("  p50 %s p99 %s", fmtUs(s.P50us), fmtUs(s.P99us))
	}
	if s.ProxyCPU > 0 {
		out += fmt.Sprintf("  cpu %.2f %s  rss %.1f MiB", s.ProxyCPU/s.Units*wl.cpuScale, wl.cpuUnit, float64(s.ProxyRSS)/(1<<20))
	}
	if s.Errors > 0 {
		out += fmt.Sprintf("  errors %d (%s)", s.Errors, s.Note)
	}
	return out
}

// profile runs each workload once more over every proxy path (not counted)
// under perf: `perf stat` counts the proxy's syscalls and context switches
// per unit of work, and for weir paths `perf record` samples where the CPU
// goes (a perf.data and a text report per workload in dir).
func (w *world) profile(paths []*path, wls []workload, dir string, rep *Report) {
	if _, err := exec.LookPath("perf"); err != nil {
		w.logf("profile: perf is not installed (Debian package linux-perf); skipping")
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		w.logf("profile: %v", err)
		return
	}
	for _, wl := range wls {
		for _, p := range paths {
			if _, ok := p.addr[wl.backend]; !ok || p.Kind == kindDirect {
				continue
			}
			pr, err := w.profileCell(wl, p, dir)
			if err != nil {
				w.logf("profile: %s over %s: %v", wl.Name, p.Name, err)
				continue
			}
			w.logf("profile %-15s %-14s %6.1f syscalls, %5.2f context switches, %6.1f µs CPU per %s%s",
				wl.Name, p.Name, pr.Syscalls, pr.ContextSwitches, pr.CPUus, pr.Per, pr.pathNote())
			rep.Profiles = append(rep.Profiles, pr)
		}
	}
}

// Profile is one workload over one proxy path under perf. Counts are per
// request or round trip (per MB for bulk).
type Profile struct {
	Workload        string  `json:"workload"`
	Path            string  `json:"path"`
	Per             string  `json:"per"`
	Syscalls        float64 `json:"syscalls"`
	ContextSwitches float64 `json:"contextSwitches"`
	CPUus           float64 `json:"cpuUs"`
	Report          string  `json:"report,omitempty"`
}

func (p Profile) pathNote() string {
	if p.Report == "" {
		return ""
	}
	return "  " + p.Report
}

func (w *world) profileCell(wl workload, p *path, dir string) (Profile, error) {
	pids, err := p.procs.pids()
	if err != nil {
		return Profile{}, err
	}
	var ps []string
	for _, pid := range pids {
		ps = append(ps, fmt.Sprint(pid))
	}
	secs := fmt.Sprint(secondsArg(w.opts.Duration) + 1)
	statFile := filepath.Join(dir, fmt.Sprintf("%s-%s.stat", p.Name, wl.Name))
	stat := exec.Command("perf", "stat", "-x,", "-o", statFile, "-e", "raw_syscalls:sys_enter,context-switches,task-clock",
		"-p", strings.Join(ps, ","), "--", "sleep", secs)
	var sched *exec.Cmd
	data := filepath.Join(dir, fmt.Sprintf("%s-%s.perf.data", p.Name, wl.Name))
	schedData := filepath.Join(dir, fmt.Sprintf("%s-%s.sched.perf.data", p.Name, wl.Name))
	// Every proxy is sampled, so that weir's profile can be read against
	// the peers' of the same run (where nginx spends less, not only where
	// weir spends).
	rec := exec.Command("perf", "record", "-q", "-g", "-F", "999", "-p", strings.Join(ps, ","), "-o", data, "--", "sleep", secs)
	if err := rec.Start(); err != nil {
		return Profile{}, fmt.Errorf("perf record: %w", err)
	}
	if p.Kind == kindWeir {
		// Where the agent's threads go to sleep and who wakes them: every
		// context switch and wake-up with its call chain.
		sched = exec.Command("perf", "record", "-q", "-g", "-e", "sched:sched_switch,sched:sched_wakeup",
			"-p", strings.Join(ps, ","), "-o", schedData, "--", "sleep", secs)
		if err := sched.Start(); err != nil {
			return Profile{}, fmt.Errorf("perf record sched: %w", err)
		}
	}
	if err := stat.Start(); err != nil {
		return Profile{}, fmt.Errorf("perf stat: %w", err)
	}
	time.Sleep(200 * time.Millisecond) // let perf attach before the load starts
	s, err := wl.run(w, p, w.opts.Duration)
	stat.Wait()
	rec.Wait()
	if sched != nil {
		sched.Wait()
	}
	if err != nil {
		return Profile{}, err
	}
	b, err := os.ReadFile(statFile)
	if err != nil {
		return Profile{}, err
	}
	counts := parsePerfStat(b)
	units := s.Units
	per := strings.TrimPrefix(wl.cpuUnit, "µs/")
	if wl.backend == backendIPerf {
		units, per = s.Units/1e6, "MB"
	}
	pr := Profile{Workload: wl.Name, Path: p.Name, Per: per,
		Syscalls: counts["raw_syscalls:sys_enter"] / units, ContextSwitches: counts["context-switches"] / units,
		CPUus: counts["task-clock"] * 1e3 / units} // task-clock is in ms
	{
		txt := strings.TrimSuffix(data, ".perf.data") + ".txt"
		out, err := exec.Command("perf", "report", "-i", data, "--stdio", "--children", "--sort", "sym",
			"--percent-limit", "2", "-g", "none").Output()
		if err == nil {
			err = os.WriteFile(txt, out, 0o644)
		}
		if err != nil {
			return pr, fmt.Errorf("perf report: %w", err)
		}
		pr.Report = txt
	}
	if sched != nil {
		// Per event, the call chains (callee first) into the switch or
		// wake-up: which runtime path parks a thread, and which wakes one.
		out, err := exec.Command("perf", "report", "-i", schedData, "--stdio", "--no-children", "--sort", "comm",
			"--percent-limit", "1", "-g", "graph,0.5", "--max-stack", "24").Output()
		if err == nil {
			err = os.WriteFile(strings.TrimSuffix(schedData, ".perf.data")+".txt", out, 0o644)
		}
		if err != nil {
			return pr, fmt.Errorf("perf report sched: %w", err)
		}
	}
	return pr, nil
}

// parsePerfStat reads `perf stat -x,` output: value,unit,event,…
func parsePerfStat(b []byte) map[string]float64 {
	m := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			continue
		}
		m[f[2]] = v
	}
	return m
}

// median of xs (0 for none).
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// machine describes where the bench ran.
func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	m.Tools = map[string]string{}
	for name, args := range map[string][]string{
		"nginx": {"-v"}, "haproxy": {"-v"}, "wrk": {"-v"}, "iperf3": {"-v"}, "h2load": {"--version"},
	} {
		out, _ := exec.Command(name, args...).CombinedOutput()
		if line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n"); line != "" {
			m.Tools[name] = line
		}
	}
	return m
}

func fmtRate(v float64) string {
	switch {
	case v >= 1e5:
		return fmt.Sprintf("%.0fk", v/1e3)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

func fmtUs(us float64) string {
	switch {
	case us == 0 || math.IsNaN(us):
		return "-"
	case us >= 1000:
		return fmt.Sprintf("%.2fms", us/1000)
	default:
		return fmt.Sprintf("%.0fµs", us)
	}
}
