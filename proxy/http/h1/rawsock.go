package h1

import (
	"io"
	"net"
	"os"
	"syscall"

	"github.com/weir-mesh/weir/proxy/rawsock"
)

// sockIO reads and writes a connection's TCP socket with raw system calls
// (proxy/rawsock says why: a call through net.Conn enters the runtime's
// syscall state, and the first one after the agent went idle wakes sysmon,
// which then polls every 20 µs, two context switches a poll). Go's poller
// still does the waiting, so deadlines and Close end a wait as on the
// net.Conn. Unlike rawsock.Conn it allocates nothing per call: the
// callbacks are bound once. Bytes a sniffer read ahead are read through the
// sniffed connection first. A connection that is not a TCP socket is read
// and written through.
type sockIO struct {
	c  net.Conn
	rc syscall.RawConn
	// sniffed, when c is a sniffed connection: whether it still holds
	// bytes read ahead.
	sniffed interface{ Buffered() []byte }

	// A read and a write may run at once (a request body going up while
	// the response comes back): each has its own state.
	rp, wp   []byte
	rn, wn   int
	rerr     error
	werr     error
	rfn, wfn func(fd uintptr) bool // s.read and s.write, bound once
}

// reset points s at c.
func (s *sockIO) reset(c net.Conn) {
	s.c, s.rc, s.sniffed = c, nil, nil
	var tc *net.TCPConn
	switch t := c.(type) {
	case *net.TCPConn:
		tc = t
	case interface {
		TCP() *net.TCPConn
		Buffered() []byte
	}:
		tc, s.sniffed = t.TCP(), t
	}
	if tc != nil {
		s.rc, _ = tc.SyscallConn()
	}
	if s.rfn == nil {
		s.rfn, s.wfn = s.read, s.write
	}
}

// clear drops the connection.
func (s *sockIO) clear() { s.c, s.rc, s.sniffed, s.rp, s.wp = nil, nil, nil, nil, nil }

// Read reads what the socket has, waiting until it has something.
func (s *sockIO) Read(p []byte) (int, error) {
	if s.rc == nil || len(p) == 0 || s.sniffed != nil && len(s.sniffed.Buffered()) > 0 {
		return s.c.Read(p)
	}
	s.rp, s.rn, s.rerr = p, 0, nil
	err := s.rc.Read(s.rfn)
	n, rerr := s.rn, s.rerr
	s.rp = nil
	if err != nil {
		return n, err
	}
	return n, rerr
}

// Write writes all of p, waiting for room when the socket has none.
func (s *sockIO) Write(p []byte) (int, error) {
	if s.rc == nil {
		return s.c.Write(p)
	}
	s.wp, s.wn, s.werr = p, 0, nil
	err := s.rc.Write(s.wfn)
	n, werr := s.wn, s.werr
	s.wp = nil
	if err != nil {
		return n, err
	}
	return n, werr
}

// read is the RawConn read callback; false waits for readability.
func (s *sockIO) read(fd uintptr) bool {
	for {
		m, e := rawsock.Read(int(fd), s.rp)
		switch e {
		case nil:
			s.rn = m
			if m == 0 {
				s.rerr = io.EOF
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.rerr = os.NewSyscallError("read", e)
		return true
	}
}

// write is the RawConn write callback; false waits for room.
func (s *sockIO) write(fd uintptr) bool {
	for s.wn < len(s.wp) {
		m, e := rawsock.Write(int(fd), s.wp[s.wn:])
		switch e {
		case nil:
			s.wn += m
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		s.werr = os.NewSyscallError("write", e)
		return true
	}
	return true
}
