package rpc

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// Upstream is what the engine knows of one captured connection: where its
// requests go and how to reach there. The engine fills it once per
// connection; Serve does not modify it.
type Upstream struct {
	// Cluster takes every request Route does not send elsewhere; nil
	// answers each with an error reply.
	Cluster *cluster.Cluster
	// Route, when set, picks the cluster of each request (attribute
	// routes) and its policy (nil: Policy); a nil cluster answers the
	// request with ErrNoCluster.
	Route func(req Frame) (*cluster.Cluster, *Policy)
	// Policy is the timeout and retries of requests Route gives none;
	// nil: DefaultPolicy.
	Policy *Policy
	// Answer, when set, makes the bytes sent back for a response to req
	// (RocketMQ's route replies are rewritten to the service address);
	// nil sends the response as read.
	Answer func(req, resp Frame) []byte
	// Service names the destination service in metrics.
	Service string
	// Metrics counts requests and heartbeats; nil counts nothing.
	Metrics *Metrics
	// Dial makes an upstream connection from the pod's network namespace
	// with the bypass mark.
	Dial cluster.Dialer
	// Key is the client's affinity hash, the balancing key of requests the
	// codec gives none (Keyer).
	Key uint64
	// Draining is closed when the agent drains: Serve stops reading, sends
	// the protocol's goaway if it has one, answers every request it has
	// read, then closes the connection.
	Draining <-chan struct{}
	// Log receives one line per notable event; nil means slog.Default().
	Log *slog.Logger
}

// Errors requests are answered with (through the codec's Hijacker).
var (
	// ErrNoCluster: the connection's route has no cluster.
	ErrNoCluster = errors.New("rpc: no cluster for this destination")
	// ErrDraining: the agent is draining.
	ErrDraining = errors.New("rpc: proxy is draining")
)

// maxQueued bounds the requests one downstream connection has in flight;
// its reader stops reading beyond it.
const maxQueued = 1024

// session is one downstream connection.
type session struct {
	ctx  context.Context
	down net.Conn
	up   *Upstream
	pool *Pool
	p    *Protocol
	log  *slog.Logger
	fr   frameReader
	mt   *serviceTable // this protocol's and service's series; nil: no metrics
	// methods finds a request's counters in mt (reader only)
	methods methodCache
	// ups finds the shared connection a request goes on (reader only)
	ups upCache
	// ordered: answers go out in request order (protocols without ids);
	// else as they complete.
	ordered bool
	answers
	// unflushed: upstream connections holding requests written inline
	// and not flushed yet (reader only)
	unflushed []*upConn
	// a read's worth of frames the reader handles as one batch, and its
	// requests and their leases (reader only; see handle)
	run    []Frame
	ends   []int
	pds    []*pending
	leases []*cluster.Lease
	groups []sendGroup
	// set by the reader before it returns
	pinned Frame
}

// Serve proxies one downstream connection speaking pool's protocol until
// the client closes it, ctx ends, the agent drains, or either side breaks
// the protocol; it closes down before returning. Each request is
// balanced on its own (cluster.Pick with the codec's key, else up.Key) and
// sent on pool's shared connection to the picked endpoint; answers go back
// as they complete (protocols with ids) or in request order (without).
// Heartbeats are answered locally when the codec is a
// Heartbeater. A request the codec's Pinner pins ends multiplexing: that
// request and everything after it are relayed as bytes to an upstream
// connection of this downstream connection's own. down may be any
// net.Conn (a sniffer's replaying connection).
func Serve(ctx context.Context, down net.Conn, up *Upstream, pool *Pool) {
	defer down.Close()
	s := &session{
		ctx: ctx, down: down, up: up, pool: pool, p: pool.p, log: up.Log, mt: up.Metrics.table(pool.p.Name(), up.Service),
		// A client of a protocol with ids matches answers by id: a slow
		// call must not hold the answers of the calls after it.
		ordered: pool.p.IDWidth() == 0,
	}
	s.answers = answers{
		idle: make(chan struct{}), room: make(chan struct{}, 1),
		kick: make(chan struct{}, 1), quit: make(chan struct{}), raw: downConn(down),
	}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.fr = frameReader{r: s.raw, p: s.p, side: Client, idle: s.flushUp, stamp: true}
	stop := context.AfterFunc(ctx, func() { down.Close() })
	defer stop()
	unwatch := func() {}
	if up.Draining != nil {
		done, watched := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(watched)
			select {
			case <-up.Draining:
				// Wake a reader blocked between requests.
				down.SetReadDeadline(time.Unix(1, 0))
			case <-done:
			}
		}()
		var once sync.Once
		unwatch = func() { once.Do(func() { close(done); <-watched }) }
		defer unwatch()
	}
	go s.writeLoop()
	defer close(s.quit)
	s.readLoop()
	s.flushUp()
	s.waitAnswers()
	if s.pinned == nil || ctx.Err() != nil {
		return
	}
	// A pinned connection is bytes now, with no request boundary for a
	// drain to stop at: it ends when either side closes or ctx ends.
	unwatch()
	down.SetReadDeadline(time.Time{})
	s.relayPinned()
}

