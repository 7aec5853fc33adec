// Package splice splices the two sockets of an L4 relay in the kernel: an
// sk_skb verdict program (splice.c) on a sockhash hands every skb one
// socket receives to the other socket's send path, so relayed bytes never
// cross user space and the relay is not woken to copy them. It needs Linux
// 6.2 (bpf_rdonly_cast), BTF, and plain TCP sockets (not MPTCP); Support
// names what a kernel lacks.
//
// What the kernel does and does not do, and what this package adds:
//
//   - Flow control. A redirected skb is taken off the receiving socket
//     (its TCP window reopens at once) and appended to the peer's redirect
//     backlog, which the kernel bounds by nothing; a worker sends it when
//     the peer's send buffer has room. A fast sender and a slow reader
//     would fill the node's memory. So the program redirects only while
//     the peer's send buffer has room and its backlog holds few skbs;
//     otherwise that direction falls back to user space for good: the
//     bytes stay in the receiving socket's own queue, its window closes
//     until the relay reads them, and the sender is held back as on the
//     normal path.
//   - Order at a fallback. Bytes the relay reads must not overtake bytes
//     still in the peer's backlog. The program counts, per direction, the
//     bytes it redirected; the relay writes only once the peer's send
//     stream (TCP_INFO's bytes acked plus SIOCOUTQ) has grown by all of
//     them (drained). The same wait comes before the relay passes a FIN on
//     with shutdown(SHUT_WR), and before a pair leaves the sockhash (which
//     discards a backlog).
//   - Bytes that arrived before the splice. The program reads a socket's
//     queue an skb at a time and ignores how much of an skb a reader took
//     already (tcp_read_skb): after a partial read (a sniff) it would send
//     those bytes twice. The program cuts them off like a retransmission's
//     repeated head: the first skb it sees starts where the reader stopped
//     (copied_seq). Bytes queued before the insert would wait for the next
//     arrival to run the program (forever, for a client waiting for its
//     answer): Splice sets SO_RCVLOWAT after inserting, which makes TCP
//     signal them to the program at once. Bytes the relay read earlier (a
//     sniffed prefix) must be written before Splice. Splice itself moves
//     nothing: a byte it delivered could draw an answer that reaches the
//     first socket in before the second, finds no peer, and turns its
//     direction to user space for good.
//   - FIN and RST are not data: the relay still sees them by reading each
//     socket (a read returns EOF or the error), passes a FIN on with
//     shutdown after the drain, and closes both on an error.
//   - splice(2) never sees redirected bytes: a spliced pair is read with
//     read(2), like an accelerated one.
//
// Sockets are keyed by their socket cookie (unique for the boot), and only
// the agent, which owns the maps, writes them: a pod cannot name a socket
// into a pair.
package splice

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/weir-mesh/weir/bpf/kbtf"
	"golang.org/x/sys/unix"
)

// ErrCannotTrim ends a pair whose socket received a retransmitted skb
// that repeats bytes already handled and that the kernel could not cut
// (pulling the bytes out of the skb's pages needs memory, taken without
// waiting, in softirq): the program drops it and everything after, and the
// relay resets both connections. Each has then delivered an exact prefix
// of its stream; sending the repeated bytes, or skipping the skb, would
// corrupt it. Counted as trim_failed.
var ErrCannotTrim = errors.New("splice: the kernel could not cut a retransmitted skb's repeated bytes; connections reset rather than corrupted")

// ErrUnsupported wraps what Support finds missing.
var ErrUnsupported = errors.New("in-kernel splice unsupported")

// Support reports what the running kernel lacks for the splice, naming it,
// or nil. The program reads, through bpf_rdonly_cast (Linux 6.2) and
// CO-RE, the peer's send buffer and its psock's redirect backlog.
func Support() error {
	if err := kbtf.RequireRdonlyCast(
		kbtf.Struct{Name: "sock", Fields: []string{"__sk_common", "sk_sndbuf", "sk_wmem_queued", "sk_user_data"}},
		kbtf.Struct{Name: "sock_common", Fields: []string{"skc_state"}},
		kbtf.Struct{Name: "sk_psock", Fields: []string{"ingress_skb"}},
		kbtf.Struct{Name: "sk_buff_head", Fields: []string{"qlen"}},
	); err != nil {
		return fmt.Errorf("%w: %v", ErrUnsupported, err)
	}
	return nil
}

