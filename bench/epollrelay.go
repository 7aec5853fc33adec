package bench

import (
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// epollRelayMain is the go-epoll peer: an L4 relay written in Go the way
// nginx's stream module is written in C, to measure how close Go itself
// can come to nginx stream's CPU per connection on this machine (issue
// 17). Each of -workers workers is a goroutine locked to its thread with
// its own SO_REUSEPORT listeners and its own edge-triggered epoll, and
// makes only raw system calls: accept4 until EAGAIN, a non-blocking
// socket and connect upstream, one EPOLL_CTL_ADD per socket for its whole
// life, recv until a short read unless EPOLLRDHUP says a FIN is queued,
// send, shutdown, close. No Go poller, no goroutine per connection, no
// hand-off between threads, no allocation per message. It is a bench
// peer, not weir: it does no balancing, metrics or takeover.
//
// With -hold the workers wait in epoll_wait without telling the runtime
// (a raw system call), so each keeps its P and no other thread wakes for
// it; without it the wait is an ordinary blocking system call, and the
// runtime may hand the P to another thread while the worker sleeps.
//
// With -weir-calls each connection also makes the system calls weir's
// capture needs and nginx's does not: SO_ORIGINAL_DST on the accepted
// socket, a setns into the pod's namespace and back around the upstream
// socket (here into the namespace the relay already runs in, which costs
// the kernel the same), and SO_MARK on it. That is the floor of weir's L4
// path rebuilt on these loops.
func epollRelayMain(args []string) error {
	fs := flag.NewFlagSet("epoll-relay", flag.ContinueOnError)
	workers := fs.Int("workers", 2, "event-loop threads, each with its own listeners and epoll")
	hold := fs.Bool("hold", false, "wait in epoll_wait as a raw system call, keeping the P")
	weirCalls := fs.Bool("weir-calls", false, "also make weir's per-connection system calls: SO_ORIGINAL_DST, setns into the pod namespace and back, SO_MARK")
	var pairs [][2]netip.AddrPort
	fs.Func("pair", "LISTEN=UPSTREAM (repeatable)", func(s string) error {
		l, u, ok := strings.Cut(s, "=")
		if !ok {
			return fmt.Errorf("want LISTEN=UPSTREAM, got %q", s)
		}
		la, err := netip.ParseAddrPort(l)
		if err != nil {
			return err
		}
		ua, err := netip.ParseAddrPort(u)
		if err != nil {
			return err
		}
		if !la.Addr().Is4() || !ua.Addr().Is4() {
			return fmt.Errorf("IPv4 only: %q", s)
		}
		pairs = append(pairs, [2]netip.AddrPort{la, ua})
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(pairs) == 0 {
		return errors.New("need at least one -pair")
	}
	if *workers < 1 || *workers > 64 {
		return fmt.Errorf("-workers: want 1..64, got %d", *workers)
	}
	if *hold {
		// Each worker keeps a P while it waits; one more for the rest.
		runtime.GOMAXPROCS(*workers + 1)
	}
	errc := make(chan error, *workers)
	for i := 0; i < *workers; i++ {
		w, err := newEpollWorker(pairs, *hold)
		if err != nil {
			return err
		}
		if *weirCalls {
			if w.netns, err = unix.Open("/proc/self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
				return fmt.Errorf("open own netns: %w", err)
			}
		}
		go func() { errc <- w.run() }()
	}
	return <-errc
}

// epollSide is one socket of a relayed pair.
type epollSide struct {
	fd int
	// pending is what was read from the other side and could not be
	// written here yet (EAGAIN or a connect still in progress).
	pending []byte
	// eof: this side sent its FIN (read returned 0), which was passed on.
	eof bool
}

type epollPair struct {
	side [2]epollSide // 0: the client, 1: the upstream
}

type epollWorker struct {
	ep        int
	hold      bool
	netns     int                    // with -weir-calls: the namespace to enter around each upstream socket; else 0
	listeners map[int]netip.AddrPort // listening fd → upstream
	conns     map[int]*epollPair
	buf       []byte
	events    []unix.EpollEvent
}

func newEpollWorker(pairs [][2]netip.AddrPort, hold bool) (*epollWorker, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	w := &epollWorker{ep: ep, hold: hold, listeners: map[int]netip.AddrPort{}, conns: map[int]*epollPair{},
		buf: make([]byte, 16<<10), events: make([]unix.EpollEvent, 128)}
	for _, p := range pairs {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		for _, o := range []int{unix.SO_REUSEADDR, unix.SO_REUSEPORT} {
			if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, 1); err != nil {
				return nil, err
			}
		}
		// Accepted sockets inherit TCP_NODELAY.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1); err != nil {
			return nil, err
		}
		if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: p[0].Addr().As4(), Port: int(p[0].Port())}); err != nil {
			return nil, fmt.Errorf("bind %s: %w", p[0], err)
		}
		if err := unix.Listen(fd, 8192); err != nil {
			return nil, err
		}
		if err := w.add(fd, unix.EPOLLIN); err != nil {
			return nil, err
		}
		w.listeners[fd] = p[1]
	}
	return w, nil
}

func (w *epollWorker) add(fd int, events uint32) error {
	ev := unix.EpollEvent{Events: events | unix.EPOLLET, Fd: int32(fd)}
	return unix.EpollCtl(w.ep, unix.EPOLL_CTL_ADD, fd, &ev)
}

func (w *epollWorker) wait() (int, error) {
	var n uintptr
	var errno syscall.Errno
	p := &w.events[0]
	if w.hold {
		// A bounded wait, so that a stop-the-world finds this goroutine
		// back in Go code soon.
		n, _, errno = syscall.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(w.ep), uintptr(unsafe.Pointer(p)), uintptr(len(w.events)), 100, 0, 0)
	} else {
		n, _, errno = syscall.Syscall6(unix.SYS_EPOLL_WAIT, uintptr(w.ep), uintptr(unsafe.Pointer(p)), uintptr(len(w.events)), 1000, 0, 0)
	}
	if errno != 0 {
		return 0, errno
	}
	return int(n), nil
}

