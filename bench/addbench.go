package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weir-mesh/weir/integration/testworld"
)

// ADDOptions shape a CNI ADD latency run (weir-addbench).
type ADDOptions struct {
	// Pods are added one after another; the zero value means 500.
	Pods int
	// Mode is the conflist's mode: redirect (default) or tproxy.
	Mode string
	// Progress, when set, is called after each ADD.
	Progress func(done int)
	// StraceDir, when set, runs every StraceEvery-th weir-cni ADD (the
	// first included; default every 100th) under `strace -f -tt -T`, one
	// file per traced ADD in that directory. Traced ADDs are slower and are
	// left out of the figures.
	StraceDir   string
	StraceEvery int
	// BaselinePlugin, when set, is another weir-cni binary (an older
	// build, say) that runs every other ADD in place of this tree's:
	// the two are measured side by side on the same node, agent and
	// load, and ADDResult.Baseline holds its ADDs.
	BaselinePlugin string
	// NoLinkIPv6 gives the links of this IPv4 run (the pods' eth0 and the
	// bridge's ports) no IPv6, as a runtime may for a network without
	// IPv6. By default they have it, and every new link sends router
	// solicitations and MLD reports to link-local multicast, which the
	// bridge floods to every port: a cost that grows with the number of
	// pods and lands on every process of the node, weir-cni and the
	// control alike (docs/benchmarks.md, "CNI ADD latency, eighth pass").
	NoLinkIPv6 bool
	// Gap is a pause before each pod is made (after the previous pod's ADD
	// and control): what the node still does for the previous pod then
	// lands in the pause instead of on the next ADD (docs/benchmarks.md,
	// "CNI ADD latency, eighth pass"). Zero, the default, adds pods back
	// to back.
	Gap time.Duration
	// EmptyNode adds a second node, with an agent of its own and the same
	// backend and mode, whose pod count stays at zero: right after every
	// ADD on the measured node, a pod is made there, added, deleted and its
	// namespace removed, and that ADD is timed too (ADDResult.Empty). The
	// two ADDs run the same code at nearly the same moment, and only the
	// measured node's pod count grows, so the ratio of the two, first 50
	// against last 50, is the growth with the number of pods with the
	// machine's own drift over the run divided out (the VERSION control
	// does no work, so it shows only part of that drift).
	EmptyNode bool
}

// ADDResult is one backend's run: per ADD, in order, weir-cni's wall time
// as the runtime sees it (fork to exit), its CPU time, and where the time
// went, phase by phase, from the plugin's log (which carries the agent's
// own phases too).
type ADDResult struct {
	Backend string
	Mode    string
	Wall    []time.Duration
	// PluginCPU is weir-cni's user+system CPU time per ADD (its rusage at
	// exit, process start and exit included).
	PluginCPU []time.Duration
	// Phases maps a phase name (see PhaseDocs) to its time per ADD, in
	// ADD order.
	Phases map[string][]time.Duration
	// AgentCPU is the CPU time the agent process used over the whole run,
	// from /proc (10 ms ticks; divide by the number of ADDs).
	AgentCPU time.Duration
	// AgentAlloc is what the agent's heap allocated over the ADDs, in
	// bytes, and AgentGCs how many collections ran meanwhile (its Go
	// metrics): garbage an ADD leaves is collected on the agent's CPU,
	// often during a later ADD.
	AgentAlloc, AgentGCs float64
	// Start is weir-cni VERSION's wall time, repeated: what starting the
	// plugin process costs before it does anything; StartCPU its CPU time.
	Start, StartCPU []time.Duration
	// Control is weir-cni VERSION's wall time, once right after every
	// ADD: a process that starts, does no work and exits, timed at the
	// same moments as the ADDs. Its drift from the first 50 to the last 50
	// is the node's own (more namespaces, the machine's load), not the
	// ADD's work.
	Control []time.Duration
	// BridgeFrames is how many frames the node's bridge received over the
	// ADDs: the pods send none of their own, so this is the links'
	// chatter (see ADDOptions.NoLinkIPv6).
	BridgeFrames uint64
	// NoLinkIPv6 is the option the run had (ADDOptions.NoLinkIPv6).
	NoLinkIPv6 bool
	// Traced counts the ADDs run under strace, left out of the figures.
	Traced int
	// Empty, with ADDOptions.EmptyNode, is weir-cni ADD's wall time on the
	// empty node, one right after each ADD of Wall (untraced ones only, so
	// that Empty[i] pairs with Wall[i]).
	Empty []time.Duration
	// EmptyNetns are the paths the empty node's pods' namespaces had,
	// each removed right after its pod's DEL.
	EmptyNetns []string
	// Del is weir-cni DEL's wall time per pod, after every ADD, in order.
	Del []time.Duration
	// Baseline, with ADDOptions.BaselinePlugin, is the baseline binary's
	// ADDs (every other one) and its VERSION runs; the agent's figures
	// and DEL are in the main result only.
	Baseline *ADDResult
}

