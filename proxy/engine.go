// Package proxy is weir's data plane: it accepts captured connections on
// listeners that live inside pod network namespaces, recovers where each was
// going, routes it, balances it over a cluster, connects upstream from inside
// the same namespace with the bypass mark, and relays bytes.
//
// proxy knows nothing of Kubernetes, CNI or iptables. The agent feeds it an
// immutable route snapshot (route.Table) and listeners it opened; the hot path
// reads the snapshot with one atomic load and takes no lock.
package proxy

import (
	"context"
	"errors"
	"hash/maphash"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/h2"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/proxy/origdst"
	"github.com/weir-mesh/weir/proxy/relay"
	"github.com/weir-mesh/weir/proxy/route"
	"github.com/weir-mesh/weir/proxy/rpc"
	"github.com/weir-mesh/weir/proxy/sniff"
)

// Direction says which way a listener captures.
type Direction string

// Directions of capture.
const (
	Outbound Direction = "outbound" // the pod's own connections to elsewhere
	Inbound  Direction = "inbound"  // peers' connections to the pod
)

// Engine forwards captured connections. Its zero value is not usable: set
// Routes and Metrics. Fields must not change after the first Serve.
type Engine struct {
	// Routes is the current route snapshot for outbound connections.
	Routes *route.Table
	// Metrics receives per-connection counts; required.
	Metrics *Metrics
	// Mark is the SO_MARK every upstream socket carries so the pod's rules
	// let it through instead of capturing it again.
	Mark uint32
	// ConnectTimeout bounds connects that do not go through a cluster
	// (passthrough and inbound); zero means 5s.
	ConnectTimeout time.Duration
	// Accelerated, if set, reports whether a socket is in eBPF mode's
	// sockmap acceleration: its peer's bytes arrive in a queue splice does
	// not see, so the relay and the sniffer's replaying conn read and
	// write it instead of splicing. Nil: nothing is accelerated.
	Accelerated func(*net.TCPConn) bool
	// AcceleratedFD is Accelerated for a raw socket, for the event loops
	// (Loops): asked before a relay there splices. Nil: nothing is.
	AcceleratedFD func(fd int) bool
	// Splice, if set, splices an L4 relay's two sockets in the kernel
	// (capture.ebpf.splice) and relays what the kernel leaves to user
	// space until both directions end; false means it did not take the
	// pair, and the engine relays it. Pairs with an accelerated socket are
	// never offered. Spliced pairs are drained, never handed over.
	Splice func(ctx context.Context, client, upstream *net.TCPConn) (relay.Result, bool)
	// Log receives one line per notable event; nil means slog.Default().
	Log *slog.Logger
	// Sniffing says when outbound connections to services are sniffed for
	// their protocol (L7) rather than relayed as bytes (L4).
	Sniffing Sniffing
	// HTTP2 tunes the HTTP/2 and gRPC proxy (its engine); the zero value
	// takes the defaults.
	HTTP2 h2.Options
	// SniffMetrics and HTTPMetrics count sniff outcomes and L7 requests;
	// nil counts nothing.
	SniffMetrics *sniff.Metrics
	HTTPMetrics  *l7.Metrics
	// RPCMetrics counts Dubbo, SOFABolt, RocketMQ and Redis requests and the
	// heartbeats the agent answers; nil counts nothing.
	RPCMetrics *rpc.Metrics
	// AccessLog logs L7 requests; nil logs none.
	AccessLog *l7.AccessLog
	// Tracer gives L7 requests spans; nil: tracing off.
	Tracer *l7.Tracer
	// OnDemand, when set, is asked before routing an outbound connection,
	// so routing held only on demand arrives first (ondemand.go).
	OnDemand OnDemand
	// HandoverMetrics counts L4 connections by what became of them at a
	// takeover (handover.go); nil counts nothing.
	HandoverMetrics *HandoverMetrics
	// Loops is how many event loops relay L4 connections (loops.go,
	// proxy/evloop): each a thread of its own that accepts, connects and
	// relays with raw system calls, as nginx's workers do, at about two
	// thirds of the CPU per new connection of a goroutine per direction.
	// A busy loop keeps its P, and the engine raises GOMAXPROCS by one
	// for each loop that does; a quiet loop gives it back. 0: every
	// connection is handled on goroutines. Not used with Splice (eBPF
	// splice relays its own way); listeners served on loops must be closed
	// with CloseListener.
	Loops int
	// LoopsDefaultProcs says GOMAXPROCS is the runtime's default (it
	// follows the cgroup's CPU limit): while no loop holds a P the engine
	// gives the runtime its default back, and it adds the loops' Ps to
	// whatever the default is then. Otherwise it adds them to the
	// GOMAXPROCS it found at the start.
	LoopsDefaultProcs bool

	once      sync.Once
	draining  chan struct{} // closed by Shutdown: L7 connections wind down
	drainOnce sync.Once
	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	l4        l4Set // relayed L4 connections, for a hand-over
	loopState loopsState
	// idleSend hands idle HTTP/1 client connections to a successor while
	// set (SetIdleHandOff); handOffIdleFn is handOffIdle as a func value,
	// made once so an L7 connection's Upstream takes it without an
	// allocation.
	idleSend      atomic.Pointer[func(HandOff) error]
	handOffIdleFn func(net.Conn, *l7.Upstream) bool
}

