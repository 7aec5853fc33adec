package relay

import "syscall"

// The relay's per-message system calls are made raw (reads and writes
// through proxy/rawsock): without telling the Go scheduler that the
// goroutine entered the kernel. They never block (the
// sockets are non-blocking; Go's poller does the waiting), but on a veth or
// loopback path one of them runs the peer's TCP receive in its softirq: a
// write, the FIN of a shutdown. When such a call outlasts a sysmon tick
// (20 µs) and another goroutine is waiting, the runtime hands the P to
// another thread and wakes it; the caller's thread then finds no P on its
// return and sleeps. Measured on the agent under a connection per request,
// that was most of its context switches and a tenth of its CPU in sysmon's
// wake-ups. A raw call keeps the P: the wait is at most one such softirq.

// rawShutdownWrite is shutdown(fd, SHUT_WR): it sends the FIN.
func rawShutdownWrite(fd int) error {
	if _, _, e := syscall.RawSyscall(syscall.SYS_SHUTDOWN, uintptr(fd), syscall.SHUT_WR, 0); e != 0 {
		return e
	}
	return nil
}
