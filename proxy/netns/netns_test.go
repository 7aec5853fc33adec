package netns

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// newNetns makes a throwaway namespace with lo up (root only).
func newNetns(t testing.TB) *Handle {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true: failing instead of skipping)")
		}
		t.Skip("needs root")
	}
	name := "weir-nstest-" + t.Name()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v %s", err, out)
	}
	h, err := Open("/run/netns/" + name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// greetingListener listens in h and writes "hi" to the first connection
// it accepts.
func greetingListener(t *testing.T, h *Handle, opts SocketOptions) net.Listener {
	t.Helper()
	ln, err := h.Listen(netip.MustParseAddrPort("127.0.0.1:0"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte("hi"))
			c.Close()
		}
	}()
	return ln
}

func threadNetns(t *testing.T) ID {
	id, err := IDOf("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// Listen and Dial make their sockets in the namespace, set the options, and
// leave the calling thread where it was.
func TestListenDialStayOnHost(t *testing.T) {
	h := newNetns(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadNetns(t)
	if before == h.ID() {
		t.Fatal("test runs inside the namespace it made")
	}
	ln := greetingListener(t, h, SocketOptions{ReusePort: true})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.Dial(ctx, ln.Addr().(*net.TCPAddr).AddrPort(), netip.Addr{}, SocketOptions{Mark: 0x5700})
	if err != nil {
		t.Fatalf("dial inside the namespace: %v", err)
	}
	defer c.Close()
	if after := threadNetns(t); after != before {
		t.Fatalf("calling thread left in netns %v, was %v", after, before)
	}
	rc, _ := c.SyscallConn()
	var mark int
	rc.Control(func(fd uintptr) { mark, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if mark != 0x5700 {
		t.Fatalf("SO_MARK %#x, want 0x5700", mark)
	}
	b := make([]byte, 2)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(b); err != nil || string(b) != "hi" {
		t.Fatalf("read %q %v", b, err)
	}
	// The host's loopback does not have this listener: the socket really
	// was made in the pod namespace.
	if hc, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		hc.Close()
		t.Fatal("the namespace's listener is reachable from the host namespace")
	}
}

// A failed dial (nothing listens) also leaves the thread on the host.
func TestDialFailureStaysOnHost(t *testing.T) {
	h := newNetns(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := h.Dial(ctx, netip.MustParseAddrPort("127.0.0.1:1"), netip.Addr{}, SocketOptions{}); err == nil {
		c.Close()
		t.Fatal("dial to a closed port succeeded")
	}
	if after := threadNetns(t); after != before {
		t.Fatalf("calling thread left in netns %v after a failed dial", after)
	}
}

// Open and Inspect take network namespaces only; everything else is a
// *NotNetnsError naming the path and what it is.
func TestOpenRefusesWhatIsNoNetns(t *testing.T) {
	id, err := Inspect("/proc/self/ns/net")
	if err != nil {
		t.Fatalf("own network namespace: %v", err)
	}
	if want, _ := IDOf("/proc/self/ns/net"); id != want {
		t.Fatalf("Inspect %v, IDOf %v", id, want)
	}
	dir := t.TempDir()
	file := dir + "/plain"
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, is string }{
		{"/proc/self/ns/mnt", "a mount namespace"},
		{"/proc/self/ns/uts", "a UTS namespace"},
		{file, "a file that is no namespace"},
		{"/proc/self/status", "a file that is no namespace"},
		{dir, "a directory"},
		{"/dev/null", "a device"},
	} {
		t.Run(tc.path, func(t *testing.T) {
			h, err := Open(tc.path)
			if err == nil {
				h.Close()
				t.Fatal("opened as a network namespace")
			}
			var ne *NotNetnsError
			if !errors.As(err, &ne) || ne.Is != tc.is || !strings.Contains(err.Error(), tc.path) {
				t.Fatalf("error %v (%T), want a NotNetnsError naming %s as %q", err, err, tc.path, tc.is)
			}
			if _, err := Inspect(tc.path); !errors.As(err, &ne) {
				t.Fatalf("Inspect: %v, want a NotNetnsError", err)
			}
		})
	}
	if _, err := Inspect(dir + "/missing"); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing path: %v, want not-exist", err)
	}
}

// The Control hook starts the connect (connect.go): a dial reports the
// right addresses for both families, with and without a bound source, and
// the kernel's errors come back as Go's own connect would return them.
func TestDialConnectsFromHook(t *testing.T) {
	h := newNetns(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name   string
		listen string
		src    netip.Addr // set: Go binds it, and the hook leaves the connect to Go
	}{
		{"v4", "127.0.0.1:0", netip.Addr{}},
		{"v6", "[::1]:0", netip.Addr{}},
		{"v4 bound source", "127.0.0.1:0", netip.MustParseAddr("127.0.0.1")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := h.Listen(netip.MustParseAddrPort(tc.listen), SocketOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			addr := ln.Addr().(*net.TCPAddr).AddrPort()
			c, err := h.Dial(ctx, addr, tc.src, SocketOptions{Mark: 0x5700})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.AcceptTCP()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if got := c.RemoteAddr().(*net.TCPAddr).AddrPort(); got != addr {
				t.Fatalf("remote address %v, want %v", got, addr)
			}
			if got, want := c.LocalAddr().(*net.TCPAddr).AddrPort(), s.RemoteAddr().(*net.TCPAddr).AddrPort(); got != want {
				t.Fatalf("local address %v, the server saw %v", got, want)
			}
			if _, err := c.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 1)
			s.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := s.Read(b); err != nil || b[0] != 'x' {
				t.Fatalf("server read %q %v", b, err)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		_, err := h.Dial(ctx, netip.MustParseAddrPort("127.0.0.1:1"), netip.Addr{}, SocketOptions{})
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatalf("dial to a closed port: %v, want ECONNREFUSED", err)
		}
	})
	t.Run("unreachable", func(t *testing.T) {
		// The namespace has only lo: no route, reported by the hook's connect.
		_, err := h.Dial(ctx, netip.MustParseAddrPort("192.0.2.1:80"), netip.Addr{}, SocketOptions{})
		if !errors.Is(err, syscall.ENETUNREACH) {
			t.Fatalf("dial without a route: %v, want ENETUNREACH", err)
		}
	})
}