// Workload is the pod a listener belongs to: its namespace (where upstream
// sockets are made), its own addresses, and a name for logs.
type Workload struct {
	Name  string
	Netns *netns.Handle
	// Addrs are the pod's own IPs: a connection to one of them on a capture
	// port was never captured, and forwarding it would loop.
	Addrs []netip.Addr

	pools pools // upstream L7 connections from this pod
}

// Listener is one capture socket inside a pod namespace.
type Listener struct {
	TCP       *net.TCPListener
	Direction Direction
	// Transparent is true for TPROXY listeners: the original destination is
	// the accepted socket's local address, not SO_ORIGINAL_DST.
	Transparent bool
	// Map is set for eBPF capture listeners: outbound destinations come
	// from it (origdst.FromMap); inbound ones are the local address, as
	// under TPROXY, and the connect to the app is tagged with the client
	// instead of binding the client's address.
	Map origdst.Map

	// mix is set on a listener of the loops served on goroutines for a
	// while (loops.go): handle counts its connections.
	mix *loopListener
}

var seed = maphash.MakeSeed()

func (e *Engine) init() {
	e.once.Do(func() {
		e.ctx, e.cancel = context.WithCancel(context.Background())
		e.draining = make(chan struct{})
		if e.ConnectTimeout == 0 {
			e.ConnectTimeout = 5 * time.Second
		}
		if e.Log == nil {
			e.Log = slog.Default()
		}
		e.handOffIdleFn = e.handOffIdle
		e.startLoops()
	})
}

// maxIdleHandlers bounds the handler goroutines a listener keeps waiting
// for its next connection.
const maxIdleHandlers = 16

// Serve accepts on l until it is closed, handling each connection on the
// event loops (Loops) or on its own goroutine. It returns nil when the
// listener was closed (CloseListener).
//
// A handler goroutine that finished its connection waits for the next one
// (up to maxIdleHandlers per listener) instead of exiting: it keeps the stack
// the connect path grew, so new connections do not grow a fresh goroutine's
// stack again (morestack and copystack were ~4% of the agent's CPU under a
// connection per request).
func (e *Engine) Serve(l Listener, w *Workload) error {
	e.init()
	if e.onLoops(l) {
		return e.serveOnLoops(l, w)
	}
	return e.serveGo(l, w)
}

// serveGo is Serve with a goroutine per connection.
func (e *Engine) serveGo(l Listener, w *Workload) error {
	hs := &handlers{work: make(chan *net.TCPConn)}
	defer close(hs.work) // idle handlers exit
	for {
		c, err := l.TCP.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			// EMFILE and friends: back off briefly instead of spinning.
			e.Log.Warn("accept failed", "pod", w.Name, "direction", l.Direction, "err", err)
			time.Sleep(50 * time.Millisecond)
			continue
		}
		select {
		case hs.work <- c: // an idle handler takes it
		default:
			e.wg.Add(1)
			go e.handler(hs, c, l, w)
		}
	}
}

// handlers are one listener's handler goroutines waiting for a connection.
type handlers struct {
	work chan *net.TCPConn // closed when Serve returns
	idle atomic.Int32
}

// handler handles c, then further connections Serve hands it, until too
// many handlers are idle, Serve returns or the engine shuts down.
func (e *Engine) handler(hs *handlers, c *net.TCPConn, l Listener, w *Workload) {
	defer e.wg.Done()
	for {
		e.handle(c, l, w)
		if hs.idle.Add(1) > maxIdleHandlers {
			hs.idle.Add(-1)
			return
		}
		var ok bool
		select {
		case c, ok = <-hs.work:
		case <-e.draining:
		}
		hs.idle.Add(-1)
		if !ok {
			return
		}
	}
}

