package netns

import (
	"net/netip"
	"os"
	"syscall"
	"unsafe"
)

// startConnect starts a non-blocking connect of fd to addr from Dial's
// Control hook, before Go's own connect call, for two reasons:
//
//   - On a veth or loopback path the kernel runs the whole handshake inside
//     connect(2) (the SYN, the server's SYN-ACK and the final ACK are all
//     processed in the caller's softirq), which takes tens of µs. Made as a
//     raw system call it keeps the goroutine's P: through the runtime's
//     syscall path, sysmon hands the P to another thread during such a
//     call and the caller's thread sleeps when it returns, two context
//     switches per connection.
//   - When Go's connect call then finds the socket established it returns
//     at once; otherwise (EINPROGRESS in the kernel's eyes: EALREADY) it
//     waits for the poller as before. So the goroutine usually does not
//     park, and the SO_ERROR check after the wait is skipped; the number
//     of system calls stays the same (a second connect replaces it).
//
// A connect error the kernel reports at once (no route, for example) is
// returned, and fails the dial like Go's own connect would.
func startConnect(fd int, addr netip.AddrPort, v6 bool) error {
	var (
		sa4 syscall.RawSockaddrInet4
		sa6 syscall.RawSockaddrInet6
		p   unsafe.Pointer
		n   uintptr
	)
	port := (*[2]byte)(unsafe.Pointer(&sa4.Port))
	if v6 {
		sa6.Family = syscall.AF_INET6
		sa6.Addr = addr.Addr().As16()
		port = (*[2]byte)(unsafe.Pointer(&sa6.Port))
		p, n = unsafe.Pointer(&sa6), unsafe.Sizeof(sa6)
	} else {
		sa4.Family = syscall.AF_INET
		sa4.Addr = addr.Addr().Unmap().As4()
		p, n = unsafe.Pointer(&sa4), unsafe.Sizeof(sa4)
	}
	port[0], port[1] = byte(addr.Port()>>8), byte(addr.Port())
	_, _, e := syscall.RawSyscall(syscall.SYS_CONNECT, uintptr(fd), uintptr(p), n)
	switch e {
	case 0, syscall.EINPROGRESS, syscall.EINTR:
		// EINTR: the connect goes on in the background, as EINPROGRESS.
		return nil
	}
	return os.NewSyscallError("connect", e)
}
