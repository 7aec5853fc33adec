// Package origdst recovers where a captured connection was going before the
// kernel redirected it to the agent.
//
// Under iptables REDIRECT the destination was rewritten by conntrack, so it is
// read back with SO_ORIGINAL_DST (IPv4) or IP6T_SO_ORIGINAL_DST (IPv6). Under
// TPROXY nothing was rewritten: the accepted socket's local address is the
// original destination. Under eBPF capture the kernel recorded the
// destination in a map before the connect was rewritten (FromMap); there is
// no fake getsockopt.
package origdst

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"
)

// soOriginalDst is SO_ORIGINAL_DST from linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST
// has the same value at level SOL_IPV6.
const soOriginalDst = 80

// Redirected returns the pre-NAT destination of a connection accepted from a
// REDIRECT rule. The socket's family decides which option is asked.
func Redirected(c *net.TCPConn) (netip.AddrPort, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return netip.AddrPort{}, err
	}
	local, _ := c.LocalAddr().(*net.TCPAddr)
	v6 := local != nil && local.IP.To4() == nil
	var (
		ap   netip.AddrPort
		gerr error
	)
	if err := rc.Control(func(fd uintptr) { ap, gerr = RedirectedFD(int(fd), v6) }); err != nil {
		return netip.AddrPort{}, err
	}
	return ap, gerr
}

// Local returns the accepted socket's local address: the original destination
// under TPROXY, where nothing was rewritten.
func Local(c *net.TCPConn) (netip.AddrPort, error) {
	a, ok := c.LocalAddr().(*net.TCPAddr)
	if !ok || a == nil {
		return netip.AddrPort{}, fmt.Errorf("no local address")
	}
	ap := a.AddrPort()
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// Map is the eBPF capture's record, seen from one pod's listeners (the
// agent implements it over bpf/capture's maps).
type Map interface {
	// Lookup returns where the connection from client (the accepted
	// socket's peer) was going, and what the kernel learnt of the accepted
	// socket's acceleration while it was being established.
	Lookup(client netip.AddrPort) (netip.AddrPort, Accel, error)
	// TagClient marks the upstream socket fd, before it connects to the
	// app, with the client the app must see as its peer.
	TagClient(fd int, client netip.AddrPort) error
}

// Accel is what an eBPF record says of the accepted socket's acceleration
// (the sockhash whose sockets must never be spliced from). Knowing it with
// the destination spares the engine a system call or two per connection
// (a netns cookie and a map lookup) to ask.
type Accel uint8

const (
	// AccelUnknown: the record does not say (the socket was not announced
	// to the sockhash, or an older program wrote it); ask.
	AccelUnknown Accel = iota
	// AccelNo: the socket is not in the sockhash.
	AccelNo
	// AccelYes: the socket is in the sockhash.
	AccelYes
)

// FromMap returns the original destination of a connection accepted from
// an eBPF connect rewrite, m's record for the accepted socket's peer, and
// what the record says of the socket's acceleration.
func FromMap(c *net.TCPConn, m Map) (netip.AddrPort, Accel, error) {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok || ra == nil {
		return netip.AddrPort{}, AccelUnknown, fmt.Errorf("no peer address")
	}
	ap := ra.AddrPort()
	return m.Lookup(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
}

func getV4(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet4
	l := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IP, soOriginalDst, unsafe.Pointer(&sa), &l); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port), nil
}

func getV6(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrInet6
	l := uint32(unsafe.Sizeof(sa))
	if err := getsockopt(fd, unix.SOL_IPV6, soOriginalDst, unsafe.Pointer(&sa), &l); err != nil {
		return netip.AddrPort{}, err
	}
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr).Unmap(), port), nil
}

func getsockopt(fd, level, name int, v unsafe.Pointer, l *uint32) error {
	// Raw: the call cannot block, and through the runtime's syscall path
	// it would wake sysmon on every connection (proxy/rawsock).
	_, _, e := unix.RawSyscall6(unix.SYS_GETSOCKOPT, uintptr(fd), uintptr(level), uintptr(name), uintptr(v), uintptr(unsafe.Pointer(l)), 0)
	if e != 0 {
		return e
	}
	return nil
}

// RedirectedFD is Redirected for a raw accepted socket of the given family
// (an event loop's, which has no *net.TCPConn).
func RedirectedFD(fd int, v6 bool) (netip.AddrPort, error) {
	var ap netip.AddrPort
	var err error
	if v6 {
		ap, err = getV6(fd)
	} else {
		ap, err = getV4(fd)
	}
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("original destination: %w", err)
	}
	return ap, nil
}

// LocalFD is Local for a raw accepted socket: its local address, read with
// a raw getsockname.
func LocalFD(fd int) (netip.AddrPort, error) {
	var sa unix.RawSockaddrAny
	l := uint32(unsafe.Sizeof(sa))
	if _, _, e := unix.RawSyscall(unix.SYS_GETSOCKNAME, uintptr(fd), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		return netip.AddrPort{}, fmt.Errorf("local address: %w", e)
	}
	ap, ok := AddrPortOf(&sa)
	if !ok {
		return netip.AddrPort{}, fmt.Errorf("local address: not an IP socket")
	}
	return ap, nil
}

// AddrPortOf decodes an IPv4 or IPv6 socket address (IPv4-mapped ones
// unmapped); false for another family.
func AddrPortOf(sa *unix.RawSockaddrAny) (netip.AddrPort, bool) {
	switch sa.Addr.Family {
	case unix.AF_INET:
		a := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&a.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), port), true
	case unix.AF_INET6:
		a := (*unix.RawSockaddrInet6)(unsafe.Pointer(sa))
		port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&a.Port))[:])
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr).Unmap(), port), true
	}
	return netip.AddrPort{}, false
}
