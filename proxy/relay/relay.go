// Package relay copies bytes both ways between two TCP connections until both
// directions are done.
//
// Each direction starts in a small-message mode: it waits for data holding
// no buffer, reads what is there into a pooled buffer and writes it out, so
// an idle connection costs no memory and a request/response exchange costs
// one read and one write. The first read that fills the buffer switches the
// direction to bulk mode for good: the kernel splices through a pipe
// (splice.go), which halves the CPU per byte. Byte counts come from the
// copy loops' own results.
package relay

import (
	"context"
	"errors"
	"net"
	"os"
	"sync"
	"sync/atomic"

	"github.com/weir-mesh/weir/proxy/rawsock"
)

// smallBufSize is the small-message buffer; a read that fills it means bulk.
const smallBufSize = 16 << 10

var smallBufs = sync.Pool{New: func() any { b := make([]byte, smallBufSize); return &b }}

// Result is what one relayed connection moved.
type Result struct {
	// Up is bytes from the downstream (client) side to the upstream side,
	// Down the reverse.
	Up, Down int64
	// UpErr and DownErr are the copy errors of each direction (nil at clean EOF).
	UpErr, DownErr error
	// HandedOver: the relay was paused and released (Handle), its sockets
	// now relayed by another process; it moved no byte after the pause.
	HandedOver bool
}

// Err is the first error of either direction.
func (r Result) Err() error {
	if r.UpErr != nil {
		return r.UpErr
	}
	return r.DownErr
}

// ErrHandedOver ends a direction whose relay was released (Handle.Release).
var ErrHandedOver = errors.New("relay handed over")

// Relay copies client→upstream and upstream→client. When one side finishes
// sending (EOF), the other side's write half is closed so half-closed
// protocols still get their answers. When a direction fails, both
// connections are closed so the other direction ends too. When ctx ends, both
// are closed. Relay returns after both directions ended; it closes neither
// connection on a clean finish: the caller must close both (each
// direction's FIN has been passed on by then, with a raw shutdown).
func Relay(ctx context.Context, client, upstream *net.TCPConn) Result {
	return RelayWith(ctx, client, upstream, nil)
}

// RelayWith is Relay with a Handle (nil for none) through which another
// goroutine may pause the relay and take its sockets (Handle.Pause).
func RelayWith(ctx context.Context, client, upstream *net.TCPConn, h *Handle) Result {
	// One allocation holds the whole relay's shared state.
	r := &relayState{client: client, upstream: upstream}
	r.running.Store(2)
	if h != nil {
		h.r.Store(r)
		r.noSplice = h.noSplice
	}
	stop := context.AfterFunc(ctx, r.abort)
	defer stop()
	r.wg.Add(1)
	go r.down()
	r.res.Up, r.res.UpErr = copyHalf{dst: upstream, src: client, r: r}.run()
	r.wg.Wait()
	if errors.Is(r.res.UpErr, ErrHandedOver) && errors.Is(r.res.DownErr, ErrHandedOver) {
		r.res.UpErr, r.res.DownErr, r.res.HandedOver = nil, nil, true
	}
	return r.res
}

// relayState is what both directions of one relay share.
type relayState struct {
	client, upstream *net.TCPConn
	res              Result
	wg               sync.WaitGroup
	aborted          atomic.Bool
	// ended counts directions that reached EOF (a direction that passed
	// its FIN on with another one still running may fail and abort both).
	ended atomic.Int32
	// running counts directions still copying (parked ones included);
	// pause is the current or last pause (handover.go).
	running atomic.Int32
	pause   atomic.Pointer[pauseState]
	// noSplice keeps both directions in small-message mode (nosplice.go).
	noSplice bool
	// bulk: a direction switched to bulk mode (Handle.Bulk).
	bulk atomic.Bool
	// parkedUp and parkedDown are each direction's count when it parked,
	// written before it reports on the pause's events.
	parkedUp, parkedDown int64
}

// abort closes both connections (once) so both directions end.
func (r *relayState) abort() {
	if r.aborted.CompareAndSwap(false, true) {
		r.client.Close()
		r.upstream.Close()
	}
}

// down runs the upstream→client direction.
func (r *relayState) down() {
	defer r.wg.Done()
	r.res.Down, r.res.DownErr = copyHalf{dst: r.client, src: r.upstream, r: r}.run()
}

