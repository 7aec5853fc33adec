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
	"strings"
	"sync"
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
}

// ADDResult is one backend's run: per ADD, in order, weir-cni's wall time
// as the runtime sees it (fork to exit) and, from the plugin's own log, the
// time it spent waiting for the agent and programming the redirect.
type ADDResult struct {
	Backend  string
	Mode     string
	Wall     []time.Duration
	Agent    []time.Duration
	Redirect []time.Duration
	// Main is the time from the plugin's first Go statement to its log
	// line (parsing, the agent, the redirect, everything but the process
	// start and exit).
	Main []time.Duration
	// Start is weir-cni VERSION's wall time, repeated: what starting the
	// plugin process costs before it does anything.
	Start []time.Duration
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
	timer := &addTimer{inner: &invoke.DefaultExec{RawExec: &invoke.RawExec{Stderr: os.Stderr}, PluginDecoder: version.PluginDecoder{}}}
	node := testworld.NewNode(t, testworld.NodeOptions{Exec: timer, CaptureBackend: backend, Weir: map[string]any{"mode": opts.Mode}})
	// The state directory on tmpfs, as the README asks of a node.
	stateDir, err := os.MkdirTemp("/dev/shm", "weir-addbench-")
	if err != nil {
		t.Fatalf("state directory on tmpfs: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(stateDir) })
	node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "logLevel": "info", "stateDir": stateDir})
	res := ADDResult{Backend: backend, Mode: opts.Mode}
	for i := 0; i < opts.Pods; i++ {
		p := node.NewPodNetns(t, "demo", fmt.Sprintf("p%04d", i))
		if err := node.Add(t, p); err != nil {
			t.Fatalf("%s: ADD of pod %d: %v", backend, i, err)
		}
		if opts.Progress != nil {
			opts.Progress(i + 1)
		}
	}
	res.Wall = timer.adds()
	if len(res.Wall) != opts.Pods {
		t.Fatalf("%s: timed %d weir-cni ADDs, want %d", backend, len(res.Wall), opts.Pods)
	}
	if res.Agent, res.Redirect, res.Main, err = addTimesFromLog(node.CNILog); err != nil {
		t.Fatalf("%s: %v", backend, err)
	}
	res.Start = pluginStart(t, filepath.Join(node.Bin, "weir-cni"), 50)
	return res
}

// addTimer is a libcni Exec that times every weir-cni ADD.
type addTimer struct {
	inner invoke.Exec
	mu    sync.Mutex
	wall  []time.Duration
}

func (a *addTimer) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	if filepath.Base(pluginPath) != "weir-cni" || !slices.Contains(environ, "CNI_COMMAND=ADD") {
		return a.inner.ExecPlugin(ctx, pluginPath, stdin, environ)
	}
	start := time.Now()
	out, err := a.inner.ExecPlugin(ctx, pluginPath, stdin, environ)
	d := time.Since(start)
	a.mu.Lock()
	a.wall = append(a.wall, d)
	a.mu.Unlock()
	return out, err
}

func (a *addTimer) FindInPath(plugin string, paths []string) (string, error) {
	return a.inner.FindInPath(plugin, paths)
}

func (a *addTimer) Decode(b []byte) (version.PluginInfo, error) { return a.inner.Decode(b) }

func (a *addTimer) adds() []time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.wall)
}

// addTimesFromLog reads the agent and redirect times weir-cni logs with
// every captured pod, in order.
func addTimesFromLog(path string) (agent, redirect, main []time.Duration, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, nil, err
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		var l struct {
			Msg      string `json:"msg"`
			Verb     string `json:"verb"`
			Agent    int64  `json:"agentMicros"`
			Redirect int64  `json:"redirectMicros"`
			Main     int64  `json:"sinceStartMicros"`
		}
		if json.Unmarshal(sc.Bytes(), &l) != nil || l.Verb != "ADD" || l.Msg != "pod captured" {
			continue
		}
		agent = append(agent, time.Duration(l.Agent)*time.Microsecond)
		redirect = append(redirect, time.Duration(l.Redirect)*time.Microsecond)
		main = append(main, time.Duration(l.Main)*time.Microsecond)
	}
	return agent, redirect, main, sc.Err()
}

// pluginStart times n runs of `weir-cni` answering VERSION.
func pluginStart(t testworld.T, bin string, n int) []time.Duration {
	t.Helper()
	var out []time.Duration
	for i := 0; i < n; i++ {
		cmd := exec.Command(bin)
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
		start := time.Now()
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("weir-cni VERSION: %v: %s", err, b)
		}
		out = append(out, time.Since(start))
	}
	return out
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

// Summary is the report line of one backend.
type Summary struct {
	Backend, Mode            string
	Pods                     int
	P50, P90, P99, Max       time.Duration
	First50, Last50          time.Duration // medians
	Drift                    float64       // Last50/First50 - 1
	Agent50, Redirect50      time.Duration
	Start50, Main50          time.Duration
	AgentLast, AgentFirst    time.Duration
	RedirectP99, AgentP99    time.Duration
	RedirectFirst, RedirLast time.Duration
}

// Summarize computes the report line of r.
func (r ADDResult) Summarize() Summary {
	n := min(50, len(r.Wall))
	s := Summary{Backend: r.Backend, Mode: r.Mode, Pods: len(r.Wall),
		P50: Percentile(r.Wall, 50), P90: Percentile(r.Wall, 90), P99: Percentile(r.Wall, 99), Max: Percentile(r.Wall, 100),
		First50: Percentile(r.Wall[:n], 50), Last50: Percentile(r.Wall[len(r.Wall)-n:], 50),
		Agent50: Percentile(r.Agent, 50), Redirect50: Percentile(r.Redirect, 50), Start50: Percentile(r.Start, 50), Main50: Percentile(r.Main, 50),
		AgentP99: Percentile(r.Agent, 99), RedirectP99: Percentile(r.Redirect, 99),
	}
	if m := min(50, len(r.Agent)); m > 0 {
		s.AgentFirst, s.AgentLast = Percentile(r.Agent[:m], 50), Percentile(r.Agent[len(r.Agent)-m:], 50)
		s.RedirectFirst, s.RedirLast = Percentile(r.Redirect[:m], 50), Percentile(r.Redirect[len(r.Redirect)-m:], 50)
	}
	if s.First50 > 0 {
		s.Drift = float64(s.Last50)/float64(s.First50) - 1
	}
	return s
}
