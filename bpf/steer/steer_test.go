package steer

import (
	"context"
	"net"
	"os"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("missing prerequisite (CI=true, so this fails instead of skipping): root privileges")
	}
	t.Skip("missing prerequisite: root privileges")
}

// inNetns runs f on a thread moved into a new, empty network namespace with
// its loopback up; the thread is dropped afterwards (never returned to the
// pool), so nothing else runs there and the namespace dies with it.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		// f reports with t.Error only (t.Fatal must stay on the test's
		// goroutine); done is sent whatever happens.
		var err error
		defer func() { done <- err }()
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err = unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return
		}
		var lo netlink.Link
		if lo, err = netlink.LinkByName("lo"); err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err == nil {
			f()
		}
	}()
	if err := <-done; err != nil {
		t.Fatalf("test netns: %v", err)
	}
}

// listen joins the reuseport group of 127.0.0.1:15001; nil (and the test
// marked failed) if it cannot.
func listen(t *testing.T, mptcp bool) *net.TCPListener {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	lc.SetMultipathTCP(mptcp)
	ln, err := lc.Listen(context.Background(), "tcp4", "127.0.0.1:15001")
	if err != nil {
		t.Errorf("listen: %v", err)
		return nil
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

// spread dials n connections and counts how many each listener accepted.
func spread(t *testing.T, n int, lns ...*net.TCPListener) []int {
	t.Helper()
	var conns []net.Conn
	for range n {
		c, err := net.DialTimeout("tcp4", "127.0.0.1:15001", time.Second)
		if err != nil {
			t.Errorf("dial: %v", err)
			continue
		}
		conns = append(conns, c)
	}
	counts := make([]int, len(lns))
	for i, ln := range lns {
		for {
			ln.SetDeadline(time.Now().Add(100 * time.Millisecond))
			c, err := ln.Accept()
			if err != nil {
				break
			}
			c.Close()
			counts[i]++
		}
	}
	for _, c := range conns {
		c.Close()
	}
	return counts
}

// The program sends every connection to the group's first socket, and to
// the next one the moment the first closes; a socket joining later comes
// after the survivor. The first socket may be MPTCP (the Go default for
// listeners) while the steering one is plain TCP.
func TestToFirst(t *testing.T) {
	requireRoot(t)
	for _, mptcp := range []bool{false, true} {
		inNetns(t, func() {
			primary := listen(t, mptcp)
			standby := listen(t, false)
			if primary == nil || standby == nil {
				return
			}
			if err := ToFirst(standby); err != nil {
				t.Error(err)
				return
			}
			if got := spread(t, 40, primary, standby); got[0] != 40 || got[1] != 0 {
				t.Errorf("mptcp=%v: primary/standby accepted %v, want [40 0]", mptcp, got)
			}
			primary.Close()
			if got := spread(t, 40, standby); got[0] != 40 {
				t.Errorf("mptcp=%v: after the primary closed the standby accepted %d of 40", mptcp, got[0])
			}
			next := listen(t, false)
			if next == nil {
				return
			}
			if err := ToFirst(next); err != nil {
				t.Error(err)
				return
			}
			if got := spread(t, 40, standby, next); got[0] != 40 || got[1] != 0 {
				t.Errorf("mptcp=%v: promoted/new standby accepted %v, want [40 0]", mptcp, got)
			}
			standby.Close()
			next.Close()
		})
	}
}

// Without the program the kernel's hash spreads connections over the group:
// the control that shows the test above measures the program, not luck.
func TestWithoutProgramHashSpreads(t *testing.T) {
	requireRoot(t)
	inNetns(t, func() {
		a, b := listen(t, false), listen(t, false)
		if a == nil || b == nil {
			return
		}
		if got := spread(t, 60, a, b); got[0] == 0 || got[1] == 0 {
			t.Errorf("without steering one listener got nothing: %v", got)
		}
		a.Close()
		b.Close()
	})
}
