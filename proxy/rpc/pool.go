package rpc

import (
	"bufio"
	"container/heap"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rawsock"
)

// PoolOptions tune a Pool; zero fields take the defaults.
type PoolOptions struct {
	// ConnsPerEndpoint is how many upstream connections one endpoint gets;
	// requests of every downstream connection share them (default 1: one
	// pipelined or multiplexed connection per endpoint).
	ConnsPerEndpoint int
	// MaxInFlight bounds the requests waiting on one upstream connection;
	// a sender blocks beyond it (default 1024).
	MaxInFlight int
	// ResponseTimeout, when not 0, bounds how long an upstream connection
	// with requests waiting may go without answering one: past it the
	// connection is closed and every request on it gets an error reply
	// (one stalled server must not hold other clients' replies forever).
	ResponseTimeout time.Duration
	// Metrics counts the heartbeats endpoints send on pooled connections;
	// nil counts nothing.
	Metrics *Metrics
}

// ErrResponseTimeout answers the requests of an upstream connection that
// stopped answering within PoolOptions.ResponseTimeout.
var ErrResponseTimeout = fmt.Errorf("rpc: no response within the response timeout: %w", context.DeadlineExceeded)

// ErrRequestTimeout answers a request that had no answer within its
// route's timeout (Policy.Timeout). It wraps ErrResponseTimeout, so codecs
// answer both with their protocol's timeout status.
var ErrRequestTimeout = fmt.Errorf("rpc: no answer within the route's timeout: %w", ErrResponseTimeout)

func (o PoolOptions) withDefaults() PoolOptions {
	if o.ConnsPerEndpoint <= 0 {
		o.ConnsPerEndpoint = 1
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 1024
	}
	return o
}

// errPoolClosed fails requests still waiting when the pool closes.
var errPoolClosed = errors.New("rpc: upstream pool closed")

// Pool holds one workload's shared upstream connections for one protocol,
// per endpoint address. Each connection carries the requests of any
// number of downstream connections: with ids, each request gets a fresh
// upstream id and responses are matched by it; without (IDWidth 0), the
// connection is pipelined and responses are matched first in, first out.
// A connection that fails is dropped and its waiting requests get the
// protocol's error reply. Safe for concurrent use; make it with NewPool.
type Pool struct {
	p       *Protocol
	opt     PoolOptions
	mu      sync.Mutex
	conns   map[netip.AddrPort][]*upConn
	dialing map[netip.AddrPort][]*dialCall
	shut    bool
}

// NewPool makes an empty pool for p.
func NewPool(p *Protocol, opt PoolOptions) *Pool {
	return &Pool{p: p, opt: opt.withDefaults(), conns: map[netip.AddrPort][]*upConn{}, dialing: map[netip.AddrPort][]*dialCall{}}
}

// Protocol is the pool's protocol.
func (p *Pool) Protocol() *Protocol { return p.p }

// Close closes every upstream connection; requests still waiting get an
// error reply, and so do requests made later.
func (p *Pool) Close() {
	p.mu.Lock()
	p.shut = true
	all := p.conns
	p.conns = nil
	p.mu.Unlock()
	for _, cs := range all {
		for _, uc := range cs {
			uc.fail(errPoolClosed)
		}
	}
}

// Conns reports how many upstream connections the pool holds for addr.
func (p *Pool) Conns(addr netip.AddrPort) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns[addr])
}

// dialCall is a connect in progress, which other requests for the same
// endpoint wait for rather than dial too.
type dialCall struct {
	done chan struct{}
	uc   *upConn
	err  error
}