// PhaseDocs says what each phase weir-addbench reports measures. Phases
// starting "agent." are timed inside the agent, "rules." inside
// redirect.Apply in the plugin.
var PhaseDocs = map[string]string{
	"plugin.exec":     "wall minus main: fork, exec, Go runtime and package init, result printing, exit",
	"plugin.start":    "fork to weir-cni's package init (exec, runtime start, the inits of what it links), from the log line's clock",
	"plugin.skel":     "package init to cmdAdd (reading stdin and the environment, runtime settings)",
	"plugin.exit":     "the log line to the runtime seeing the exit (log write, printing the result, exit, wakeup)",
	"plugin.parse":    "config decode and validation, log file open",
	"plugin.netns":    "the pod netns check (open, statfs)",
	"plugin.agent":    "the agent call as weir-cni sees it",
	"plugin.rules":    "redirect.Apply in the pod netns",
	"plugin.main":     "cmdAdd from its first statement to its log line",
	"agent.transport": "plugin.agent minus agent.total: dial, HTTP, JSON both ways",
	"cpu.plugin":      "weir-cni's CPU time (rusage at exit)",
	"cpu.agent":       "the agent's CPU time during its handling of the ADD (rusage)",
}

// MeasureADD builds a node whose agent captures namespace demo with
// capture.backend set to backend, adds opts.Pods pods in sequence through
// libcni (loopback, then bridge + host-local, then weir-cni, as a runtime
// does) and times each weir-cni ADD. The node is torn down by t's
// cleanups.
func MeasureADD(t testworld.T, backend string, opts ADDOptions) ADDResult {
	t.Helper()
	if opts.Pods == 0 {
		opts.Pods = 500
	}
	if opts.Mode == "" {
		opts.Mode = "redirect"
	}
	if opts.StraceEvery == 0 {
		opts.StraceEvery = 100
	}
	timer := &addTimer{inner: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}},
		straceDir: opts.StraceDir, straceEvery: opts.StraceEvery, baseline: opts.BaselinePlugin}
	node := testworld.NewNode(t, testworld.NodeOptions{Exec: timer, CaptureBackend: backend, Weir: map[string]any{"mode": opts.Mode}})
	// The state directory on tmpfs, as the README asks of a node.
	stateDir, err := os.MkdirTemp("/dev/shm", "weir-addbench-")
	if err != nil {
		t.Fatalf("state directory on tmpfs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(stateDir) })
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "logLevel": "info", "stateDir": stateDir})
	res := ADDResult{Backend: backend, Mode: opts.Mode, NoLinkIPv6: opts.NoLinkIPv6}
	var empty *emptyNode
	if opts.EmptyNode {
		empty = newEmptyNode(t, backend, opts)
	}
	cpu0, err := procCPU(agent.Pid())
	if err != nil {
		t.Fatalf("%s: %v", backend, err)
	}
	alloc0, gcs0 := agent.Metric(t, "go_memstats_alloc_bytes_total"), agent.Metric(t, "go_gc_duration_seconds_count")
	if opts.NoLinkIPv6 {
		// The host ends of the pods' veths are made in the pod netns and
		// moved here, where they take this netns's defaults.
		node.MustRun(t, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.weir0.disable_ipv6=1")
	}
	frames0 := bridgeFrames(t, node)
	var pods []*testworld.Pod
	for i := 0; i < opts.Pods; i++ {
		time.Sleep(opts.Gap)
		p := node.NewPodNetns(t, "demo", fmt.Sprintf("p%04d", i))
		if opts.NoLinkIPv6 {
			// Links made later in the pod netns (eth0) take the default;
			// lo keeps ::1.
			if err := p.Netns.Do(func() error {
				return os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
			}); err != nil {
				t.Fatalf("%s: pod %d: no IPv6 on new links: %v", backend, i, err)
			}
		}
		if err := node.Add(t, p); err != nil {
			t.Fatalf("%s: ADD of pod %d: %v", backend, i, err)
		}
		pods = append(pods, p)
		if empty != nil {
			empty.add(t, i)
		}
		w, _ := pluginStart(t, filepath.Join(node.Bin, "weir-cni"), 1)
		res.Control = append(res.Control, w...)
		if opts.Progress != nil {
			opts.Progress(i + 1)
		}
	}
	res.BridgeFrames = bridgeFrames(t, node) - frames0
	cpu1, err := procCPU(agent.Pid())
	if err != nil {
		t.Fatalf("%s: %v", backend, err)
	}
	res.AgentCPU = cpu1 - cpu0
	res.AgentAlloc = agent.Metric(t, "go_memstats_alloc_bytes_total") - alloc0
	res.AgentGCs = agent.Metric(t, "go_gc_duration_seconds_count") - gcs0
	// Then every pod's DEL, in the same order, while its netns still
	// exists (as a runtime deletes a sandbox): what a DEL costs.
	for i, p := range pods {
		if err := node.Del(p); err != nil {
			t.Fatalf("%s: DEL of pod %d: %v", backend, i, err)
		}
	}
	res.Del = timer.dels()
	runs := timer.adds()
	if len(runs) != opts.Pods {
		t.Fatalf("%s: timed %d weir-cni ADDs, want %d", backend, len(runs), opts.Pods)
	}
	lines, err := addLinesFromLog(node.CNILog)
	if err != nil {
		t.Fatalf("%s: %v", backend, err)
	}
	if len(lines) != len(runs) {
		t.Fatalf("%s: %d 'pod captured' lines in the weir-cni log for %d ADDs", backend, len(lines), len(runs))
	}
	res.Phases = map[string][]time.Duration{}
	if opts.BaselinePlugin != "" {
		res.Baseline = &ADDResult{Backend: backend + "-base", Mode: opts.Mode, Phases: map[string][]time.Duration{}}
	}
	var emptyRuns []addRun
	if empty != nil {
		res.EmptyNetns = empty.netns
		emptyRuns = empty.timer.adds()
		if len(emptyRuns) != len(runs) {
			t.Fatalf("%s: timed %d ADDs on the empty node, want %d", backend, len(emptyRuns), len(runs))
		}
	}
	for i, r := range runs {
		into := &res
		if r.baseline {
			into = res.Baseline
		}
		into.addRun(r, lines[i])
		if empty != nil && !r.traced && !r.baseline {
			res.Empty = append(res.Empty, emptyRuns[i].wall)
		}
	}
	res.Start, res.StartCPU = pluginStart(t, filepath.Join(node.Bin, "weir-cni"), 50)
	if res.Baseline != nil {
		res.Baseline.Start, res.Baseline.StartCPU = pluginStart(t, opts.BaselinePlugin, 50)
	}
	return res
}

