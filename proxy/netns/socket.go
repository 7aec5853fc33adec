package netns

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
)

// ErrStranded is ConnectOnThread's error when the calling thread entered the
// pod's namespace and could not return to the host's: ConnectOnThread then
// leaves the goroutine locked to it, and the goroutine should return, so
// the runtime ends the thread instead of reusing it.
var ErrStranded = errors.New("thread could not return to the host network namespace")

// ConnectOnThread is Dial for a caller that waits for sockets itself (an
// event loop on epoll): it makes a non-blocking TCP socket inside the
// namespace, sets opts, binds src when valid (on a port other than
// opts.AvoidPort), and starts a connect to addr, returning the socket
// without waiting for the connect to finish (the socket turns writable, or
// reports an error, when it has).
//
// The calling goroutine is locked to its thread meanwhile: the thread
// enters the namespace for the socket's making alone, with raw setns calls
// that keep the goroutine's P (raw.go), and comes back before anything
// else. If it cannot come back, the error wraps ErrStranded and the
// goroutine stays locked (see ErrStranded).
func (h *Handle) ConnectOnThread(addr netip.AddrPort, src netip.Addr, opts SocketOptions) (int, error) {
	if !src.IsValid() {
		// No bind in the namespace to make: a spare will do (spare.go).
		return h.connectSpare(addr, opts)
	}
	host, err := Host()
	if err != nil {
		return -1, err
	}
	runtime.LockOSThread()
	v6 := addr.Addr().Is6() && !addr.Addr().Is4In6()
	family := syscall.AF_INET
	if v6 {
		family = syscall.AF_INET6
	}
	if err := h.enter(); err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	// Options and the source bind are made in the namespace too: binding
	// around opts.AvoidPort makes a second socket, which must be the
	// pod's as well (bind.go).
	s, err := h.socketHere(family, v6, src, opts)
	if serr := rawSetns(host.fd); serr != nil {
		if s >= 0 {
			syscall.Close(s)
		}
		return -1, fmt.Errorf("return from netns %s: %w: %w", h.path, ErrStranded, serr)
	}
	runtime.UnlockOSThread()
	if err == nil {
		err = startConnect(s, addr, v6)
	}
	if err != nil {
		if s >= 0 {
			syscall.Close(s)
		}
		return -1, fmt.Errorf("connect %s in netns %s: %w", addr, h.path, err)
	}
	return s, nil
}

// connectSpare is ConnectOnThread without a source address.
func (h *Handle) connectSpare(addr netip.AddrPort, opts SocketOptions) (int, error) {
	v6 := addr.Addr().Is6() && !addr.Addr().Is4In6()
	s, err := h.spareSocket(v6)
	if err != nil {
		return -1, err
	}
	if err = h.setUp(s, v6, netip.Addr{}, opts); err == nil {
		err = startConnect(s, addr, v6)
	}
	if err != nil {
		syscall.Close(s)
		return -1, fmt.Errorf("connect %s in netns %s: %w", addr, h.path, err)
	}
	return s, nil
}

// socketHere makes the socket in the thread's namespace, sets opts and
// TCP_NODELAY and binds src when valid; on error the socket, if made, is
// returned with it for the caller to close.
func (h *Handle) socketHere(family int, v6 bool, src netip.Addr, opts SocketOptions) (int, error) {
	fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if e != 0 {
		return -1, fmt.Errorf("socket: %w", e)
	}
	s := int(fd)
	return s, h.setUp(s, v6, src, opts)
}

// setUp sets opts and TCP_NODELAY on s and binds src when valid.
func (h *Handle) setUp(s int, v6 bool, src netip.Addr, opts SocketOptions) error {
	if err := opts.apply(s, v6); err != nil {
		return err
	}
	// Go's dialer sets it too: small messages leave at once.
	if err := rawSetsockoptInt(s, syscall.IPPROTO_TCP, syscall.TCP_NODELAY, 1); err != nil {
		return fmt.Errorf("set TCP_NODELAY: %w", err)
	}
	if src.IsValid() {
		return bindSource(s, src, opts.AvoidPort, v6, opts)
	}
	return nil
}

// ConnectFailed cleans up after a connect ConnectOnThread started failed
// with err: one that got no answer leaves a conntrack entry that would
// keep a later app connection with the same four-tuple out of capture
// (conntrack.go). It talks netlink, so an event loop calls it on another
// goroutine.
func (h *Handle) ConnectFailed(addr netip.AddrPort, err error) {
	if !answeredOrRefused(err) {
		h.forgetUnanswered(addr)
	}
}
