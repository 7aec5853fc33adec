package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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
		p.cmd.Process.Signal(syscall.SIGKILL)
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
