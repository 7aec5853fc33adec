package netns

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// bindSource binds fd to src on a port the kernel picks that is not avoid
// (0: any port).
//
// Why a port must be avoided: a TPROXY inbound connect binds the client's
// own address in the pod's namespace, where the accepted socket of that
// client's connection lives too. Bound to the client's port as well, the
// upstream socket's four-tuple is the accepted socket's reversed: its SYN
// is delivered to the accepted socket, whose challenge ACK draws a reset
// that kills the client's connection. The kernel's pick cannot know (it
// checks bound ports and its own four-tuple, not the reversed one), so a
// pick equal to avoid is replaced: a second socket is bound while fd still
// holds that port, so the kernel gives it another, and it takes fd's place
// (dup3: fd's number, which Go's dialer holds, now names it).
func bindSource(fd int, src netip.Addr, avoid uint16, v6 bool, opts SocketOptions) error {
	sa := sockaddrOf(src, v6)
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind %s: %w", src, err)
	}
	if avoid == 0 {
		return nil
	}
	if port, err := boundPort(fd); err != nil || port != avoid {
		return err
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil {
		return fmt.Errorf("socket domain: %w", err)
	}
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	if err != nil {
		return fmt.Errorf("socket protocol: %w", err)
	}
	spare, err := unix.Socket(domain, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, proto)
	if err != nil {
		return fmt.Errorf("second socket to avoid port %d: %w", avoid, err)
	}
	defer unix.Close(spare)
	if err := opts.apply(spare, v6); err != nil {
		return err
	}
	if err := unix.Bind(spare, sa); err != nil {
		return fmt.Errorf("bind %s avoiding port %d: %w", src, avoid, err)
	}
	if err := unix.Dup3(spare, fd, unix.O_CLOEXEC); err != nil {
		return fmt.Errorf("replace the socket bound to port %d: %w", avoid, err)
	}
	return nil
}

// sockaddrOf is src with port 0, in the family of the socket (v6: an IPv4
// source on an IPv6 socket is v4-mapped).
func sockaddrOf(src netip.Addr, v6 bool) unix.Sockaddr {
	if v6 {
		return &unix.SockaddrInet6{Addr: src.As16()}
	}
	return &unix.SockaddrInet4{Addr: src.Unmap().As4()}
}

// boundPort is the local port fd is bound to.
func boundPort(fd int) (uint16, error) {
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return 0, fmt.Errorf("getsockname: %w", err)
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return uint16(a.Port), nil
	case *unix.SockaddrInet6:
		return uint16(a.Port), nil
	}
	return 0, fmt.Errorf("getsockname: not an IP socket")
}