// get returns a live connection to the lease's endpoint. While the
// endpoint has fewer than ConnsPerEndpoint connections, made or being
// made, it dials one (l.Dial with dial, so the cluster records the
// connect); otherwise it takes the least busy, or waits for a connect in
// progress when there is none yet.
func (p *Pool) get(ctx context.Context, l *cluster.Lease, dial cluster.Dialer) (*upConn, error) {
	addr := l.Endpoint()
	p.mu.Lock()
	if p.shut {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	cs, ds := p.conns[addr], p.dialing[addr]
	if len(cs)+len(ds) >= p.opt.ConnsPerEndpoint {
		if len(cs) == 0 {
			d := ds[0]
			p.mu.Unlock()
			<-d.done
			return d.uc, d.err
		}
		best := cs[0]
		for _, uc := range cs[1:] {
			if uc.inflight.Load() < best.inflight.Load() {
				best = uc
			}
		}
		p.mu.Unlock()
		return best, nil
	}
	d := &dialCall{done: make(chan struct{})}
	p.dialing[addr] = append(ds, d)
	p.mu.Unlock()

	c, err := l.Dial(ctx, dial)
	p.mu.Lock()
	ds = p.dialing[addr]
	for i, x := range ds {
		if x == d {
			ds = append(ds[:i:i], ds[i+1:]...)
			break
		}
	}
	if len(ds) == 0 {
		delete(p.dialing, addr)
	} else {
		p.dialing[addr] = ds
	}
	switch {
	case err != nil:
		d.err = err
	case p.shut:
		d.err = errPoolClosed
		c.Close()
	default:
		d.uc = newUpConn(p, c, addr)
		p.conns[addr] = append(p.conns[addr], d.uc)
	}
	p.mu.Unlock()
	close(d.done)
	if d.uc != nil {
		go d.uc.writeLoop()
		go d.uc.readLoop()
	}
	return d.uc, d.err
}

// drop removes uc from the pool.
func (p *Pool) drop(uc *upConn) {
	uc.gone.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conns == nil {
		return // closed
	}
	cs := p.conns[uc.addr]
	for i, c := range cs {
		if c == uc {
			cs = append(cs[:i:i], cs[i+1:]...)
			break
		}
	}
	if len(cs) == 0 {
		delete(p.conns, uc.addr)
	} else {
		p.conns[uc.addr] = cs
	}
}

// upCache is one session reader's last few upstream connections, by
// endpoint, so a request to an endpoint it sent to before costs a
// comparison of addresses, not the pool's lock and two map probes. Only
// with one connection per endpoint (with more, each request takes the
// least busy one). Not safe for concurrent use.
type upCache struct {
	entries [4]struct {
		addr netip.AddrPort
		uc   *upConn
	}
	next int // the entry a miss replaces
}

// get returns a live connection to the lease's endpoint: the cached one,
// while it is in the pool, else the pool's (Pool.get), remembered.
func (c *upCache) get(ctx context.Context, p *Pool, l *cluster.Lease, dial cluster.Dialer) (*upConn, error) {
	if p.opt.ConnsPerEndpoint != 1 {
		return p.get(ctx, l, dial)
	}
	addr := l.Endpoint()
	for i := range c.entries {
		if e := &c.entries[i]; e.uc != nil && e.addr == addr {
			if !e.uc.gone.Load() {
				return e.uc, nil
			}
			e.uc = nil
			break
		}
	}
	uc, err := p.get(ctx, l, dial)
	if err != nil {
		return nil, err
	}
	e := &c.entries[c.next]
	c.next = (c.next + 1) % len(c.entries)
	e.addr, e.uc = addr, uc
	return uc, nil
}

// pending is one request on its way: balanced, sent, awaiting its
// answer, or being retried. The fields an answer reads come first, the
// leases last: a request is filled by its session's reader and answered
// by an upstream connection's reader on another core, and what that
// reader reads should come in as few cache lines as it can.
type pending struct {
	s     *session       // its session (protocol, upstream, metrics)
	slot  *slot          // &sl, or nil for a one-way request
	lease *cluster.Lease // the current attempt's, one of leases; nil if none
	pol   *Policy
	mc    *methodCounters // nil: no metrics
	req   Frame
	buf   *readBuf // req's read buffer, released with pd
	// start: when the request was read, for metrics
	start time.Time
	// deadline is when the request times out (zero: never); hidx its
	// place in its connection's deadline heap (-1: not in it); expired,
	// once it was answered with the timeout error: its late answer is
	// dropped. Under the connection's mu.
	deadline time.Time
	hidx     int
	expired  bool
	downID   uint64 // the client's id, put back in the response
	// next links the requests of a run queued for the writer goroutine as
	// one (upConn.enqueueRun); nil otherwise
	next *pending
	// for retries
	c       *cluster.Cluster
	key     uint64
	retries int // counted retries made (reset, busy)
	// sl is the request's place among its session's answers (slot)
	sl slot
	// leases hold the attempts' leases in the request itself, so a pick
	// allocates nothing: a retry picks into the one lease points not to.
	leases [2]cluster.Lease
}

// errBusy is the outcome recorded on an endpoint that said it was busy.
var errBusy = errors.New("rpc: upstream busy")

// again moves pd to another endpoint after a failure of kind on, which
// its lease already recorded (or which needs no record: a failed dial):
// when the policy retries it, within the route's attempts (counted), the
// request's deadline and the cluster's retry budget. It reports whether
// pd now holds a new lease.
func (pd *pending) again(on RetryOn, counted bool, cause error) bool {
	// Whether the request may move at all is asked only now: failures
	// are rare, and a Redis key's hash is not computed twice per command.
	if pd.pol.On&on == 0 || pd.s.ctx.Err() != nil || !pd.s.p.retryable(pd.req) {
		return false
	}
	if counted && pd.retries >= pd.pol.Attempts {
		return false
	}
	if !pd.deadline.IsZero() && !time.Now().Before(pd.deadline) {
		return false
	}
	next := &pd.leases[0]
	if next == pd.lease {
		next = &pd.leases[1]
	}
	if err := pd.c.PickInto(next, pd.key, pd.lease, time.Time{}); err != nil {
		return false
	}
	if counted {
		pd.retries++
	}
	reason := reasonConnect
	switch on {
	case RetryReset:
		reason = reasonReset
	case RetryBusy:
		reason = reasonBusy
	}
	pd.s.log.Debug("rpc: retrying a request on another endpoint", "protocol", pd.s.p.Name(), "reason", reason, "from", pd.lease.Endpoint(), "to", next.Endpoint(), "err", cause)
	pd.s.up.Metrics.retry(pd.s.p.Name(), pd.s.up.Service, reason)
	pd.lease = next
	pd.hidx, pd.expired = -1, false
	return true
}

// finish answers the request with resp (a response frame) or, when err
// is set, with the protocol's error reply, and ends the lease. A request
// whose connection broke, or whose server was busy, goes to another
// endpoint instead when its policy allows.
func (pd *pending) finish(resp Frame, err error) { pd.finishTo(resp, err, nil, time.Time{}) }

// finishTo is finish that, with ab set, fills the answer's slot and
// appends it to ab instead of writing it: the connection's reader writes
// them all once its read is used up (signalBatch), so a client gets one
// write per batch of answers, not one per answer; a clean answer's lease
// and "ok" count wait in ab too, ended and counted with the batch's. now,
// when not zero, is when the answer was read (a read's clock reading, for
// the request's duration). pd is not to be touched once it returns
// (unless it is being retried): it is its session's spare then (after
// ab's leases are ended: the lease lives in pd).
func (pd *pending) finishTo(resp Frame, err error, ab *answerBatch, now time.Time) {
	if err == nil && ab != nil && pd.slot != nil && !pd.expired && pd.pol.On&RetryBusy == 0 &&
		pd.s.p.statuser == nil && pd.s.up.Answer == nil {
		// The common answer, as the steps below make it: a clean
		// response, "ok" (the codec gives no status), sent as read,
		// nothing to retry.
		ab.leases = append(ab.leases, pd.lease)
		if pd.mc != nil {
			ab.countOK(pd.mc)
			pd.s.mt.observe(pd.start, now, &ab.durations)
		}
		sl := pd.slot
		sl.pd, sl.resp, sl.err = pd, resp.Bytes(), nil
		ab.slots = append(ab.slots, sl)
		return
	}
	if pd.slot != nil && pd.lease != nil {
		switch {
		case err != nil && pd.pol.On&RetryReset != 0 && broke(err):
			pd.lease.Done(err)
			if pd.again(RetryReset, true, err) {
				go pd.s.dispatch(pd)
				return
			}
		case err == nil && pd.pol.On&RetryBusy != 0 && pd.s.p.busy(resp):
			pd.lease.Done(errBusy)
			if pd.again(RetryBusy, true, errBusy) {
				go pd.s.dispatch(pd)
				return
			}
		}
	}
	switch {
	case errors.Is(err, errPoolClosed):
		pd.lease.Release() // the agent's doing, not the endpoint's
	case err == nil && ab != nil && pd.slot != nil:
		ab.leases = append(ab.leases, pd.lease)
	default:
		pd.lease.Done(err)
	}
	status := "error"
	switch {
	case err == nil && resp != nil:
		status = pd.s.p.status(resp)
	case err == nil:
		status = "sent" // oneway
	case errors.Is(err, ErrRequestTimeout):
		status = "timeout"
	}
	if ab != nil && status == "ok" && pd.mc != nil {
		ab.countOK(pd.mc)
		pd.s.mt.observe(pd.start, now, &ab.durations)
	} else {
		pd.s.mt.request(pd.mc, status, pd.start, now)
	}
	if pd.slot == nil {
		pd.release() // oneway
		return
	}
	var b []byte
	switch {
	case err != nil:
		b = pd.s.p.errorReply(pd.req, err)
		if pd.s.p.IDWidth() > 0 && pd.req.ID() != pd.downID {
			// Sent with the upstream id: the reply takes the client's.
			b = pd.s.p.withID(b, pd.downID)
		}
	case pd.s.up.Answer != nil:
		b = pd.s.up.Answer(pd.req, resp)
	default:
		b = resp.Bytes()
	}
	sl := pd.slot
	if !pd.expired {
		// Its frame is released when its slot is marked, and it is reused
		// once its answer is taken (session.markLocked, take): an expired
		// request stays in its connection's tables until its late answer
		// comes or its id is forgotten, and is left to the collector
		// (with its slot, once taken). Every other request is finished
		// after it left its connection's tables, by the one goroutine
		// that holds it then.
		sl.pd = pd
	}
	if ab != nil {
		sl.resp, sl.err = b, err
		ab.slots = append(ab.slots, sl)
	} else {
		sl.complete(b, err)
	}
}

// release returns a finished one-way request (it has no slot) to
// pendings.
func (pd *pending) release() {
	pd.s.p.recycle(pd.req)
	pd.buf.release()
	pd.clear()
	pendings.Put(pd)
}

// clear drops what a finished request refers to, so a spare holds on to
// nothing, and makes it ready for its next use, which sets every field
// but leases (a pick sets up the lease it picks into). It is cheaper than
// zeroing the whole request with its two leases.
func (pd *pending) clear() {
	pd.req, pd.buf, pd.slot, pd.mc, pd.s, pd.c, pd.pol, pd.lease = nil, nil, nil, nil, nil, nil, nil, nil
	pd.sl = slot{}
	pd.downID, pd.key, pd.retries, pd.hidx, pd.expired = 0, 0, 0, -1, false
	pd.start, pd.deadline = time.Time{}, time.Time{}
}

// unsent answers a request its connection died before sending, or sends
// it to another endpoint when its policy allows.
func (pd *pending) unsent(err error) {
	if !errors.Is(err, errPoolClosed) && pd.again(RetryConnect, false, err) {
		go pd.s.dispatch(pd)
		return
	}
	pd.finish(nil, err)
}

// broke reports whether err is a connection's end that says nothing of
// whether the request ran (not the agent's pool closing, not a timeout).
func broke(err error) bool {
	return !errors.Is(err, errPoolClosed) && !errors.Is(err, context.DeadlineExceeded)
}

// upConn is one shared upstream connection: one goroutine writes the
// requests queued by every downstream connection, batching them into as
// few writes as the queue allows, another reads responses.
type upConn struct {
	pool     *Pool
	c        *net.TCPConn
	raw      io.ReadWriter // c, read and written with raw calls
	addr     netip.AddrPort
	send     chan *pending
	inflight atomic.Int64
	// queued counts the requests handed to the writer goroutine and not
	// yet written: while any are, senders queue too (order).
	queued atomic.Int64
	// wmu is held while a request is registered and written to bw: by the
	// writer goroutine, or by a sender writing inline.
	wmu       sync.Mutex
	bw        *bufio.Writer
	oneways   []*pending // the one-way requests of the run being written (under wmu)
	wrun      []*pending // the run the writer goroutine writes (its own)
	goingAway atomic.Bool
	// gone: the connection left the pool (it failed, went away, or the
	// pool closed); a reader's cache of connections (upCache) stops
	// handing it out.
	gone atomic.Bool

	mu sync.Mutex
	// fifo (IDWidth 0): sent, awaiting a response, in order, from fh on.
	// Answered ones move fh, not the slice's start, so its array is
	// reused rather than reallocated as appends reach its end.
	fifo   []*pending
	fh     int
	byID   map[uint64]*pending // otherwise
	nextID uint64
	err    error // set once: the connection is dead
	stop   chan struct{}
	// requests with a deadline, and the timer that expires them, set to
	// fire at timerAt (zero: not set)
	dl      deadlines
	timer   *time.Timer
	timerAt time.Time
	// armed is the read deadline set on c (zero: none); since, when the
	// response clock last started: a wait began or an answer came (see
	// waitBegins)
	armed, since time.Time
	// fr reads responses; readAt is when it read the frame the reader
	// delivers (reader only)
	fr     frameReader
	readAt time.Time
	// frameBuf is the read buffer of the frame the reader delivers
	// (reader only)
	frameBuf *readBuf
	// ab holds what the reader completed and has not handed on yet
	// (reader only)
	ab answerBatch
	// run is a read's worth of frames, matched the requests its
	// responses answer (reader only)
	run     []Frame
	matched []*pending
}

func newUpConn(p *Pool, c *net.TCPConn, addr netip.AddrPort) *upConn {
	uc := &upConn{pool: p, c: c, addr: addr, send: make(chan *pending, p.opt.MaxInFlight), stop: make(chan struct{})}
	// Raw calls (rawsock): no sysmon wake-up per batch. c's deadlines
	// and Close still end a wait.
	uc.raw = io.ReadWriter(c)
	if raw, err := rawsock.New(c); err == nil {
		uc.raw = raw
	}
	uc.bw = bufio.NewWriterSize(uc.raw, 32<<10)
	if p.p.IDWidth() > 0 {
		uc.byID = map[uint64]*pending{}
	}
	return uc
}

// enqueue hands a request to the writer, or writes it from the caller's
// goroutine when it can (writeInline); flush false leaves a request
// written inline in the buffer (more are coming: the caller flushes
// later), and buffered reports that. It fails at once if the connection
// is already dead.
func (uc *upConn) enqueue(pd *pending, flush bool) (buffered bool, err error) {
	uc.inflight.Add(1)
	if ok, err := uc.writeInline(pd, flush); ok {
		if err != nil {
			uc.inflight.Add(-1) // never sent: the caller may try elsewhere
		}
		return !flush && err == nil, err
	}
	uc.queued.Add(1)
	select {
	case uc.send <- pd:
		// The writer may have quit between the two cases: then nobody
		// else takes pd from the queue.
		select {
		case <-uc.stop:
			uc.drainSend()
		default:
		}
		return false, nil
	case <-uc.stop:
		uc.queued.Add(-1)
		uc.inflight.Add(-1)
		uc.mu.Lock()
		err := uc.err
		uc.mu.Unlock()
		return false, err
	}
}

func (uc *upConn) writeLoop() {
	for {
		var pd *pending
		select {
		case pd = <-uc.send:
		case <-uc.stop:
			uc.drainSend()
			return
		}
		run := uc.unlink(pd)
		uc.wmu.Lock()
		err := uc.writeRun(run, len(uc.send) == 0)
		uc.queued.Add(-1)
		uc.wmu.Unlock()
		if err != nil {
			for _, pd := range run {
				uc.inflight.Add(-1)
				pd.unsent(err)
			}
		}
		clear(run)
	}
}

// unlink takes apart the run of requests queued as one (linked through
// next, from pd), into the writer's scratch slice.
func (uc *upConn) unlink(pd *pending) []*pending {
	run := uc.wrun[:0]
	for pd != nil {
		next := pd.next
		pd.next = nil
		run = append(run, pd)
		pd = next
	}
	uc.wrun = run
	return run
}

// enqueueRun is enqueue for a run of requests to this connection, read
// together: written inline as one run (writeRun: one registration under
// mu, one flush) when nothing is queued and no one is writing, else
// queued for the writer goroutine as one item. It reports how many of pds, from the first, the
// connection took (the rest: it is dead, and they were never sent), and
// whether requests it took wait in the buffer unflushed (flush false).
func (uc *upConn) enqueueRun(pds []*pending, flush bool) (taken int, buffered bool) {
	uc.inflight.Add(int64(len(pds)))
	if ok, err := uc.writeInlineRun(pds, flush); ok {
		if err != nil {
			uc.inflight.Add(-int64(len(pds))) // never sent: the caller may try elsewhere
			return 0, false
		}
		return len(pds), !flush
	}
	// Queued as one item, the requests linked in their order: one
	// hand-off to the writer goroutine for the run.
	for i, pd := range pds[:len(pds)-1] {
		pd.next = pds[i+1]
	}
	uc.queued.Add(1)
	select {
	case uc.send <- pds[0]:
		// The writer may have quit between the two cases: then nobody
		// else takes the run from the queue.
		select {
		case <-uc.stop:
			uc.drainSend()
		default:
		}
		return len(pds), false
	case <-uc.stop:
		uc.queued.Add(-1)
		uc.inflight.Add(-int64(len(pds)))
		for _, pd := range pds {
			pd.next = nil
		}
		return 0, false
	}
}

// writeInline sends pd from the caller's goroutine when nothing is queued
// and no one is writing, which saves the writer goroutine a wake-up per
// request. Requests are registered for their answers in the order they
// are written (both under wmu), so a pipelined protocol's answers still
// match; and since a request is written inline only when none is queued
// (queued counts those taken by the writer until written), requests never
// overtake one queued before them: a client's SET then GET reach the
// server in that order. ok false: the caller queues pd instead.
func (uc *upConn) writeInline(pd *pending, flush bool) (ok bool, err error) {
	one := [1]*pending{pd}
	return uc.writeInlineRun(one[:], flush)
}

// writeInlineRun is writeInline for a run of requests, written in order.
func (uc *upConn) writeInlineRun(pds []*pending, flush bool) (ok bool, err error) {
	if uc.queued.Load() > 0 || !uc.wmu.TryLock() {
		return false, nil
	}
	defer uc.wmu.Unlock()
	if uc.queued.Load() > 0 {
		return false, nil // queued meanwhile: keep them in order
	}
	return true, uc.writeRun(pds, flush)
}

// flush sends what inline writes left in the buffer.
func (uc *upConn) flush() {
	uc.wmu.Lock()
	err := uc.bw.Flush()
	uc.wmu.Unlock()
	if err != nil {
		uc.fail(err)
	}
}

// write registers pd for its answer and writes it, flushing when flush is
// set; called with wmu held. It returns the connection's error, without
// sending, when the connection is already dead; a failed write kills the
// connection, and pd is answered with the others.
func (uc *upConn) write(pd *pending, flush bool) error {
	one := [1]*pending{pd}
	return uc.writeRun(one[:], flush)
}

// writeRun is write for a run of requests: registered for their answers
// in order under one hold of mu, then written, and flushed once at the
// end when flush is set. On a dead connection none is sent.
func (uc *upConn) writeRun(pds []*pending, flush bool) error {
	uc.mu.Lock()
	if uc.err != nil {
		err := uc.err
		uc.mu.Unlock()
		return err
	}
	for _, pd := range pds {
		if pd.req.Kind() == Oneway {
			// Nothing to match: sent as it is, done once written. (The
			// others may be answered, and reused, once written: only the
			// one-way ones are looked at again.)
			uc.oneways = append(uc.oneways, pd)
			continue
		}
		if uc.byID != nil {
			// A fresh id not in use: with ids of a byte or two, skip the
			// ones still awaiting an answer.
			mask := uc.pool.p.idMask()
			for {
				uc.nextID = (uc.nextID + 1) & mask
				if _, busy := uc.byID[uc.nextID]; !busy && uc.nextID != 0 {
					break
				}
			}
			pd.req.SetID(uc.nextID)
			uc.byID[uc.nextID] = pd
			if len(uc.byID) == 1 {
				uc.waitBegins()
			}
		} else {
			if len(uc.fifo) == cap(uc.fifo) && uc.fh*2 >= len(uc.fifo) {
				// Full up to its end and half answered: move what waits
				// to the front (else append grows it: no copying of a
				// long queue per request).
				k := copy(uc.fifo, uc.fifo[uc.fh:])
				clear(uc.fifo[k:])
				uc.fifo, uc.fh = uc.fifo[:k], 0
			}
			uc.fifo = append(uc.fifo, pd)
			if len(uc.fifo)-uc.fh == 1 {
				uc.waitBegins()
			}
		}
		if !pd.deadline.IsZero() {
			uc.schedule(pd)
		}
	}
	uc.mu.Unlock()
	var err error
	for _, pd := range pds {
		if _, err = uc.bw.Write(pd.req.Bytes()); err != nil {
			break
		}
	}
	if err == nil && flush {
		err = uc.bw.Flush()
	}
	if err != nil {
		uc.fail(err)
	}
	for i, pd := range uc.oneways {
		uc.inflight.Add(-1)
		pd.finish(nil, err)
		uc.oneways[i] = nil
	}
	uc.oneways = uc.oneways[:0]
	return nil
}

// drainSend fails the requests still queued after the connection died.
func (uc *upConn) drainSend() {
	for {
		select {
		case pd := <-uc.send:
			uc.queued.Add(-1)
			for pd != nil {
				next := pd.next
				pd.next = nil
				uc.inflight.Add(-1)
				pd.unsent(uc.err)
				pd = next
			}
		default:
			return
		}
	}
}

// The response timeout (PoolOptions.ResponseTimeout) is kept lazily: the
// socket's read deadline is set when a wait begins and no deadline is set,
// and moved only when it fires, to ResponseTimeout after the last answer
// (since), or cleared when nothing waits. Moving it at every answer would
// cost a runtime timer update, under the runtime's locks, per response.

// waitBegins starts the response clock for the first request of a wait
// (nothing was waiting). Called with mu held.
func (uc *upConn) waitBegins() {
	d := uc.pool.opt.ResponseTimeout
	if d <= 0 {
		return
	}
	uc.since = time.Now()
	if uc.armed.IsZero() {
		uc.armed = uc.since.Add(d)
		uc.c.SetReadDeadline(uc.armed)
	}
}

// waiting reports whether requests wait for answers; called with mu held.
func (uc *upConn) waiting() bool { return len(uc.fifo) > uc.fh || len(uc.byID) > 0 }

// deadlineFired decides what a read deadline that fired means: nothing
// waits (the deadline is cleared) or an answer came within the timeout
// (it moves to ResponseTimeout after that answer), and the reader reads
// on; or the connection really went ResponseTimeout without answering
// (ok false).
func (uc *upConn) deadlineFired() (ok bool) {
	uc.mu.Lock()
	defer uc.mu.Unlock()
	now := time.Now()
	switch next := uc.since.Add(uc.pool.opt.ResponseTimeout); {
	case !uc.waiting():
		uc.armed = time.Time{}
	case next.After(now):
		uc.armed = next
	default:
		return false
	}
	uc.c.SetReadDeadline(uc.armed)
	return true
}

func (uc *upConn) readLoop() {
	// stamp: a read's clock reading times its answers' requests (the
	// request metrics) and moves the response timeout.
	uc.fr = frameReader{r: uc.raw, p: uc.pool.p, side: Server, idle: uc.signalBatch, stamp: true}
	fr := &uc.fr
	for {
		f, err := fr.next()
		if err != nil {
			if isTimeout(err) && uc.pool.opt.ResponseTimeout > 0 {
				if uc.deadlineFired() {
					continue
				}
				err = ErrResponseTimeout
			}
			uc.signalBatch()
			uc.fail(err)
			return
		}
		uc.readAt, uc.frameBuf = fr.now, fr.cur
		// The frames of one read are one batch: one buffer, one clock
		// reading, matched under one hold of mu (deliverRun).
		uc.run = append(uc.run, f)
		for len(uc.run) < maxRun {
			f := fr.nextBuffered()
			if f == nil {
				break
			}
			uc.run = append(uc.run, f)
		}
		err = uc.deliverRun(uc.run)
		clear(uc.run)
		uc.run = uc.run[:0]
		if err != nil {
			uc.signalBatch()
			uc.fail(err)
			return
		}
	}
}

// signalBatch writes the answers the reader has completed since it last
// read to their clients, one write per client where the client's socket
// has room (else its session's writer takes the rest); called by the
// reader before it reads again.
func (uc *upConn) signalBatch() {
	uc.ab.flush()
}

// answerBatch is what an upstream connection's reader completed since
// it last read and has not handed on yet (reader only): the answers'
// slots (seen: the sessions they go to), the leases of the requests
// answered cleanly, and their "ok" counts (a run of one method) and
// latencies.
type answerBatch struct {
	slots  []*slot
	seen   []*session
	leases []*cluster.Lease
	okMC   *methodCounters
	okN    int
	// durations gathers the latencies of answers counted "ok"
	durations durationRun
}

// countOK counts one "ok" answer of the method mc counts, added to its
// counter with the others of a run of one method; nil adds the run.
func (ab *answerBatch) countOK(mc *methodCounters) {
	if mc != nil && mc == ab.okMC {
		ab.okN++
		return
	}
	if ab.okN > 0 {
		ab.okMC.ok.Add(float64(ab.okN))
	}
	ab.okMC, ab.okN = mc, 0
	if mc != nil {
		ab.okN = 1
	}
}

// flush ends the batch's leases, adds its counts, then marks its answers
// and writes them to their clients (completeBatch); the requests answered
// are their sessions' spares from then on.
func (ab *answerBatch) flush() {
	cluster.DoneRun(ab.leases)
	clear(ab.leases)
	ab.leases = ab.leases[:0]
	ab.countOK(nil)
	ab.durations.flush()
	ab.seen = completeBatch(ab.slots, ab.seen)
	ab.slots = ab.slots[:0]
}

var (
	errUnsolicited = errors.New("rpc: upstream sent a response nobody asked for")
	errUpstreamReq = errors.New("rpc: upstream sent a request on a shared connection")
	errGoneAway    = errors.New("rpc: upstream went away")
)

// deliverRun delivers the frames of one read in order: each run of
// responses is matched to its requests under one hold of mu (matchRun),
// anything else one by one (deliver).
func (uc *upConn) deliverRun(frames []Frame) error {
	for i := 0; i < len(frames); {
		if frames[i].Kind() != Response {
			if err := uc.deliver(frames[i]); err != nil {
				return err
			}
			i++
			continue
		}
		j := i + 1
		for j < len(frames) && frames[j].Kind() == Response {
			j++
		}
		pds := uc.matchRun(frames[i:j])
		// One count for the run's answers, not one atomic add each.
		left := uc.inflight.Add(-int64(len(pds)))
		gone := len(pds) > 0 && left == 0 && uc.goingAway.Load()
		for k, pd := range pds {
			uc.answer(frames[i+k], pd)
		}
		clear(pds)
		if gone {
			return errGoneAway
		}
		if len(pds) < j-i {
			return errUnsolicited
		}
		i = j
	}
	return nil
}

// deliver handles one frame that is not a response.
func (uc *upConn) deliver(f Frame) error {
	switch f.Kind() {
	case Heartbeat:
		if hb := uc.pool.p.heartbeater; hb != nil {
			uc.pool.opt.Metrics.heartbeat(uc.pool.p.Name(), Server)
			// Written by the reader: rare, and ordering with requests does
			// not matter for a heartbeat reply.
			_, err := uc.c.Write(hb.HeartbeatReply(f))
			return err
		}
		return errUpstreamReq
	case Request, Oneway:
		sr := uc.pool.p.serverReqs
		if sr == nil {
			return errUpstreamReq
		}
		if b := sr.ServerRequestReply(f); len(b) > 0 {
			// Written by the reader, as heartbeat replies are.
			uc.wmu.Lock()
			_, err := uc.bw.Write(b)
			if err == nil {
				err = uc.bw.Flush()
			}
			uc.wmu.Unlock()
			return err
		}
		return nil
	case GoAway:
		// No new requests; the waiting ones finish, then it closes.
		uc.pool.drop(uc)
		uc.goingAway.Store(true)
		if uc.inflight.Load() == 0 {
			return errGoneAway
		}
		return nil
	default:
		return errUpstreamReq
	}
}

// matchRun takes the requests a run of responses answer out of the
// connection's tables, under one hold of mu: into uc.matched, one per
// response from the first, ending before a response nobody asked for.
func (uc *upConn) matchRun(resps []Frame) []*pending {
	uc.matched = uc.matched[:0]
	uc.mu.Lock()
	for _, f := range resps {
		var pd *pending
		if uc.byID != nil {
			pd = uc.byID[f.ID()]
			delete(uc.byID, f.ID())
		} else if uc.fh < len(uc.fifo) {
			pd = uc.fifo[uc.fh]
			uc.fifo[uc.fh] = nil
			uc.fh++
			if uc.fh == len(uc.fifo) {
				uc.fifo, uc.fh = uc.fifo[:0], 0
			}
		}
		if pd == nil {
			break
		}
		if pd.hidx >= 0 {
			heap.Remove(&uc.dl, pd.hidx)
		}
		uc.matched = append(uc.matched, pd)
	}
	if len(uc.matched) > 0 {
		uc.since = uc.readAt // progress: the clock starts again for the rest
	}
	uc.mu.Unlock()
	return uc.matched
}

// answer completes pd with its response f, into the reader's batch of
// answers. The caller counts it out of inflight.
func (uc *upConn) answer(f Frame, pd *pending) {
	if pd.expired {
		// Answered with the timeout already: the late answer is dropped.
		uc.fr.giveBack(f)
		uc.frameBuf.release()
		return
	}
	if uc.pool.p.ids {
		f.SetID(pd.downID)
	}
	// Once finished, the response's bytes are in its answer and pd is
	// released: f is no one's, unless the route rewrites answers.
	rewrites := pd.s.up.Answer != nil
	n := len(uc.ab.slots)
	pd.finishTo(f, nil, &uc.ab, uc.readAt)
	if !rewrites {
		uc.fr.giveBack(f)
		// The answer's slot holds the response's bytes until they are
		// taken (session.take), and releases their buffer then; a
		// response not answered (the call is retried) holds nothing.
		if len(uc.ab.slots) > n {
			uc.ab.slots[len(uc.ab.slots)-1].buf = uc.frameBuf
		} else {
			uc.frameBuf.release()
		}
	}
}

// fail kills the connection once: it leaves the pool, closes, and every
// request waiting on it gets an error reply.
func (uc *upConn) fail(err error) {
	uc.gone.Store(true) // before err: a cache that finds it dead looks again
	uc.mu.Lock()
	if uc.err != nil {
		uc.mu.Unlock()
		return
	}
	uc.err = err
	waiting := uc.fifo[uc.fh:]
	uc.fifo, uc.fh = nil, 0
	for _, pd := range uc.byID {
		waiting = append(waiting, pd)
	}
	uc.byID = nil
	uc.dl = nil
	if uc.timer != nil {
		uc.timer.Stop()
	}
	close(uc.stop)
	uc.mu.Unlock()
	uc.pool.drop(uc)
	uc.c.Close()
	for _, pd := range waiting {
		uc.inflight.Add(-1)
		if !pd.expired { // else already answered
			pd.finish(nil, err)
		}
	}
}

// schedule puts pd in the deadline heap and makes sure the timer fires
// by its deadline. The timer may fire early (a request answered in time
// leaves it set): expire then only sets it again. Called with mu held.
func (uc *upConn) schedule(pd *pending) {
	heap.Push(&uc.dl, pd)
	if !uc.timerAt.IsZero() && !pd.deadline.Before(uc.timerAt) {
		return
	}
	uc.timerAt = pd.deadline
	d := time.Until(pd.deadline)
	if uc.timer == nil {
		uc.timer = time.AfterFunc(d, uc.expire)
	} else {
		uc.timer.Reset(d)
	}
}

// expire answers the requests past their deadline with ErrRequestTimeout,
// leaving the connection and every other request on it alone. With ids,
// an expired request keeps its id (the late answer is recognised and
// dropped) until the pool's ResponseTimeout later; without, it keeps its
// place in the response order until its answer comes.
func (uc *upConn) expire() {
	uc.mu.Lock()
	uc.timerAt = time.Time{}
	if uc.err != nil {
		uc.mu.Unlock()
		return
	}
	now := time.Now()
	grace := uc.pool.opt.ResponseTimeout
	if grace <= 0 {
		grace = time.Minute
	}
	var due []*pending
	forgot := 0
	for len(uc.dl) > 0 && !uc.dl[0].deadline.After(now) {
		pd := heap.Pop(&uc.dl).(*pending)
		if pd.expired {
			// Its answer never came: the id may be used again.
			delete(uc.byID, pd.req.ID())
			forgot++
			continue
		}
		pd.expired = true
		due = append(due, pd)
		if uc.byID != nil {
			pd.deadline = now.Add(grace)
			heap.Push(&uc.dl, pd)
		}
	}
	if len(uc.dl) > 0 {
		uc.timerAt = uc.dl[0].deadline
		uc.timer.Reset(time.Until(uc.timerAt))
	}
	uc.mu.Unlock()
	left := uc.inflight.Add(int64(-forgot))
	for _, pd := range due {
		pd.finish(nil, ErrRequestTimeout)
	}
	if forgot > 0 && left == 0 && uc.goingAway.Load() {
		uc.fail(errGoneAway)
	}
}

// deadlines is a min-heap (container/heap) of requests by deadline; each
// knows its index, so an answered request leaves it in O(log n).
type deadlines []*pending

func (h deadlines) Len() int           { return len(h) }
func (h deadlines) Less(i, j int) bool { return h[i].deadline.Before(h[j].deadline) }

func (h deadlines) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].hidx, h[j].hidx = i, j
}

func (h *deadlines) Push(x any) {
	pd := x.(*pending)
	pd.hidx = len(*h)
	*h = append(*h, pd)
}

func (h *deadlines) Pop() any {
	q := *h
	pd := q[len(q)-1]
	q[len(q)-1] = nil
	*h = q[:len(q)-1]
	pd.hidx = -1
	return pd
}