// emptyNode is ADDOptions.EmptyNode's node: its agent captures namespace
// demo like the measured node's, and it never keeps a pod.
type emptyNode struct {
	node       *testworld.Node
	timer      *addTimer
	noLinkIPv6 bool
	netns      []string // every pod's namespace path, in order
}

func newEmptyNode(t testworld.T, backend string, opts ADDOptions) *emptyNode {
	t.Helper()
	timer := &addTimer{inner: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}}
	node := testworld.NewNode(t, testworld.NodeOptions{Exec: timer, CaptureBackend: backend, Weir: map[string]any{"mode": opts.Mode}})
	stateDir, err := os.MkdirTemp("/dev/shm", "weir-addbench-empty-")
	if err != nil {
		t.Fatalf("state directory on tmpfs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(stateDir) })
	node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "logLevel": "info", "stateDir": stateDir})
	if opts.NoLinkIPv6 {
		node.MustRun(t, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1", "net.ipv6.conf.weir0.disable_ipv6=1")
	}
	return &emptyNode{node: node, timer: timer, noLinkIPv6: opts.NoLinkIPv6}
}

// add makes pod i on the empty node, adds it (timed), deletes it and
// removes its namespace, so the node is empty again.
func (e *emptyNode) add(t testworld.T, i int) {
	t.Helper()
	p := e.node.NewPodNetns(t, "demo", fmt.Sprintf("e%04d", i))
	if e.noLinkIPv6 {
		if err := p.Netns.Do(func() error {
			return os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0)
		}); err != nil {
			t.Fatalf("empty node: pod %d: no IPv6 on new links: %v", i, err)
		}
	}
	if err := e.node.Add(t, p); err != nil {
		t.Fatalf("empty node: ADD of pod %d: %v", i, err)
	}
	if err := e.node.Del(p); err != nil {
		t.Fatalf("empty node: DEL of pod %d: %v", i, err)
	}
	p.Netns.MustRunDelete(t)
	e.netns = append(e.netns, p.Netns.Path)
}

