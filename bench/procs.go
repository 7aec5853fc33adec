package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// proc is a long-running program the bench started inside a namespace (a
// server or a peer proxy). Unlike testworld's Start it watches for the
// process ending, so a proxy that died mid-run fails the next cell with a
// message saying so, instead of as a puzzling "connection refused".
type proc struct {
	name string
	cmd  *exec.Cmd
	// logs are files worth showing when the process died: its output, and
	// its own error log when it keeps one.
	logs []string
	done chan struct{}
	err  error
}

// startProc starts prog in n, logging to a file; it is killed at cleanup.
func (w *world) startProc(n *testworld.Netns, name string, extraLogs []string, prog string, args ...string) *proc {
	t := w.t
	t.Helper()
	out := filepath.Join(t.TempDir(), name+".out")
	logf, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{name: name, logs: append([]string{out}, extraLogs...), done: make(chan struct{})}
	p.cmd = n.Command(context.Background(), prog, args...)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	// Its own process group, so cleanup also kills the children (nginx's
	// workers outlive a killed master otherwise). Keep what Command set: on
	// an eBPF node that is the pod's cgroup, without which the node's
	// programs never see the process's sockets (a server pod's listener
	// would look like one on another node).
	if p.cmd.SysProcAttr == nil {
		p.cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	p.cmd.SysProcAttr.Setpgid = true
	if err := p.cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("start %s (%s) in %s: %v", name, prog, n.Name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
		}
	})
	w.procs = append(w.procs, p)
	return p
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// check returns an error if the process has ended, with the tail of its logs.
func (p *proc) check() error {
	select {
	case <-p.done:
	default:
		return nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s (pid %d) is gone: %v", p.name, p.pid(), p.err)
	for _, l := range p.logs {
		if data, err := os.ReadFile(l); err == nil && len(data) > 0 {
			fmt.Fprintf(&b, "\n--- %s:\n%s", filepath.Base(l), tail(string(data), 8))
		}
	}
	return fmt.Errorf("%s", b.String())
}

func tail(s string, lines int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// watchRules records every nftables change inside a captured pod with
// `nft monitor`, which names the process that made each change ("# new
// generation N by process PID (comm)"). After capture nothing in the bench
// touches those rules, so any change is news: the agent repairing them, or
// something else removing them. Best effort: without nft, nothing is watched.
func (w *world) watchRules(p *testworld.Pod) {
	if _, err := exec.LookPath("nft"); err != nil {
		return
	}
	pr := w.startProc(p.Netns, "nft monitor in "+p.Name, nil, "nft", "monitor")
	if w.ruleWatches == nil {
		w.ruleWatches = map[string]string{}
	}
	w.ruleWatches[p.Namespace+"/"+p.Name] = pr.logs[0]
	done := make(chan struct{})
	w.t.Cleanup(func() { close(done) })
	go resolveChangers(pr.logs[0], pr.logs[0]+".who", done)
}

var generationBy = regexp.MustCompile(`new generation \d+ by process (\d+)`)

// resolveChangers follows an `nft monitor` log and, for each generation
// line, appends the process's command line and its parents' to whoLog, as
// fast as it can: iptables exits right after its commit.
func resolveChangers(monLog, whoLog string, done chan struct{}) {
	seen := 0
	for {
		select {
		case <-done:
			return
		case <-time.After(5 * time.Millisecond):
		}
		b, err := os.ReadFile(monLog)
		if err != nil {
			continue
		}
		lines := strings.Split(string(b), "\n")
		for _, line := range lines[min(seen, len(lines)):] {
			m := generationBy.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			pid, _ := strconv.Atoi(m[1])
			var chain []string
			for depth := 0; pid > 1 && depth < 5; depth++ {
				cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if len(cmd) == 0 {
					chain = append(chain, fmt.Sprintf("%d (gone)", pid))
					break
				}
				chain = append(chain, fmt.Sprintf("%d %s", pid, strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))))
				stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
				i := strings.LastIndexByte(string(stat), ')')
				if i < 0 {
					break
				}
				f := strings.Fields(string(stat[i+1:]))
				if len(f) < 2 {
					break
				}
				pid, _ = strconv.Atoi(f[1])
			}
			if f, err := os.OpenFile(whoLog, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644); err == nil {
				fmt.Fprintf(f, "%s <- %s\n", strings.TrimSpace(line), strings.Join(chain, " <- "))
				f.Close()
			}
		}
		if n := len(lines) - 1; n > seen {
			seen = n
		}
	}
}

// ruleChanges returns the generation lines `nft monitor` logged per pod.
func (w *world) ruleChanges() []string {
	var out []string
	for pod, log := range w.ruleWatches {
		// Prefer the resolved lines (with command lines); fall back to the
		// monitor's own.
		b, err := os.ReadFile(log + ".who")
		if err != nil {
			b, err = os.ReadFile(log)
		}
		if err != nil {
			continue // nothing changed: the monitor printed nothing
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, "new generation") {
				out = append(out, pod+": "+strings.TrimSpace(line))
			}
		}
	}
	return out
}