// Shutdown tells L7 connections to wind down (HTTP/1 answers its next
// response with Connection: close, HTTP/2 sends GOAWAY), waits for every
// connection to finish, up to ctx's deadline, then closes the ones that
// remain. Close listeners first. The event loops end with it.
func (e *Engine) Shutdown(ctx context.Context) error {
	e.init()
	e.drainOnce.Do(func() { close(e.draining) })
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	defer e.stopLoops()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		e.cancel()
		<-done
		return ctx.Err()
	}
}

// handle runs the hot path for one accepted connection, in order: original
// destination, loop check, route, connect upstream, relay, account.
func (e *Engine) handle(c *net.TCPConn, l Listener, w *Workload) {
	defer c.Close()
	m := e.Metrics
	dir := l.Direction
	m.accepted(dir)
	defer m.closed(dir)

	var ca accelOnce
	dst, err := e.originalDst(c, l, &ca)
	if err != nil {
		m.refused(dir, "no_original_dst")
		e.Log.Debug("no original destination", "pod", w.Name, "direction", dir, "err", err)
		return
	}
	if e.isLoop(c, l, w, dst) {
		// Never captured: someone connected to a capture port itself.
		// Dialling dst would connect the agent to itself in a loop.
		m.refused(dir, "loop")
		return
	}

	var r route.Route
	if dir == Outbound {
		r = e.lookup(dst)
		if r.Refused() {
			m.refused(dir, "no_route")
			return
		}
	}
	if l.mix != nil {
		l.mix.backToLoop(dir == Outbound && r.Cluster != nil && !e.relaysAtL4(r, dst.Port()))
	}
	if dir == Outbound && r.Cluster != nil && e.serveService(c, &ca, l, w, dst, r) {
		return
	}
	e.relayL4(c, &ca, nil, l, w, dst, r)
}

// relayL4 connects upstream as r says (the original destination for
// passthrough and inbound), sends prefix (bytes a sniff already read from
// the client), relays both ways and accounts for the connection. ca holds
// what sniffing learnt of c's acceleration, if it asked.
func (e *Engine) relayL4(c *net.TCPConn, ca *accelOnce, prefix []byte, l Listener, w *Workload, dst netip.AddrPort, r route.Route) {
	if e.moveToLoop(c, prefix, l, w, dst, r) {
		return // sniffed on a goroutine, relayed on a loop
	}
	m := e.Metrics
	dir := l.Direction
	up, lease, err := e.connect(c, l, dst, w, r)
	if err != nil {
		m.connectError(dir)
		e.Log.Debug("upstream connect failed", "pod", w.Name, "direction", dir, "dst", dst, "err", err)
		return
	}
	defer up.Close()
	if len(prefix) > 0 {
		if _, err := up.Write(prefix); err != nil {
			lease.Done(err)
			return
		}
	}
	t := &tracked{client: c, upstream: up, w: w, dir: dir, dst: dst, cluster: clusterName(r), started: time.Now(), clientAccel: *ca}
	if lease != nil {
		t.endpoint = lease.Endpoint()
	}
	res := e.relayTracked(t, prefix)
	if lease != nil {
		// A handed-over connection leaves this agent's endpoint counts.
		lease.Done(res.Err())
	}
}

// relayTracked relays t, a member of the hand-over set meanwhile, and
// accounts for it: bytes, and during a drain, the path it took.
func (e *Engine) relayTracked(t *tracked, prefix []byte) relay.Result {
	// A pair is relayed without splice when either socket is accelerated:
	// once the client is, the upstream's answer changes nothing.
	accel := t.clientAccel.of(e, t.client) || e.accelerated(t.upstream)
	if !accel && e.Splice != nil {
		// Marked before it joins the hand-over set: HandOver leaves it.
		t.spliced.Store(true)
	}
	e.l4.add(t)
	var res relay.Result
	spliced := false
	if t.spliced.Load() {
		if res, spliced = e.Splice(e.ctx, t.client, t.upstream); !spliced {
			t.spliced.Store(false)
		}
	}
	if !spliced {
		if accel {
			t.h.NoSplice()
		}
		res = relay.RelayWith(e.ctx, t.client, t.upstream, &t.h)
	}
	e.l4.remove(t)
	e.Metrics.bytes(t.dir, res.Up+int64(len(prefix)), res.Down)
	select {
	case <-e.draining:
		switch {
		case res.HandedOver:
			e.HandoverMetrics.inc("handed_over")
		case e.ctx.Err() != nil:
			e.HandoverMetrics.inc("cut")
		default:
			e.HandoverMetrics.inc("drained")
		}
	default:
	}
	return res
}

