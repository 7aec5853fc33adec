package relay

import (
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/proxy/rawsock"
)

// Bulk mode splices: source socket → pipe → destination socket, in the
// kernel, as (*net.TCPConn).ReadFrom does, with one difference. splice
// cannot pass a TCP urgent mark (a byte sent with MSG_OOB): tcp_read_sock
// stops before it and moves nothing there, so splice finds EAGAIN (or 0,
// once a FIN is queued too) with bytes still queued behind the mark. Go's
// own splice then waits for a readiness that has come already, and the
// direction stalls for good. Here a splice that finds nothing at the mark
// (SIOCATMARK) gives way to one read, which steps over the urgent byte
// (out of band; the small-message mode and the event loops do the same)
// and returns what follows.

// splicePipeSize is the pipe's size and the most one splice moves: Go's
// own choice for ReadFrom (1 MiB).
const splicePipeSize = 1 << 20

// spliceState is one bulk direction's splice, bound once to its RawConn
// callbacks so a round trip through the pipe allocates nothing.
type spliceState struct {
	pipe   [2]int // read end, write end
	inPipe int    // bytes in the pipe
	n      int    // what the last drain moved
	err    error  // the last call's error (not EAGAIN)
	mark   bool   // the last drain stopped at an urgent mark
}

// spliceCopy copies src to dst until src's EOF, through a pipe. It
// returns the bytes written to dst.
func spliceCopy(dst, src *net.TCPConn) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}
	wc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}
	s := &spliceState{}
	if err := unix.Pipe2(s.pipe[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return 0, os.NewSyscallError("pipe2", err)
	}
	defer unix.Close(s.pipe[0])
	defer unix.Close(s.pipe[1])
	unix.FcntlInt(uintptr(s.pipe[0]), unix.F_SETPIPE_SZ, splicePipeSize)
	drain, pump := s.drain, s.pump
	var total int64
	for {
		s.n, s.err, s.mark = 0, nil, false
		if err := rc.Read(drain); err != nil {
			return total, err
		}
		if s.err != nil {
			if s.err == unix.EINVAL || s.err == unix.EOPNOTSUPP || s.err == unix.ENOSYS {
				// A socket splice does not serve: copy the rest (the pipe
				// is empty, so nothing is reordered), as ReadFrom falls
				// back too.
				n, err := copyNoSplice(dst, src)
				return total + n, err
			}
			return total, os.NewSyscallError("splice", s.err)
		}
		if s.mark {
			n, eof, err := readOverMark(rc, wc)
			total += int64(n)
			if err != nil || eof {
				return total, err
			}
			continue
		}
		if s.n == 0 {
			return total, nil // EOF
		}
		s.inPipe = s.n
		for s.inPipe > 0 {
			before := s.inPipe
			err := wc.Write(pump)
			total += int64(before - s.inPipe)
			if err == nil {
				err = s.err
			}
			if err != nil {
				return total, err
			}
		}
	}
}

// drain splices what the socket holds into the empty pipe (EAGAIN: wait
// for readability, unless the socket is at an urgent mark).
func (s *spliceState) drain(fd uintptr) bool {
	for {
		n, err := unix.Splice(int(fd), nil, s.pipe[1], nil, splicePipeSize, unix.SPLICE_F_NONBLOCK)
		switch err {
		case nil:
			if n == 0 && rawsock.AtMark(int(fd)) {
				s.mark = true // not the EOF: the FIN is behind the mark
			}
			s.n = int(n)
			return true
		case unix.EINTR:
			continue
		case unix.EAGAIN:
			if rawsock.AtMark(int(fd)) {
				s.mark = true
				return true
			}
			return false
		default:
			s.err = err
			return true
		}
	}
}

// pump splices the pipe into the socket until it is empty (EAGAIN: wait
// for room).
func (s *spliceState) pump(fd uintptr) bool {
	for s.inPipe > 0 {
		n, err := unix.Splice(s.pipe[0], nil, int(fd), nil, s.inPipe, unix.SPLICE_F_NONBLOCK)
		switch err {
		case nil:
			s.inPipe -= int(n)
		case unix.EINTR:
		case unix.EAGAIN:
			return false
		default:
			s.err = os.NewSyscallError("splice", err)
			return true
		}
	}
	return true
}

// readOverMark reads once past an urgent mark (the urgent byte is not
// returned) and writes what it read to dst; eof when the source had no
// more than its FIN.
func readOverMark(rc, wc syscall.RawConn) (n int, eof bool, err error) {
	bp := smallBufs.Get().(*[]byte)
	defer smallBufs.Put(bp)
	var rerr error
	if err := rc.Read(func(fd uintptr) bool {
		for range 16 {
			var again bool
			n, again, rerr = rawsock.ReadOnce(int(fd), *bp)
			if !again {
				return true
			}
			if !rawsock.AtMark(int(fd)) {
				return false // the urgent byte was all: wait for more
			}
			// Still at the mark: a signal cut the read short (AtMark).
		}
		return false
	}); err != nil {
		return 0, false, err
	}
	if rerr != nil {
		return 0, false, rerr
	}
	if n == 0 {
		return 0, true, nil
	}
	out := (*bp)[:n]
	var werr error
	if err := wc.Write(func(fd uintptr) bool {
		m, again, err := rawsock.WriteAll(int(fd), out)
		out = out[m:]
		werr = err
		return !again
	}); err != nil {
		return n - len(out), false, err
	}
	return n - len(out), false, werr
}