// Splicer holds the program and its maps; they live as long as the
// process holds them (nothing is pinned: a spliced pair belongs to the
// process that relays it).
type Splicer struct {
	objs spliceObjects
}

// Load checks Support, loads the program and attaches it to the sockhash.
func Load() (*Splicer, error) {
	if err := Support(); err != nil {
		return nil, err
	}
	s := &Splicer{}
	if err := loadSpliceObjects(&s.objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load splice program: %+v", ve)
		}
		return nil, fmt.Errorf("load splice program: %w", err)
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: s.objs.Splice.FD(), Program: s.objs.WeirSplice, Attach: ebpf.AttachSkSKBVerdict,
	}); err != nil {
		s.objs.Close()
		return nil, fmt.Errorf("attach sk_skb verdict to the splice sockhash: %w", err)
	}
	return s, nil
}

// Close releases the program and maps; pairs still spliced leave the
// sockhash (their backlogs are discarded: drain first, Pair.Relay does).
func (s *Splicer) Close() error { return s.objs.Close() }

// statNames name the counters, in splice.c's order.
var statNames = []string{"skbs", "bytes", "no_peer", "fell_back", "passed", "trimmed", "trim_failed"}

// Stats sums the per-CPU counters by name: skbs redirected to the peer and
// their bytes, skbs that found no peer, directions that fell back to user
// space, and bytes handed to user space after a fallback.
func (s *Splicer) Stats() (map[string]uint64, error) {
	out := make(map[string]uint64, len(statNames))
	for i, name := range statNames {
		var per []uint64
		if err := s.objs.SpliceStats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read splice counter %s: %w", name, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// end is one socket of a pair.
type end struct {
	c      *net.TCPConn
	fd     int
	cookie uint64
	// base is the socket's send stream (bytes acked plus queued) when
	// the pair was spliced; written counts what the relay wrote to it
	// since. Only the goroutine copying into this socket touches written.
	base, written uint64
}

// Pair is a spliced pair of connected TCP sockets.
type Pair struct {
	s        *Splicer
	a, b     end
	once     sync.Once
	degraded error
}

// Splice puts a and b in the sockhash as each other's peer. Bytes either
// has received and not yet given to a reader go to the other at once.
// Write what was read from them earlier first.
//
// An error means nothing is spliced (a socket that is no longer
// established, or MPTCP, cannot join): relay the pair as usual. Once a is
// in the sockhash the pair is never taken apart before Relay ends (that
// would discard what the program queued for the reader), so a failure
// after that leaves a pair whose directions fall back to user space
// (Degraded says why); Relay relays it all the same.
func (s *Splicer) Splice(a, b *net.TCPConn) (*Pair, error) {
	p := &Pair{s: s, a: end{c: a}, b: end{c: b}}
	// Each send stream's base: nothing writes to it from now on until the
	// program does.
	for _, e := range []*end{&p.a, &p.b} {
		if err := e.load(); err != nil {
			return nil, err
		}
	}
	// The peer entries come first: a socket in the sockhash without one
	// would pass bytes to its reader and splice later ones, out of order.
	// With one, a missing peer turns the direction to user space for good.
	if err := s.objs.SplicePeers.Put(p.a.cookie, splicePeer{Cookie: p.b.cookie}); err != nil {
		return nil, fmt.Errorf("splice: peer entry: %w", err)
	}
	if err := s.objs.SplicePeers.Put(p.b.cookie, splicePeer{Cookie: p.a.cookie}); err != nil {
		p.forget()
		return nil, fmt.Errorf("splice: peer entry: %w", err)
	}
	// a (the client) goes in first. A byte that reaches the first socket
	// in before the second is finds no peer and turns its direction to
	// user space for good; one reaching a socket before its own insert
	// waits in its queue for the signal below, when both are in. The
	// upstream's answer to what was written to it before Splice may come
	// at any moment, so the upstream goes in last; the client gets no
	// answer before both are in, so a client that waits for one sends
	// nothing in between.
	if err := s.objs.Splice.Put(p.a.cookie, uint64(p.a.fd)); err != nil {
		p.forget()
		return nil, fmt.Errorf("splice: put socket in the sockhash: %w", err)
	}
	if err := s.objs.Splice.Put(p.b.cookie, uint64(p.b.fd)); err != nil {
		p.degraded = fmt.Errorf("splice: put the second socket in the sockhash: %w", err)
		return p, nil
	}
	// Signal bytes queued before the insert to the program now.
	for _, e := range []*end{&p.a, &p.b} {
		if err := unix.SetsockoptInt(e.fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1); err != nil && p.degraded == nil {
			p.degraded = fmt.Errorf("splice: signal queued bytes: %w", err)
		}
	}
	return p, nil
}

// Degraded says why a pair Splice returned is not spliced both ways from
// the start, or nil.
func (p *Pair) Degraded() error { return p.degraded }

// load fills e's descriptor, cookie and send stream.
func (e *end) load() error {
	rc, err := e.c.SyscallConn()
	if err != nil {
		return fmt.Errorf("splice: %w", err)
	}
	var ierr error
	if err := rc.Control(func(fd uintptr) {
		e.fd = int(fd)
		e.cookie, ierr = unix.GetsockoptUint64(e.fd, unix.SOL_SOCKET, unix.SO_COOKIE)
		if ierr != nil {
			ierr = fmt.Errorf("splice: SO_COOKIE: %w", ierr)
			return
		}
		e.base, ierr = stableSent(e.fd)
	}); err != nil {
		return fmt.Errorf("splice: %w", err)
	}
	return ierr
}

// sent is a lower bound of the bytes the socket has queued for sending
// in its life: bytes acked, then bytes queued (write_seq - snd_una). Read
// in this order the sum never exceeds the true value (snd_una only grows
// between the two reads), so "sent == target" proves the target reached.
func sent(fd int) (uint64, error) {
	info, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, fmt.Errorf("TCP_INFO: %w", err)
	}
	q, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, fmt.Errorf("SIOCOUTQ: %w", err)
	}
	switch info.State {
	case unix.BPF_TCP_ESTABLISHED, unix.BPF_TCP_CLOSE_WAIT:
	default:
		return 0, fmt.Errorf("socket can no longer send (TCP state %d)", info.State)
	}
	return info.Bytes_acked + uint64(q), nil
}