func (w *epollWorker) run() error {
	runtime.LockOSThread()
	for {
		n, err := w.wait()
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("epoll_wait: %w", err)
		}
		for i := 0; i < n; i++ {
			ev := w.events[i]
			fd := int(ev.Fd)
			if up, ok := w.listeners[fd]; ok {
				w.accept(fd, up)
				continue
			}
			if p, ok := w.conns[fd]; ok {
				w.handle(p, fd, ev.Events)
			}
		}
	}
}

// accept takes every pending connection (nginx's multi_accept) and
// connects each upstream.
func (w *epollWorker) accept(lfd int, up netip.AddrPort) {
	for {
		cfd, _, err := unix.Accept4(lfd, unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
		if err != nil {
			return // EAGAIN, or an error nginx would log and skip
		}
		if w.netns != 0 {
			// weir reads where the pod was going: under REDIRECT this is
			// the conntrack lookup (here it finds no NAT and fails, after
			// the same lookup).
			var sa [16]byte // a sockaddr_in, as proxy/origdst asks
			n := uint32(len(sa))
			unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(cfd), unix.IPPROTO_IP, unix.SO_ORIGINAL_DST,
				uintptr(unsafe.Pointer(&sa[0])), uintptr(unsafe.Pointer(&n)), 0)
			unix.Setns(w.netns, unix.CLONE_NEWNET)
		}
		ufd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
		if w.netns != 0 {
			unix.Setns(w.netns, unix.CLONE_NEWNET) // and back to the agent's
		}
		if err != nil {
			unix.Close(cfd)
			continue
		}
		if w.netns != 0 {
			unix.SetsockoptInt(ufd, unix.SOL_SOCKET, unix.SO_MARK, 0x100)
		}
		unix.SetsockoptInt(ufd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
		if err := unix.Connect(ufd, &unix.SockaddrInet4{Addr: up.Addr().As4(), Port: int(up.Port())}); err != nil && err != unix.EINPROGRESS {
			unix.Close(cfd)
			unix.Close(ufd)
			continue
		}
		p := &epollPair{side: [2]epollSide{{fd: cfd}, {fd: ufd}}}
		all := uint32(unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP)
		if w.add(cfd, all) != nil || w.add(ufd, all) != nil {
			unix.Close(cfd)
			unix.Close(ufd)
			continue
		}
		w.conns[cfd], w.conns[ufd] = p, p
		// The client may have sent already, its FIN too; the edges for
		// that came before the registration, so read until EAGAIN.
		w.pump(p, 0, drainAll)
	}
}

func (w *epollWorker) handle(p *epollPair, fd int, events uint32) {
	i := 0
	if p.side[1].fd == fd {
		i = 1
	}
	if events&(unix.EPOLLERR) != 0 {
		w.close(p)
		return
	}
	if events&unix.EPOLLOUT != 0 && len(p.side[i].pending) > 0 {
		drained, open := w.flush(p, i)
		if !open {
			return
		}
		// Room again: what the other side held back can come now, read
		// until EAGAIN: a FIN that came meanwhile raised its edge while
		// nothing was read.
		if drained && !w.pump(p, 1-i, drainAll) {
			return
		}
	}
	if events&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP) != 0 {
		w.pump(p, i, events)
	}
}

// drainAll makes pump read until EAGAIN or EOF, as if EPOLLRDHUP were set.
const drainAll = unix.EPOLLIN | unix.EPOLLRDHUP

// pump reads side from and writes to the other until a short read (or
// EOF when the event says a FIN is queued), EAGAIN, or the other side
// cannot take more. It returns false if the pair was closed.
func (w *epollWorker) pump(p *epollPair, from int, events uint32) bool {
	src, dst := &p.side[from], &p.side[1-from]
	for !src.eof && len(dst.pending) == 0 {
		n, err := unix.Read(src.fd, w.buf)
		if err == unix.EAGAIN {
			return true
		}
		if err != nil {
			w.close(p)
			return false
		}
		if n == 0 {
			src.eof = true
			unix.Shutdown(dst.fd, unix.SHUT_WR)
			if dst.eof {
				w.close(p)
				return false
			}
			return true
		}
		m, err := unix.Write(dst.fd, w.buf[:n])
		if err != nil && err != unix.EAGAIN {
			w.close(p)
			return false
		}
		if m < 0 {
			m = 0
		}
		if m < n {
			dst.pending = append(dst.pending[:0], w.buf[m:n]...)
			return true
		}
		if n < len(w.buf) && events&(unix.EPOLLRDHUP|unix.EPOLLHUP) == 0 {
			return true // drained; the next edge says when there is more
		}
	}
	return true
}

// flush writes side i's pending bytes. drained: none remain; open: the
// pair was not closed.
func (w *epollWorker) flush(p *epollPair, i int) (drained, open bool) {
	s := &p.side[i]
	m, err := unix.Write(s.fd, s.pending)
	if err != nil && err != unix.EAGAIN {
		w.close(p)
		return false, false
	}
	if m > 0 {
		s.pending = s.pending[:copy(s.pending, s.pending[m:])]
	}
	if len(s.pending) > 0 {
		return false, true
	}
	if p.side[1-i].eof {
		unix.Shutdown(s.fd, unix.SHUT_WR)
	}
	return true, true
}

func (w *epollWorker) close(p *epollPair) {
	for _, s := range p.side {
		delete(w.conns, s.fd)
		unix.Close(s.fd)
	}
}
