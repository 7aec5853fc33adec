package netns

import (
	"errors"
	"net"
	"net/netip"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// ConnectOnThread makes its socket in the namespace with the options and
// TCP_NODELAY, starts the connect and leaves the thread on the host.
func TestConnectOnThread(t *testing.T) {
	h := newNetns(t)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before := threadNetns(t)
	ln := greetingListener(t, h, SocketOptions{})
	fd, err := h.ConnectOnThread(ln.Addr().(*net.TCPAddr).AddrPort(), netip.Addr{}, SocketOptions{Mark: 0x5700})
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if after := threadNetns(t); after != before {
		t.Fatalf("thread left in netns %v, was %v", after, before)
	}
	if mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); mark != 0x5700 {
		t.Fatalf("SO_MARK %#x", mark)
	}
	if nd, _ := unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY); nd != 1 {
		t.Fatal("TCP_NODELAY not set")
	}
	// Non-blocking: wait for the answer by hand.
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, err := unix.Poll(pfd, 5000); err != nil || n != 1 {
		t.Fatalf("poll: %d %v", n, err)
	}
	b := make([]byte, 2)
	if n, err := unix.Read(fd, b); err != nil || string(b[:n]) != "hi" {
		t.Fatalf("read %q %v", b[:n], err)
	}

	// Nothing listens: the connect fails later (refused), on the socket.
	fd2, err := h.ConnectOnThread(netip.MustParseAddrPort("127.0.0.1:1"), netip.Addr{}, SocketOptions{})
	if err != nil {
		t.Fatalf("a refused connect should be reported on the socket, got %v at once", err)
	}
	defer unix.Close(fd2)
	pfd = []unix.PollFd{{Fd: int32(fd2), Events: unix.POLLOUT}}
	unix.Poll(pfd, 5000)
	if e, _ := unix.GetsockoptInt(fd2, unix.SOL_SOCKET, unix.SO_ERROR); e != int(unix.ECONNREFUSED) {
		t.Fatalf("SO_ERROR %d, want ECONNREFUSED", e)
	}
	if after := threadNetns(t); after != before {
		t.Fatal("thread left in the namespace after a refused connect")
	}
}

// BenchmarkConnectOnThread is the event loops' upstream connect: socket
// made in the pod namespace on a locked thread, mark, connect, close.
// Against BenchmarkDial: no poller registration, no goroutine hand-off.
func BenchmarkConnectOnThread(b *testing.B) {
	h := newNetns(b)
	addr := closingListener(b, h)
	opts := SocketOptions{Mark: 0x539}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	pfd := make([]unix.PollFd, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		fd, err := h.ConnectOnThread(addr, netip.Addr{}, opts)
		if err != nil {
			b.Fatal(err)
		}
		pfd[0] = unix.PollFd{Fd: int32(fd), Events: unix.POLLOUT}
		unix.Poll(pfd, 1000)
		unix.Close(fd)
	}
}

// Sockets without a source address come from the namespace's stock, made
// spareBatch at a time there; every one of them is the namespace's, and
// Close closes the stock.
func TestConnectOnThreadSpares(t *testing.T) {
	h := newNetns(t)
	ln := greetingListener(t, h, SocketOptions{})
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	for i := range spareBatch + 2 {
		fd, err := h.ConnectOnThread(addr, netip.Addr{}, SocketOptions{Mark: 0x5700})
		if err != nil {
			t.Fatal(err)
		}
		// The listener is on the namespace's loopback: a host socket
		// would be refused.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		if n, err := unix.Poll(pfd, 5000); err != nil || n != 1 {
			t.Fatalf("connect %d: poll %d %v", i, n, err)
		}
		b := make([]byte, 2)
		if n, err := unix.Read(fd, b); err != nil || string(b[:n]) != "hi" {
			t.Fatalf("connect %d: read %q %v", i, b[:n], err)
		}
		if mark, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK); mark != 0x5700 {
			t.Fatalf("connect %d: SO_MARK %#x", i, mark)
		}
		unix.Close(fd)
		want := (spareBatch - 1 - i%spareBatch)
		if got := h.spares.count(false); got != want {
			t.Fatalf("after connect %d: %d spares, want %d", i, got, want)
		}
	}
	if n := h.spares.count(true); n != 0 {
		t.Fatalf("%d IPv6 spares, none asked for", n)
	}
	stock := append([]int(nil), h.spares.fds[0]...)
	h.Close()
	for _, fd := range stock {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Fatalf("spare %d still open after Close (%v)", fd, err)
		}
	}
	if fd := h.spares.take(false); fd != -1 {
		t.Fatalf("a closed handle gave spare %d", fd)
	}
	if _, err := h.ConnectOnThread(addr, netip.Addr{}, SocketOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("connect through a closed handle: %v, want ErrClosed", err)
	}
	if _, err := h.ConnectOnThread(addr, netip.MustParseAddr("127.0.0.2"), SocketOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("connect with a source through a closed handle: %v, want ErrClosed", err)
	}
}

// TestSparesBounded: two batches made at once (two loops that found the
// stock empty) leave at most spareBatch-1 in stock; the rest are closed.
func TestSparesBounded(t *testing.T) {
	var s spares
	batch := func() []int {
		fds := make([]int, spareBatch-1)
		for i := range fds {
			fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			fds[i] = fd
		}
		return fds
	}
	first, second := batch(), batch()
	s.put(false, first)
	s.put(false, second)
	if n := s.count(false); n != spareBatch-1 {
		t.Fatalf("%d in stock, want %d", n, spareBatch-1)
	}
	for _, fd := range second {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Fatalf("surplus spare %d still open (%v)", fd, err)
		}
	}
	s.close()
}