// accelerated reports whether c must never be spliced from (Accelerated).
func (e *Engine) accelerated(c *net.TCPConn) bool {
	return e.Accelerated != nil && e.Accelerated(c)
}

// accelOnce is Engine.Accelerated's answer about one accepted socket,
// asked at most once in the connection's life: sniffing and the relay both
// need it, and each ask costs system calls on every relayed connection.
// An eBPF outbound record usually carries the answer (originalDst), so
// the question is then never asked.
// The zero value has not asked yet. The answer cannot go stale: the
// sockops program puts a socket in the sockhash before accept returns it,
// and only its close takes it out.
type accelOnce struct {
	asked, yes bool
}

// of returns the answer for c, asking e the first time.
func (a *accelOnce) of(e *Engine, c *net.TCPConn) bool {
	if !a.asked {
		a.asked, a.yes = true, e.accelerated(c)
	}
	return a.yes
}

// isLoop reports whether dst is the agent's own capture socket.
func (e *Engine) isLoop(c *net.TCPConn, l Listener, w *Workload, dst netip.AddrPort) bool {
	if !l.Transparent && l.Map == nil {
		// Under REDIRECT a connection that was never redirected reports its
		// own local address as the original destination.
		local, _ := c.LocalAddr().(*net.TCPAddr)
		return local != nil && local.AddrPort() == dst
	}
	// Under TPROXY the local address always is the destination: compare
	// with the listener's port on an address of the pod itself.
	lp := l.TCP.Addr().(*net.TCPAddr).Port
	if int(dst.Port()) != lp {
		return false
	}
	a := dst.Addr()
	return a.IsLoopback() || a.IsUnspecified() || slices.Contains(w.Addrs, a)
}

// originalDst returns where c was going. An eBPF record that also says
// whether c is accelerated answers ca (the relay's question) on the way.
func (e *Engine) originalDst(c *net.TCPConn, l Listener, ca *accelOnce) (netip.AddrPort, error) {
	if l.Map != nil && l.Direction == Outbound {
		dst, accel, err := origdst.FromMap(c, l.Map)
		if err == nil && accel != origdst.AccelUnknown {
			ca.asked, ca.yes = true, accel == origdst.AccelYes
		}
		return dst, err
	}
	if l.Transparent || l.Map != nil {
		return origdst.Local(c)
	}
	return origdst.Redirected(c)
}

// connect opens the upstream side: through r's cluster when it has one,
// straight to the original destination for passthrough and inbound.
func (e *Engine) connect(c *net.TCPConn, l Listener, dst netip.AddrPort, w *Workload, r route.Route) (*net.TCPConn, *cluster.Lease, error) {
	dir := l.Direction
	opts := e.upstreamOptions()
	var src netip.Addr
	if dir == Inbound && l.Map != nil {
		// eBPF inbound: the app's accept reports the client we tag.
		if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			client := netip.AddrPortFrom(ra.AddrPort().Addr().Unmap(), ra.AddrPort().Port())
			opts.BeforeConnect = func(fd int) error { return l.Map.TagClient(fd, client) }
		}
	} else if dir == Inbound && l.Transparent {
		// TPROXY inbound: connect to the app from the client's own address,
		// so the app sees who really called, on a port the kernel picks but
		// never the client's own: that one would give the upstream socket
		// the accepted socket's four-tuple reversed, in the same namespace
		// (netns.SocketOptions.AvoidPort).
		if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
			src = ra.AddrPort().Addr().Unmap()
			opts.Transparent = true
			opts.AvoidPort = ra.AddrPort().Port()
		}
	}
	dial := func(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
		return w.Netns.Dial(ctx, addr, src, opts)
	}
	if r.Cluster != nil {
		return r.Cluster.Connect(e.ctx, sourceKey(c), dial)
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.ConnectTimeout)
	defer cancel()
	up, err := dial(ctx, dst)
	return up, nil, err
}

// sourceKey hashes the client's address for affinity balancers.
func sourceKey(c *net.TCPConn) uint64 {
	ra, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return 0
	}
	return sourceKeyOf(ra.AddrPort())
}

// sourceKeyOf is sourceKey for an address (the event loops have no
// *net.TCPConn). IPv4 hashes as its IPv4-mapped form whether or not the
// address came unmapped, so both paths give one client one key.
func sourceKeyOf(a netip.AddrPort) uint64 {
	b := a.Addr().As16()
	return maphash.Bytes(seed, b[:])
}