// copyHalf is one direction of a relay, a named type so goroutine stacks say
// what they are doing.
type copyHalf struct {
	dst, src *net.TCPConn
	r        *relayState
}

func (c copyHalf) run() (n int64, err error) {
	defer c.r.exited()
	bulk := false
	for {
		var m int64
		switched := false
		if bulk && c.r.noSplice {
			m, err = copyNoSplice(c.dst, c.src)
		} else if bulk {
			m, err = spliceCopy(c.dst, c.src)
		} else {
			m, bulk, err = c.copySmall()
			switched = bulk
		}
		n += m
		if err == nil && switched {
			c.r.bulk.Store(true)
			continue // on to splice
		}
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			if resume, paused := c.r.park(n, c.src == c.r.client); paused {
				if resume {
					continue
				}
				return n, ErrHandedOver
			}
		}
		break
	}
	if err != nil {
		c.r.abort()
		return n, err
	}
	// The source sent FIN: pass it on, and keep reading the other
	// direction if it still runs. The last direction to end passes its FIN
	// on here too rather than leaving it to the caller's Close: sending a
	// FIN runs the peer's TCP receive in this call's softirq on a veth or
	// loopback path, long enough for the runtime to hand the P away during
	// a close(2), which goes through its syscall path; the raw shutdown
	// keeps it (raw.go), and the close that follows only frees the socket.
	last := c.r.ended.Add(1) == 2
	if cerr := closeWrite(c.dst); cerr != nil && !last {
		c.r.abort()
	}
	return n, nil
}

// closeWrite sends c's FIN (shutdown SHUT_WR) as a raw system call (raw.go).
func closeWrite(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = rawShutdownWrite(int(fd)) }); err != nil {
		return err
	}
	if serr != nil {
		return os.NewSyscallError("shutdown", serr)
	}
	return nil
}

// copySmall relays messages until EOF (bulk false), an error, or a read that
// fills the buffer (bulk true: the caller switches to splice, or under
// NoSplice to copyNoSplice's larger buffer). The buffer is
// taken from the pool only once data is ready and returned after the write.
//
// Reads and writes go through the sockets' RawConns (Go's poller still parks
// the goroutine on EAGAIN) as raw system calls (raw.go): on a veth path a
// write runs the receiver's whole TCP stack in its softirq and can take tens
// of µs, long enough for the runtime's sysmon to take the P away and wake
// another thread, a context switch and a wake-up per message.
func (c copyHalf) copySmall() (total int64, bulk bool, err error) {
	rc, err := c.src.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	wc, err := c.dst.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	// One allocation per direction: the callbacks and their state.
	s := &smallState{}
	read, write := s.read, s.write
	for {
		err := rc.Read(read)
		if err == nil {
			err = s.rerr
		}
		if err != nil {
			s.put()
			return total, false, err
		}
		n := s.n
		if n <= 0 {
			s.put()
			return total, false, nil // EOF
		}
		s.out, s.werr = (*s.bp)[:n], nil
		err = wc.Write(write)
		if err == nil {
			err = s.werr
		}
		w := n - len(s.out)
		s.out = nil
		s.put()
		total += int64(w)
		if err != nil {
			return total, false, err
		}
		if n == smallBufSize {
			return total, true, nil
		}
	}
}

// smallState is one direction's small-message state, shared with the
// RawConn callbacks (bound once, so a message allocates nothing).
type smallState struct {
	bp   *[]byte
	n    int
	rerr error
	out  []byte // what is left to write
	werr error
}

// read reads what the socket holds into a pooled buffer; on EAGAIN it
// holds no buffer and asks the poller to wait.
func (s *smallState) read(fd uintptr) bool {
	s.bp = smallBufs.Get().(*[]byte)
	n, again, err := rawsock.ReadOnce(int(fd), *s.bp)
	if again {
		s.put()
		return false // wait for readability, holding no buffer
	}
	s.n, s.rerr = n, err
	return true
}

// write writes s.out until it is all written (EAGAIN: wait for room).
func (s *smallState) write(fd uintptr) bool {
	n, again, err := rawsock.WriteAll(int(fd), s.out)
	s.out = s.out[n:]
	if again {
		return false
	}
	s.werr = err
	return true
}

// put returns the buffer, if one is held.
func (s *smallState) put() {
	if s.bp != nil {
		smallBufs.Put(s.bp)
		s.bp = nil
	}
}
