package testworld

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// Netns is a named network namespace made for a test (/run/netns/NAME).
type Netns struct {
	Name string
	Path string
	// cgroupFD, when set, is the cgroup v2 directory the namespace's
	// processes start in (pods of an eBPF node).
	cgroupFD int
}

func uniqueName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// NewNetns creates a fresh namespace with lo up, deleted at cleanup.
func NewNetns(t T, prefix string) *Netns {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "ip")
	n := &Netns{Name: uniqueName(prefix)}
	n.Path = filepath.Join("/run/netns", n.Name)
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() { n.delete(t) })
	n.MustRun(t, "ip", "link", "set", "lo", "up")
	return n
}

// delete removes the namespace's name. A process still starting or ending
// inside it (an `ip netns exec` child keeps the bind mount busy in its own
// mount namespace for a moment) can make the first try fail; a namespace
// left behind is said in the test log, never silently kept.
func (n *Netns) delete(t T) {
	var out []byte
	var err error
	for try := 0; try < 10; try++ {
		if out, err = exec.Command("ip", "netns", "delete", n.Name).CombinedOutput(); err == nil {
			return
		}
		if _, serr := os.Stat(n.Path); os.IsNotExist(serr) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("netns %s left behind: ip netns delete: %v: %s", n.Name, err, out)
}

// Command prepares a command to run inside the namespace.
func (n *Netns) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
	if n.cgroupFD > 0 {
		// ip netns exec execs the program in its own process: same cgroup.
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: n.cgroupFD}
	}
	return cmd
}

// Run runs a command inside the namespace (bounded to a minute) and returns
// its combined output.
func (n *Netns) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// MustRun is Run that fails the test on error.
func (n *Netns) MustRun(t T, name string, args ...string) string {
	t.Helper()
	out, err := n.Run(name, args...)
	if err != nil {
		t.Fatalf("in netns %s: %s %s: %v\n%s", n.Name, name, strings.Join(args, " "), err, out)
	}
	return out
}

// Start starts a long-running command inside the namespace, logging to a file
// in the test's temp dir; it is killed at cleanup.
func (n *Netns) Start(t T, name string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), filepath.Base(name)+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	cmd := n.Command(context.Background(), name, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so Kill reaches the children (nginx workers)
	// too.
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s in %s: %v", name, n.Name, err)
	}
	t.Cleanup(func() {
		KillGroup(cmd)
		logf.Close()
	})
	return cmd
}

// KillGroup kills a command started by Start and all its children, and
// reaps it. Safe to call twice.
func KillGroup(cmd *exec.Cmd) {
	if cmd.Process == nil || cmd.ProcessState != nil {
		return
	}
	syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	cmd.Wait()
}

// Do runs f with the calling goroutine's thread inside the namespace.
func (n *Netns) Do(f func() error) error {
	return ns.WithNetNSPath(n.Path, func(ns.NetNS) error { return f() })
}

// Dial connects from inside the namespace.
func (n *Netns) Dial(addr string, timeout time.Duration) (*net.TCPConn, error) {
	var c net.Conn
	err := n.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, n.Name, err)
	}
	return c.(*net.TCPConn), nil
}

// Listen opens a TCP listener inside the namespace; accept works from any
// goroutine afterwards. Closed at cleanup.
func (n *Netns) Listen(t T, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, n.Name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// MustRunDelete deletes the namespace now (a pod whose netns vanished).
func (n *Netns) MustRunDelete(t T) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "delete", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns delete %s: %v: %s", n.Name, err, out)
	}
}