// bridgeFrames reads how many frames the node's bridge has received.
func bridgeFrames(t testworld.T, node *testworld.Node) uint64 {
	t.Helper()
	out := node.MustRun(t, "cat", "/sys/class/net/weir0/statistics/rx_packets")
	n, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("bridge weir0's rx_packets %q: %v", out, err)
	}
	return n
}

// addRun adds one timed ADD and its log line to the result.
func (res *ADDResult) addRun(r addRun, l addLine) {
	if r.traced {
		res.Traced++
		return
	}
	res.Wall = append(res.Wall, r.wall)
	res.PluginCPU = append(res.PluginCPU, r.cpu)
	us := func(v int64) time.Duration { return time.Duration(v) * time.Microsecond }
	add := func(phase string, d time.Duration) { res.Phases[phase] = append(res.Phases[phase], d) }
	add("plugin.exec", r.wall-us(l.Main))
	if !l.Time.IsZero() && l.SinceStart > 0 {
		// The plugin's clock and this process's are the same wall
		// clock: the log line's time splits plugin.exec into what came
		// before the plugin's package init and what came after its log
		// line.
		add("plugin.start", l.Time.Add(-us(l.SinceStart)).Sub(r.start))
		add("plugin.skel", us(l.SinceStart-l.Main))
		add("plugin.exit", r.start.Add(r.wall).Sub(l.Time))
	}
	add("plugin.parse", us(l.Parse))
	add("plugin.netns", us(l.Netns))
	add("plugin.agent", us(l.Agent))
	add("plugin.rules", us(l.Redirect))
	add("plugin.main", us(l.Main))
	add("agent.transport", us(l.Agent-l.AgentPhases["total"]))
	add("cpu.plugin", r.cpu)
	add("cpu.agent", us(l.AgentPhases["cpu"]))
	for k, v := range l.AgentPhases {
		if k != "cpu" {
			add("agent."+k, us(v))
		}
	}
	for k, v := range l.RulePhases {
		add("rules."+k, us(v))
	}
}

// addRun is one timed weir-cni ADD.
type addRun struct {
	start     time.Time // wall clock at fork
	wall, cpu time.Duration
	traced    bool
	baseline  bool // run by ADDOptions.BaselinePlugin
}

// addTimer is a libcni Exec that runs every weir-cni ADD itself, to time
// it and read its rusage; other plugins and verbs go through libcni's own.
type addTimer struct {
	inner       invoke.Exec
	straceDir   string
	straceEvery int
	baseline    string // ADDOptions.BaselinePlugin
	mu          sync.Mutex
	runs        []addRun
	del         []time.Duration
}

func (a *addTimer) dels() []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.del)
}