func (s *session) draining() bool {
	select {
	case <-s.up.Draining:
		return true
	default:
		return false
	}
}

// maxRun bounds the frames a reader takes from one read as a batch.
const maxRun = 128

// readLoop reads and dispatches requests until the connection ends: the
// frames of one read are handled as a batch (handle).
func (s *session) readLoop() {
	for {
		if s.up.Draining != nil && s.draining() && !s.fr.ready() {
			s.goAway()
			return
		}
		f, err := s.fr.next()
		if err != nil {
			if s.up.Draining != nil && s.draining() && isTimeout(err) {
				// Woken for the drain with at most part of a frame read:
				// every whole one has been dispatched.
				s.goAway()
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && s.ctx.Err() == nil {
				s.log.Debug("rpc: downstream ends", "protocol", s.p.Name(), "err", err)
				if hj := s.p.hijacker; hj != nil && !isTimeout(err) && !errors.Is(err, io.ErrUnexpectedEOF) {
					s.local(hj.ErrorReply(nil, err))
				}
			}
			return
		}
		s.run, s.ends = append(s.run, f), append(s.ends, s.fr.start)
		for len(s.run) < maxRun {
			f := s.fr.nextBuffered()
			if f == nil {
				break
			}
			s.run, s.ends = append(s.run, f), append(s.ends, s.fr.start)
		}
		more := s.handle()
		clear(s.run)
		s.run, s.ends = s.run[:0], s.ends[:0]
		if !more {
			return
		}
	}
}

// handle dispatches the frames of s.run in order: runs of requests are
// forwarded together (forwardRun), heartbeats answered in their turn. It
// reports false when the reader is to stop: at a frame that is not a
// request, or at a request the Pinner pins (s.pinned), whose later frames
// go back to the reader's buffer unread, to be relayed as bytes.
func (s *session) handle() bool {
	from := 0 // the first request not forwarded yet
	for i, f := range s.run {
		switch f.Kind() {
		case Heartbeat:
			if hb := s.p.heartbeater; hb != nil {
				s.forwardRun(s.run[from:i])
				from = i + 1
				s.up.Metrics.heartbeat(s.p.Name(), Client)
				s.local(hb.HeartbeatReply(f))
				continue
			}
		case Request, Oneway:
		default:
			s.forwardRun(s.run[from:i])
			s.log.Debug("rpc: client sent a non-request", "protocol", s.p.Name(), "kind", f.Kind())
			return false
		}
		if s.p.pinner != nil && s.p.pinner.Pins(f) {
			s.forwardRun(s.run[from:i])
			s.pinned = f
			s.fr.unread(s.ends[i], len(s.run)-1-i)
			return false
		}
	}
	s.forwardRun(s.run[from:])
	return true
}

// goAway queues the protocol's goaway frame, if it has one.
func (s *session) goAway() {
	if ga := s.p.goAwayer; ga != nil {
		s.local(ga.GoAwayFrame())
	}
}

// local answers with bytes made by the agent, in their turn.
func (s *session) local(b []byte) {
	if sl := s.register(); sl != nil {
		sl.complete(b, nil)
	}
}

// key is a request's balancing key.
func (s *session) key(f Frame) uint64 {
	if k := s.p.keyer; k != nil {
		if key, ok := k.BalanceKey(f); ok {
			return key
		}
	}
	return s.up.Key
}

// forwardRun balances a run of requests read together and queues them on
// shared upstream connections: registered for their answers under one
// lock (registerRun), picked once for the run where the cluster does not
// pick by key (cluster.PickRun; keyed requests are picked one by one),
// and written to each upstream connection as one run (upConn.enqueueRun),
// whichever order their endpoints take turns in.
// A request that cannot be sent is answered with the protocol's error
// reply; one never sent moves to another endpoint when its policy allows
// (never a keyed or one-way request: see Protocol.retryable).
func (s *session) forwardRun(frames []Frame) {
	if len(frames) == 0 {
		return
	}
	pds := s.registerRun(frames)
	for i, pd := range pds {
		if !s.prepare(pd, frames[i]) {
			pds[i] = nil // answered already
		}
	}
	s.pickRun(pds)
	// Each connection gets its requests as one run, in their order; the
	// runs of different connections need no order between them (answers
	// keep theirs through their slots).
	last := !s.fr.ready()
	groups := s.groups[:0]
	var (
		prev *pending
		uc   *upConn
	)
	for i, pd := range pds {
		if pd == nil {
			continue
		}
		if prev == nil || pd.lease.Endpoint() != prev.lease.Endpoint() || s.pool.opt.ConnsPerEndpoint != 1 {
			var err error
			if uc, err = s.ups.get(s.ctx, s.pool, pd.lease, s.up.Dial); err != nil {
				// The whole path, with its retries, for this one.
				s.dispatchFlush(pd, last && i == len(pds)-1, true)
				prev = nil
				continue
			}
		}
		prev = pd
		k := 0
		for k < len(groups) && groups[k].uc != uc {
			k++
		}
		if k == len(groups) {
			if k < cap(groups) {
				groups = groups[:k+1]
				groups[k].uc = uc
			} else {
				groups = append(groups, sendGroup{uc: uc})
			}
		}
		groups[k].pds = append(groups[k].pds, pd)
	}
	for k := range groups {
		g := &groups[k]
		sent, buffered := g.uc.enqueueRun(g.pds, last)
		if buffered && !slices.Contains(s.unflushed, g.uc) {
			s.unflushed = append(s.unflushed, g.uc)
		}
		// Those the connection did not take (it died): the whole path.
		for i := sent; i < len(g.pds); i++ {
			s.dispatchFlush(g.pds[i], last && i == len(g.pds)-1, true)
		}
		clear(g.pds)
		g.pds, g.uc = g.pds[:0], nil
	}
	s.groups = groups[:0]
	clear(pds)
}

// sendGroup is the requests of a batch bound for one upstream connection.
type sendGroup struct {
	uc  *upConn
	pds []*pending
}

// prepare fills in a registered request read as f and routes it; false
// when it was answered already (no cluster).
func (s *session) prepare(pd *pending, f Frame) bool {
	// Every field is set here or by registerRun but leases (see
	// pending.clear). start: when the request's bytes were read, one
	// clock reading for a read's worth of requests.
	pd.req, pd.buf, pd.start, pd.s, pd.pol = f, s.fr.cur, s.fr.now, s, s.up.Policy
	pd.lease, pd.mc, pd.c, pd.key, pd.downID, pd.retries = nil, nil, nil, 0, 0, 0
	pd.deadline, pd.hidx, pd.expired = time.Time{}, -1, false
	if s.mt != nil {
		pd.mc = s.methods.get(s.mt, f.Attr("method"))
	}
	c := s.up.Cluster
	if s.up.Route != nil {
		var pol *Policy
		if c, pol = s.up.Route(f); pol != nil {
			pd.pol = pol
		}
	}
	if pd.pol == nil {
		pd.pol = DefaultPolicy
	}
	if c == nil {
		pd.finish(nil, ErrNoCluster)
		return false
	}
	if s.p.ids {
		pd.downID = f.ID()
	}
	if pd.pol.Timeout > 0 {
		pd.deadline = pd.start.Add(pd.pol.Timeout)
	}
	pd.c = c
	if c.UsesKey() {
		// A key costs work (a Redis key's hash): only for clusters that
		// pick by it.
		pd.key = s.key(f)
	}
	return true
}

// pickRun picks an endpoint for every request of pds (nil: answered),
// each run of requests to one cluster that does not pick by key in one
// call (cluster.PickRun: the balancer still decides per request); a
// request that gets none is answered with the error (and its place in pds
// cleared).
func (s *session) pickRun(pds []*pending) {
	for i := 0; i < len(pds); {
		pd := pds[i]
		if pd == nil {
			i++
			continue
		}
		j := i + 1
		if !pd.c.UsesKey() {
			for j < len(pds) && pds[j] != nil && pds[j].c == pd.c {
				j++
			}
		}
		if j-i > 1 {
			s.leases = s.leases[:0]
			for _, pd := range pds[i:j] {
				s.leases = append(s.leases, &pd.leases[0])
			}
			// The read's clock reading stands in for the cluster's.
			shared := pd.c.PickRun(s.leases, pd.start)
			clear(s.leases)
			if shared {
				for _, pd := range pds[i:j] {
					pd.lease = &pd.leases[0]
				}
				i = j
				continue
			}
		}
		for k := i; k < j; k++ {
			pd := pds[k]
			if err := pd.c.PickInto(&pd.leases[0], pd.key, nil, pd.start); err != nil {
				pd.finish(nil, err)
				pds[k] = nil
				continue
			}
			pd.lease = &pd.leases[0]
		}
		i = j
	}
}

// dispatch sends pd on a shared connection to its lease's endpoint. A
// request never sent (the connect failed, or the connection died before
// taking it) goes to another endpoint when its policy allows, else it is
// answered with the error.
func (s *session) dispatch(pd *pending) {
	s.dispatchFlush(pd, true, false)
}

// dispatchFlush is dispatch with a flush hint: false when the client has
// more requests buffered, so a request written inline may wait in the
// upstream connection's buffer for the next ones (recorded in
// s.unflushed, flushed before the reader blocks). reader: called by the
// session's reader, which may use its caches.
func (s *session) dispatchFlush(pd *pending, flush, reader bool) {
	for {
		err := s.send(pd, flush, reader)
		if err == nil {
			return
		}
		if !errors.Is(err, errPoolClosed) && pd.again(RetryConnect, false, err) {
			continue
		}
		// A failed dial is already counted on the endpoint: no outcome.
		pd.lease.Release()
		pd.finish(nil, err)
		return
	}
}

// send queues pd on a connection to its lease's endpoint. A connection
// that died before taking the request never sent it: the endpoint is
// tried once more on a fresh one. reader: called by the session's
// reader, which finds the connection through its cache.
func (s *session) send(pd *pending, flush, reader bool) error {
	var err error
	for range 2 {
		var uc *upConn
		if reader {
			uc, err = s.ups.get(s.ctx, s.pool, pd.lease, s.up.Dial)
		} else {
			uc, err = s.pool.get(s.ctx, pd.lease, s.up.Dial)
		}
		if err != nil {
			return err
		}
		var buffered bool
		if buffered, err = uc.enqueue(pd, flush); err == nil {
			if buffered && !slices.Contains(s.unflushed, uc) {
				s.unflushed = append(s.unflushed, uc)
			}
			return nil
		}
	}
	return err
}

// flushUp flushes the upstream connections requests were left buffered
// on; the reader calls it before it blocks.
func (s *session) flushUp() {
	for i, uc := range s.unflushed {
		uc.flush()
		s.unflushed[i] = nil
	}
	s.unflushed = s.unflushed[:0]
}

// relayPinned moves the connection to an upstream connection of its own,
// from the pinned request on, and relays bytes both ways until either side
// closes. Every earlier request has been answered.
func (s *session) relayPinned() {
	f := s.pinned
	fail := func(err error) {
		if hj := s.p.hijacker; hj != nil {
			s.down.Write(hj.ErrorReply(f, err))
		}
	}
	if s.up.Cluster == nil {
		fail(ErrNoCluster)
		return
	}
	lease, err := s.up.Cluster.Pick(s.key(f), nil)
	if err != nil {
		fail(err)
		return
	}
	c, err := lease.Dial(s.ctx, s.up.Dial)
	if err != nil {
		lease.Release()
		fail(err)
		return
	}
	stop := context.AfterFunc(s.ctx, func() { c.Close() })
	defer stop()
	defer c.Close()
	first := net.Buffers{f.Bytes(), s.fr.buffered()}
	if _, err := first.WriteTo(c); err != nil {
		lease.Done(err)
		fail(err)
		return
	}
	upErr := make(chan error, 1)
	go func() {
		_, err := io.Copy(s.down, c)
		// The server is gone (QUIT, or it closed): nothing more can be
		// answered, so the client's side ends too.
		s.down.Close()
		upErr <- err
	}()
	_, derr := io.Copy(c, s.down)
	if derr != nil {
		c.Close() // the client broke: end both halves
	} else {
		c.CloseWrite()
	}
	err = <-upErr
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	lease.Done(err)
}

// errorReply is the codec's error answer to req, or nil without a
// Hijacker (the client then sees the connection close).
func (p *Protocol) errorReply(req Frame, err error) []byte {
	if p.hijacker == nil {
		return nil
	}
	return p.hijacker.ErrorReply(req, err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
