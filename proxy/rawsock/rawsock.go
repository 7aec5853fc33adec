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
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
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

// ReadOnce reads once from the non-blocking socket fd, retrying an
// interrupted call. again is true when the socket holds nothing yet (EAGAIN:
// wait for readability); n == 0 with neither again nor err is the peer's
// end of stream. The poller callbacks here and in proxy/relay share it.
func ReadOnce(fd int, p []byte) (n int, again bool, err error) {
	for {
		m, e := Read(fd, p)
		switch e {
		case nil:
			return m, false, nil
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return 0, true, nil
		}
		return 0, false, os.NewSyscallError("read", e)
	}
}

// WriteAll writes p to the non-blocking socket fd until all of it is
// written, the socket has no room (again: wait for writability, then call
// it with p[n:]), or an error; it retries an interrupted call.
func WriteAll(fd int, p []byte) (n int, again bool, err error) {
	for n < len(p) {
		m, e := Write(fd, p[n:])
		switch e {
		case nil:
			n += m
		case syscall.EINTR:
		case syscall.EAGAIN:
			return n, true, nil
		default:
			return n, false, os.NewSyscallError("write", e)
		}
	}
	return n, false, nil
}

// Conn is an io.Reader and io.Writer over a socket's syscall.RawConn that
// makes its calls raw and waits in Go's poller when the socket has nothing
// to read or no room, so the connection's deadlines and Close still end a
// wait (with the errors net.Conn returns: a timeout, net.ErrClosed). A read
// and a write may run at once (each has its own state); reads must not run
// concurrently with each other, nor writes with each other. Its callbacks
// are bound once, so a call allocates nothing; a Conn must not be copied
// once used.
type Conn struct {
	c  net.Conn // the connection Reset was given: read while it holds sniffed bytes, or for everything when it has no socket
	rc syscall.RawConn
	// buffered is a sniffer's connection while it still holds bytes it
	// read ahead, which come before the socket's.
	buffered interface{ Buffered() []byte }

	rp, wp     []byte
	rn, wn     int
	rerr, werr error
	rfn, wfn   func(fd uintptr) bool // c.read and c.write, bound once
	tfn        func(fd uintptr) bool // c.tryWrite, bound once
}

// ErrWouldBlock is TryWrite's error when the socket took less than all
// of its bytes.
var ErrWouldBlock = errors.New("rawsock: socket full")

// New returns a Conn over c's socket.
func New(c syscall.Conn) (*Conn, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &Conn{rc: rc}
	r.bind()
	return r, nil
}

// Reset points the Conn at conn: its TCP socket, or the one a sniffer's
// connection (TCP() and Buffered()) wraps, after the bytes it read ahead.
// Anything else is read and written through conn; nil drops it.
func (c *Conn) Reset(conn net.Conn) {
	c.c, c.rc, c.buffered, c.rp, c.wp = conn, nil, nil, nil, nil
	var tcp *net.TCPConn
	switch t := conn.(type) {
	case *net.TCPConn:
		tcp = t
	case interface {
		TCP() *net.TCPConn
		Buffered() []byte
	}:
		tcp, c.buffered = t.TCP(), t
	}
	if tcp != nil {
		c.rc, _ = tcp.SyscallConn()
	}
	if c.rfn == nil {
		c.bind()
	}
}

// bind makes the callbacks once: a method value passed to RawConn escapes,
// so binding one per call would allocate per call.
func (c *Conn) bind() { c.rfn, c.wfn, c.tfn = c.read, c.write, c.tryWrite }

// RawConn is the socket's, nil without one.
func (c *Conn) RawConn() syscall.RawConn { return c.rc }

// Read reads what the socket has, waiting until it has something; io.EOF
// once the peer closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if c.buffered != nil {
		if len(c.buffered.Buffered()) > 0 {
			return c.c.Read(p)
		}
		c.buffered = nil
	}
	if c.rc == nil {
		return c.c.Read(p)
	}
	if len(p) == 0 {
		return 0, nil
	}
	c.rp, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.rfn)
	n, rerr := c.rn, c.rerr
	c.rp = nil
	if err != nil {
		return n, err
	}
	return n, rerr
}

// Write writes all of p, waiting for room when the socket has none.
func (c *Conn) Write(p []byte) (int, error) {
	if c.rc == nil {
		return c.c.Write(p)
	}
	return c.writeWith(c.wfn, p)
}

// writeWith writes p through the RawConn callback fn (c.write or
// c.tryWrite).
func (c *Conn) writeWith(fn func(fd uintptr) bool, p []byte) (int, error) {
	c.wp, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(fn)
	n, werr := c.wn, c.werr
	c.wp = nil
	if err != nil {
		return n, err
	}
	return n, werr
}

// TryWrite writes what of p the socket takes now, without waiting: all of
// it, or n < len(p) bytes and ErrWouldBlock (a writer that must not wait,
// such as one goroutine answering many clients, hands the rest to one that
// may). Without a socket it writes nothing and returns ErrWouldBlock. It
// is a write: not concurrently with Write or another TryWrite.
func (c *Conn) TryWrite(p []byte) (int, error) {
	if c.rc == nil {
		return 0, ErrWouldBlock
	}
	return c.writeWith(c.tfn, p)
}

// tryWrite is TryWrite's RawConn callback: it never waits.
func (c *Conn) tryWrite(fd uintptr) bool {
	if !c.write(fd) {
		c.werr = ErrWouldBlock
	}
	return true
}

// read is the RawConn read callback; false waits for readability.
func (c *Conn) read(fd uintptr) bool {
	m, again, err := ReadOnce(int(fd), c.rp)
	if again {
		return false
	}
	c.rn, c.rerr = m, err
	if m == 0 && err == nil {
		c.rerr = io.EOF
	}
	return true
}

// write is the RawConn write callback; false waits for room.
func (c *Conn) write(fd uintptr) bool {
	m, again, err := WriteAll(int(fd), c.wp[c.wn:])
	c.wn += m
	if again {
		return false
	}
	c.werr = err
	return true
}

// AtMark reports whether the next byte fd would read is a TCP urgent mark
// (SIOCATMARK). At the mark a read that has copied nothing returns EAGAIN
// while a signal is pending for the thread (tcp_recvmsg), and the Go
// runtime signals threads to preempt them: an EAGAIN there does not mean
// the socket is empty, and the read is to be made again.
func AtMark(fd int) bool {
	var v int32
	_, _, e := syscall.RawSyscall(syscall.SYS_IOCTL, uintptr(fd), unix.SIOCATMARK, uintptr(unsafe.Pointer(&v)))
	return e == 0 && v != 0
}
