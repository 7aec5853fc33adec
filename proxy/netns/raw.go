package netns

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The calls a Dial makes on every upstream connection (entering and
// leaving the namespace, the socket options) are raw system calls: they
// do not tell the Go scheduler that the goroutine entered the kernel.
// Through the runtime's syscall path the first such call after the agent
// went idle wakes sysmon from its deep sleep, and any call that outlasts a
// sysmon tick while other goroutines wait hands the P to another thread:
// context switches on every connection (proxy/rawsock explains the same
// for reads and writes). None of these calls can block: setns on a
// network namespace and setsockopt on a fresh socket return at once.

// rawSetns is setns(fd, CLONE_NEWNET) for the calling thread.
func rawSetns(fd int) error {
	if _, _, e := syscall.RawSyscall(unix.SYS_SETNS, uintptr(fd), unix.CLONE_NEWNET, 0); e != 0 {
		return e
	}
	return nil
}

// rawSetsockoptInt is setsockopt(fd, level, opt, &v, 4).
func rawSetsockoptInt(fd, level, opt, v int) error {
	iv := int32(v)
	if _, _, e := syscall.RawSyscall6(unix.SYS_SETSOCKOPT, uintptr(fd), uintptr(level), uintptr(opt),
		uintptr(unsafe.Pointer(&iv)), unsafe.Sizeof(iv), 0); e != 0 {
		return e
	}
	return nil
}