// stableSent is sent while nothing writes to the socket: read until the
// bytes acked did not move meanwhile, so the value is exact.
func stableSent(fd int) (uint64, error) {
	for i := 0; ; i++ {
		v, err := sent(fd)
		if err != nil {
			return 0, fmt.Errorf("splice: %w", err)
		}
		w, err := sent(fd)
		if err != nil {
			return 0, fmt.Errorf("splice: %w", err)
		}
		if v == w || i == 100 {
			return max(v, w), nil
		}
	}
}

// forget takes the pair out of the maps. A backlog still queued is lost:
// callers drain first.
func (p *Pair) forget() {
	p.once.Do(func() {
		for _, e := range []*end{&p.a, &p.b} {
			_ = p.s.objs.Splice.Delete(e.cookie)
			_ = p.s.objs.SplicePeers.Delete(e.cookie)
		}
	})
}

// redirected is what the program redirected from src so far.
func (p *Pair) redirected(src *end) (uint64, error) {
	var v splicePeer
	if err := p.s.objs.SplicePeers.Lookup(src.cookie, &v); err != nil {
		return 0, fmt.Errorf("splice: read peer entry: %w", err)
	}
	return v.Redirected, nil
}

// drain waits until dst has sent everything the program redirected into it
// from src, so what the relay writes next, or a FIN, comes after it.
func (p *Pair) drain(ctx context.Context, src, dst *end) error {
	wait := 20 * time.Microsecond
	for {
		r, err := p.redirected(src)
		if err != nil {
			return err
		}
		target := dst.base + dst.written + r
		got, err := sent(dst.fd)
		if err != nil {
			return fmt.Errorf("splice: drain into peer: %w", err)
		}
		if got == target {
			return nil
		}
		if got > target {
			return fmt.Errorf("splice: drain: peer sent %d bytes, more than the %d accounted for", got, target)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Millisecond)
	}
}

// Result says what Relay moved: bytes a→b and b→a in all, and of them
// what went through user space (copied after a fallback); the rest the
// kernel spliced.
type Result struct {
	AToB, BToA         int64
	CopiedAB, CopiedBA int64
	Err                error
}