func (a *addTimer) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	if filepath.Base(pluginPath) == "weir-cni" && slices.Contains(environ, "CNI_COMMAND=DEL") {
		start := time.Now()
		out, err := a.inner.ExecPlugin(ctx, pluginPath, stdin, environ)
		d := time.Since(start)
		a.mu.Lock()
		a.del = append(a.del, d)
		a.mu.Unlock()
		return out, err
	}
	if filepath.Base(pluginPath) != "weir-cni" || !slices.Contains(environ, "CNI_COMMAND=ADD") {
		return a.inner.ExecPlugin(ctx, pluginPath, stdin, environ)
	}
	a.mu.Lock()
	n := len(a.runs)
	a.mu.Unlock()
	base := a.baseline != "" && n%2 == 1
	if base {
		pluginPath = a.baseline
	}
	argv := []string{pluginPath}
	traced := a.straceDir != "" && n%a.straceEvery == 0
	if traced {
		argv = []string{"strace", "-f", "-tt", "-T", "-o", filepath.Join(a.straceDir, fmt.Sprintf("add-%04d.strace", n)), pluginPath}
	}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, os.Stderr
	start := time.Now()
	err := cmd.Run()
	run := addRun{start: start, wall: time.Since(start), traced: traced, baseline: base}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru != nil {
		run.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	a.mu.Lock()
	a.runs = append(a.runs, run)
	a.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("weir-cni ADD: %w: %s", err, bytes.TrimSpace(stdout.Bytes()))
	}
	return stdout.Bytes(), nil
}

func (a *addTimer) FindInPath(plugin string, paths []string) (string, error) {
	return a.inner.FindInPath(plugin, paths)
}

func (a *addTimer) Decode(b []byte) (version.PluginInfo, error) { return a.inner.Decode(b) }

func (a *addTimer) adds() []addRun {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.runs)
}

// addLine is weir-cni's "pod captured" log line: its timings in
// microseconds.
type addLine struct {
	Msg         string           `json:"msg"`
	Verb        string           `json:"verb"`
	Agent       int64            `json:"agentMicros"`
	Redirect    int64            `json:"redirectMicros"`
	Main        int64            `json:"mainMicros"`
	Parse       int64            `json:"parseMicros"`
	Netns       int64            `json:"netnsMicros"`
	SinceStart  int64            `json:"sinceStartMicros"`
	Time        time.Time        `json:"time"`
	AgentPhases map[string]int64 `json:"agentPhases"`
	RulePhases  map[string]int64 `json:"rulePhases"`
}

// addLinesFromLog reads the "pod captured" lines weir-cni logs for every
// captured pod, in order.
func addLinesFromLog(path string) ([]addLine, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []addLine
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var l addLine
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Verb != "ADD" || l.Msg != "pod captured" {
			continue
		}
		out = append(out, l)
	}
	return out, sc.Err()
}

// pluginStart times n runs of `weir-cni` answering VERSION: wall and CPU.
func pluginStart(t testworld.T, bin string, n int) (wall, cpu []time.Duration) {
	t.Helper()
	for i := 0; i < n; i++ {
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("weir-cni VERSION: %v: %s", err, b)
		}
		wall = append(wall, time.Since(start))
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru != nil {
			cpu = append(cpu, time.Duration(ru.Utime.Nano()+ru.Stime.Nano()))
		}
	}
	return wall, cpu
}

