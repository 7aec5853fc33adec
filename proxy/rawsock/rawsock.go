// Package rawsock reads and writes non-blocking sockets with raw system
// calls: without telling the Go scheduler that the goroutine entered the
// kernel.
//
// A socket call through net.Conn or golang.org/x/sys/unix goes through
// entersyscall, and the first one after the process went idle wakes Go's
// sysmon thread from its deep sleep; sysmon then polls every 20 µs until
// the process is idle again, two context switches a poll. A proxy that goes
// idle between every batch of small messages (an RPC agent at a few
// thousand calls a second) pays that at every batch: measured on the agent
// under Dubbo, sysmon made 0.7 of its 1.55 context switches per call. The
// calls here never block (the sockets are non-blocking and Go's poller does
// the waiting), so keeping the P through them costs at most the kernel's
// work for one call, which on loopback or veth includes the peer's TCP
// receive. proxy/relay makes its per-message calls the same way.
package rawsock

import (
	"io"
	"os"
	"syscall"
	"unsafe"
)

// Read is read(2) on a non-blocking socket.
func Read(fd int, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Write is write(2) on a non-blocking socket.
func Write(fd int, p []byte) (int, error) {
	n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(p))), uintptr(len(p)))
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

// Conn is an io.Reader and io.Writer over a socket's syscall.RawConn that
// makes its calls raw and waits in Go's poller when the socket has nothing
// to read or no room, so the connection's deadlines and Close still end a
// wait (with the errors net.Conn returns: a timeout, net.ErrClosed). Reads
// must not run concurrently with each other, nor writes with each other.
type Conn struct {
	rc syscall.RawConn
}

// New returns a Conn over c's socket.
func New(c syscall.Conn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &Conn{rc: rc}, nil
}

// Read reads what the socket has, waiting until it has something; io.EOF
// once the peer closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var rerr error
	err := c.rc.Read(func(fd uintptr) bool {
		for {
			m, e := Read(int(fd), p)
			switch e {
			case nil:
				n = m
				if m == 0 {
					rerr = io.EOF
				}
				return true
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait for readability
			}
			rerr = os.NewSyscallError("read", e)
			return true
		}
	})
	if err != nil {
		return n, err
	}
	return n, rerr
}

// Write writes all of p, waiting for room when the socket has none.
func (c *Conn) Write(p []byte) (int, error) {
	var n int
	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		for n < len(p) {
			m, e := Write(int(fd), p[n:])
			switch e {
			case nil:
				n += m
				continue
			case syscall.EINTR:
				continue
			case syscall.EAGAIN:
				return false // wait for room
			}
			werr = os.NewSyscallError("write", e)
			return true
		}
		return true
	})
	if err != nil {
		return n, err
	}
	return n, werr
}