// Relay runs the relay's side of a spliced pair until both directions have
// ended: it reads each socket (after a fallback that returns the bytes, at
// the end EOF or the error), writes what it read to the other once the
// other has drained, passes a FIN on with CloseWrite after the drain, and
// on an error closes both. It leaves the sockhash when done; the caller
// closes the connections. Cancelling ctx ends it within a short while.
func (p *Pair) Relay(ctx context.Context) Result {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(ctx, func() {
		now := time.Now()
		p.a.c.SetReadDeadline(now)
		p.b.c.SetReadDeadline(now)
	})
	defer stop()
	var res Result
	errs, watched := make(chan error, 2), make(chan error, 1)
	go func() { n, err := p.copy(ctx, &p.a, &p.b); res.CopiedAB = n; errs <- err }()
	go func() { n, err := p.copy(ctx, &p.b, &p.a); res.CopiedBA = n; errs <- err }()
	go func() { watched <- p.watch(ctx) }()
	fail := func(err error) {
		if err != nil && res.Err == nil {
			res.Err = err
			// One side failed: end the other at once, with a reset. The
			// bytes the program passed to a reader sit outside the TCP
			// receive queue, so a plain close would send a FIN and leave a
			// peer whose window the program had kept open unaware.
			p.a.c.SetLinger(0)
			p.b.c.SetLinger(0)
			p.a.c.Close()
			p.b.c.Close()
			cancel()
		}
	}
	for done := 0; done < 2; {
		select {
		case err := <-errs:
			done++
			fail(err)
		case err := <-watched:
			fail(err)
			watched = nil
		}
	}
	cancel()
	if watched != nil {
		<-watched
	}
	ab, _ := p.redirected(&p.a)
	ba, _ := p.redirected(&p.b)
	res.AToB = int64(ab) + res.CopiedAB
	res.BToA = int64(ba) + res.CopiedBA
	p.forget()
	return res
}

// watchEvery is how often watch looks at a pair's sockets.
const watchEvery = 250 * time.Millisecond

// watch ends a pair whose socket failed while its direction was spliced:
// nobody may be reading that socket (its reader saw EOF already), and the
// kernel drops what it still redirects to a socket whose send path broke,
// after the sender's window reopened, so the sender would go on sending
// into nothing. It returns the socket's error, or nil once ctx ends.
func (p *Pair) watch(ctx context.Context) error {
	t := time.NewTicker(watchEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		for _, e := range []*end{&p.a, &p.b} {
			if err := broken(e.c); err != nil {
				return fmt.Errorf("splice: socket failed: %w", err)
			}
			var v splicePeer
			if err := p.s.objs.SplicePeers.Lookup(e.cookie, &v); err == nil && v.Broken != 0 {
				return ErrCannotTrim
			}
		}
	}
}

// broken reports c's pending socket error (SO_ERROR: a reset, or the
// kernel's failed send of a redirected skb), else nil. A clean close sets
// none, so a pair that ends normally is never cut short. Reading SO_ERROR
// clears it; the relay then ends with it.
func broken(c *net.TCPConn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var berr error
	if err := rc.Control(func(fd uintptr) {
		if v, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR); err == nil && v != 0 {
			berr = unix.Errno(v)
		}
	}); err != nil {
		return err
	}
	return berr
}

// copy relays src to dst in user space: bytes the program passed after a
// fallback, and the end of the stream.
func (p *Pair) copy(ctx context.Context, src, dst *end) (int64, error) {
	buf := make([]byte, 64<<10)
	var copied int64
	drained := false
	for {
		n, err := src.c.Read(buf)
		if n > 0 {
			if !drained {
				// The first bytes after a fallback: the backlog goes first.
				if derr := p.drain(ctx, src, dst); derr != nil {
					return copied, derr
				}
				drained = true
			}
			if _, werr := dst.c.Write(buf[:n]); werr != nil {
				return copied, fmt.Errorf("splice: write to peer: %w", werr)
			}
			dst.written += uint64(n)
			copied += int64(n)
		}
		if errors.Is(err, io.EOF) {
			if derr := p.drain(ctx, src, dst); derr != nil {
				return copied, derr
			}
			if cerr := dst.c.CloseWrite(); cerr != nil {
				return copied, fmt.Errorf("splice: pass FIN on: %w", cerr)
			}
			return copied, nil
		}
		if err != nil {
			return copied, fmt.Errorf("splice: read: %w", err)
		}
	}
}