// Percentile is the nearest-rank p-th percentile (0 < p <= 100) of ds.
func Percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(float64(len(s))*p/100+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Dist is one series' distribution: percentiles over every ADD, and the
// medians of the first and the last 50 (growth with the number of pods
// shows as Last50 above First50).
type Dist struct {
	Min, P10, P50, P90, P99, Max time.Duration
	First50, Last50              time.Duration
}

// DistOf summarises ds, in ADD order.
func DistOf(ds []time.Duration) Dist {
	n := min(50, len(ds))
	return Dist{Min: Percentile(ds, 0), P10: Percentile(ds, 10), P50: Percentile(ds, 50), P90: Percentile(ds, 90), P99: Percentile(ds, 99), Max: Percentile(ds, 100),
		First50: Percentile(ds[:n], 50), Last50: Percentile(ds[len(ds)-n:], 50)}
}

// Drift is Last50/First50 - 1.
func (d Dist) Drift() float64 {
	if d.First50 <= 0 {
		return 0
	}
	return float64(d.Last50)/float64(d.First50) - 1
}

// Summary is the report of one backend.
type Summary struct {
	Backend, Mode string
	Pods, Traced  int
	Wall          Dist
	// CPU is weir-cni's CPU time plus the agent's during the ADD, per ADD.
	CPU Dist
	// AgentCPUPerADD is the agent's CPU time over the run from /proc,
	// divided by the number of ADDs (a check on the per-ADD figure).
	AgentCPUPerADD time.Duration
	// AgentAllocPerADD is the agent's heap allocation per ADD, in bytes
	// (the /metrics reads in between add a little); AgentGCs the
	// collections over the run.
	AgentAllocPerADD, AgentGCs float64
	// Del is weir-cni DEL's wall time.
	Del Dist
	// Start and StartCPU are weir-cni VERSION's medians.
	Start, StartCPU time.Duration
	// Control is the VERSION run after every ADD (ADDResult.Control).
	Control Dist
	// Empty is the empty node's ADDs (ADDResult.Empty), and PairedDrift
	// the growth with the pod count net of the machine's: the median of
	// Wall[i]/Empty[i] over the last 50 pairs against the first 50, minus
	// one. HasEmpty says whether the run had an empty node.
	Empty       Dist
	PairedDrift float64
	HasEmpty    bool
	// BridgeFrames is ADDResult.BridgeFrames; NoLinkIPv6 the option it
	// ran with.
	BridgeFrames uint64
	NoLinkIPv6   bool
	// Phases by name, sorted.
	Phases []PhaseDist
}

// PhaseDist is one phase's distribution.
type PhaseDist struct {
	Name string
	Dist
}

// Summarize computes the report of r.
func (r ADDResult) Summarize() Summary {
	s := Summary{Backend: r.Backend, Mode: r.Mode, Pods: len(r.Wall), Traced: r.Traced, AgentGCs: r.AgentGCs,
		Wall: DistOf(r.Wall), Del: DistOf(r.Del), Control: DistOf(r.Control), Start: Percentile(r.Start, 50), StartCPU: Percentile(r.StartCPU, 50),
		BridgeFrames: r.BridgeFrames, NoLinkIPv6: r.NoLinkIPv6}
	if len(r.Empty) > 0 && len(r.Empty) == len(r.Wall) {
		s.HasEmpty, s.Empty, s.PairedDrift = true, DistOf(r.Empty), pairedDrift(r.Wall, r.Empty)
	}
	n := len(r.Wall) + r.Traced
	if r.Baseline != nil {
		n += len(r.Baseline.Wall) + r.Baseline.Traced // the agent served those too
	}
	if n > 0 {
		s.AgentCPUPerADD = r.AgentCPU / time.Duration(n)
		s.AgentAllocPerADD = r.AgentAlloc / float64(n)
	}
	if pc, ac := r.PluginCPU, r.Phases["cpu.agent"]; len(pc) == len(ac) {
		sum := make([]time.Duration, len(pc))
		for i := range pc {
			sum[i] = pc[i] + ac[i]
		}
		s.CPU = DistOf(sum)
	}
	names := make([]string, 0, len(r.Phases))
	for k := range r.Phases {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		s.Phases = append(s.Phases, PhaseDist{Name: k, Dist: DistOf(r.Phases[k])})
	}
	return s
}

// pairedDrift is the median of a[i]/b[i] over the last 50 pairs divided by
// its median over the first 50, minus one: a's growth over the run beyond
// b's, pair by pair, so that a moment when the whole machine was slow
// counts against both.
func pairedDrift(a, b []time.Duration) float64 {
	ratios := make([]float64, len(a))
	for i := range a {
		if b[i] > 0 {
			ratios[i] = float64(a[i]) / float64(b[i])
		}
	}
	n := min(50, len(ratios))
	median := func(xs []float64) float64 {
		s := slices.Clone(xs)
		slices.Sort(s)
		if len(s) == 0 {
			return 0
		}
		return s[(len(s)-1)/2]
	}
	first := median(ratios[:n])
	if first <= 0 {
		return 0
	}
	return median(ratios[len(ratios)-n:])/first - 1
}

// Phase returns the named phase's distribution (zero if absent).
func (s Summary) Phase(name string) Dist {
	for _, p := range s.Phases {
		if p.Name == name {
			return p.Dist
		}
	}
	return Dist{}
}
