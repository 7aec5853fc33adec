package evloop

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// rawEchoServer echoes, one connection at a time, with blocking system
// calls and no allocation, so a benchmark's allocation count is the
// relay's and the handler's.
func rawEchoServer(b *testing.B) netip.AddrPort {
	b.Helper()
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		b.Fatal(err)
	}
	unix.Listen(lfd, 512)
	sa, _ := unix.Getsockname(lfd)
	b.Cleanup(func() { unix.Shutdown(lfd, unix.SHUT_RDWR); unix.Close(lfd) })
	go func() {
		buf := make([]byte, 4096)
		for {
			fd, _, e := syscall.Syscall6(unix.SYS_ACCEPT4, uintptr(lfd), 0, 0, unix.SOCK_CLOEXEC, 0, 0)
			if e != 0 {
				if e == unix.EINTR {
					continue
				}
				return
			}
			for {
				n, err := syscall.Read(int(fd), buf)
				if err == unix.EINTR {
					continue
				}
				if err != nil || n <= 0 {
					break
				}
				syscall.Write(int(fd), buf[:n])
			}
			syscall.Close(int(fd))
		}
	}()
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
}

// rawDial is a blocking client socket connected to a.
func rawDial(b *testing.B, a netip.AddrPort) int {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	sa := unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())}
	if err := unix.Connect(fd, &sa); err != nil {
		b.Fatal(err)
	}
	return fd
}

func benchWorld(b *testing.B) *relayWorld {
	return newRelayWorld(b, &testHandler{upstream: rawEchoServer(b), timeout: 5 * time.Second})
}

// BenchmarkPingPong is one 128-byte message relayed each way per op, on
// one connection: the relay's per-message cost (0 allocations).
func BenchmarkPingPong(b *testing.B) {
	w := benchWorld(b)
	fd := rawDial(b, w.addr)
	defer unix.Close(fd)
	msg := make([]byte, 128)
	buf := make([]byte, 128)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		syscall.Write(fd, msg)
		for got := 0; got < len(buf); {
			n, err := syscall.Read(fd, buf[got:])
			if err != nil || n <= 0 {
				b.Fatal("read:", err)
			}
			got += n
		}
	}
}

// BenchmarkConnectionPerRequest is a new connection per op through the
// loop (accept, upstream socket and connect, one byte each way, both
// closes): the connect path. Its allocations are the test handler's one
// pair per connection; the engine's own per connection are measured in
// proxy's BenchmarkLoopAccept.
func BenchmarkConnectionPerRequest(b *testing.B) {
	w := benchWorld(b)
	one := []byte{1}
	buf := make([]byte, 1)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		fd := rawDial(b, w.addr)
		syscall.Write(fd, one)
		if n, err := syscall.Read(fd, buf); err != nil || n != 1 {
			b.Fatal("read:", err)
		}
		syscall.Close(fd)
	}
}

// BenchmarkOthersWait is what a holding loop pays each millisecond to
// decide whether to yield.
func BenchmarkOthersWait(b *testing.B) {
	l, err := New(true)
	if err != nil {
		b.Fatal(err)
	}
	defer func() { go l.Run(); l.Stop(); <-l.Done() }()
	b.ReportAllocs()
	for b.Loop() {
		l.othersWait()
	}
}
