package proxy

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/evloop"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/proxy/origdst"
	"github.com/weir-mesh/weir/proxy/route"
)

// L4 connections on event loops (Engine.Loops, proxy/evloop). A listener
// served on the loops leaves Go's poller: Serve duplicates its socket,
// closes the *net.TCPListener (which takes it out of the runtime's epoll,
// so a new connection wakes no runtime thread) and registers the
// duplicate with one loop, its home, which passes a backlog on to the
// others (spill). Each accepted
// connection is handled on that loop to the end: original destination,
// loop check, route, the cluster's pick, a socket made in the pod's
// namespace on the loop's own thread, a non-blocking connect, and the
// relay. A connection the route sends to L7 (sniffed or a declared L7
// protocol) becomes a *net.TCPConn and goes to a goroutine as before; so
// do eBPF-captured listeners (the sockhash and the splice want their own
// path) and everything when on-demand routing may have to wait.
//
// Because the *net.TCPListener is closed by Serve, the caller ends such a
// listener with Engine.CloseListener, not by closing it.

// loopListener is one listener served on the loops, or for a while on
// goroutines, when most of its connections need one anyway (mix).
type loopListener struct {
	fd   int // the duplicate the loops accept from; closed last
	lns  []*evloop.Listener
	home int
	done chan struct{} // closed when no loop accepts from it any more

	mu     sync.Mutex
	closed bool
	// goLn is the listener's socket in Go's poller while it is served on
	// goroutines (serveGoMode); back: it is being closed to return.
	goLn *net.TCPListener
	back bool
	// gor and l4 count, since the last look, the connections that needed
	// a goroutine first (sniffing or an L7 protocol) and the ones relayed
	// at L4 straight away.
	gor, l4 atomic.Int32
}

// mixWindow is how many connections a listener's mix is judged over, and
// mixShare the share of them (in quarters) that moves it: a listener on
// the loops whose connections mostly go to goroutines is served on
// goroutines, and back when they mostly do not.
//
// Why: a connection the loop accepts and then hands to a goroutine (to
// sniff it, or for L7) is made a *net.TCPConn from its descriptor
// (net.FileConn: a dozen system calls) and started on a fresh goroutine on
// another thread: 30 % more CPU per HTTP connection than Go's own accept
// (docs/benchmarks.md, "L4 cost, sixth pass"). A connection Go accepts
// and finds to be L4 moves to a loop for its relay (moveToLoop), so a
// listener on goroutines still relays on the loops.
const (
	mixWindow = 64
	mixShare  = 3
)

// count records one connection of the mix and reports whether the
// listener should move: to goroutines when onLoops, else to the loops.
func (ll *loopListener) count(needsGoroutine, onLoops bool) bool {
	var g, n int32
	if needsGoroutine {
		g = ll.gor.Add(1)
		n = g + ll.l4.Load()
	} else {
		n = ll.l4.Add(1) + ll.gor.Load()
		g = ll.gor.Load()
	}
	if n < mixWindow {
		return false
	}
	ll.gor.Store(0)
	ll.l4.Store(0)
	if onLoops {
		return g*4 >= n*mixShare
	}
	return (n-g)*4 >= n*mixShare
}

// loopsState is the engine's loops.
type loopsState struct {
	loops []*evloop.Loop
	// GOMAXPROCS: base, plus one per loop holding its P (holding).
	procsMu       sync.Mutex
	base, holding int
	defaultProcs  bool // base is the runtime's default (LoopsDefaultProcs)
	holdingGauge  prometheus.Gauge
	mu            sync.Mutex
	lns           map[*net.TCPListener]*loopListener
	pairs         atomic.Int64 // relayed on the loops, for HandOver
	next          atomic.Uint32
}

// startLoops starts e.Loops loops; called once from init.
func (e *Engine) startLoops() {
	if e.Loops <= 0 || e.Splice != nil {
		return
	}
	ls := &e.loopState
	ls.lns = map[*net.TCPListener]*loopListener{}
	for range e.Loops {
		lp, err := evloop.New(true)
		if err != nil {
			e.Log.Error("cannot start an event loop; L4 connections use goroutines", "err", err)
			for _, l := range ls.loops {
				l.Stop()
			}
			ls.loops = nil
			return
		}
		lp.OnHold = ls.onHold
		ls.loops = append(ls.loops, lp)
	}
	ls.base, ls.defaultProcs = runtime.GOMAXPROCS(0), e.LoopsDefaultProcs
	ls.holdingGauge = e.Metrics.loopsHolding
	for _, lp := range ls.loops {
		go lp.Run()
	}
	context.AfterFunc(e.ctx, func() {
		for _, lp := range ls.loops {
			lp.Post(lp.CloseAll)
		}
	})
}

// stopLoops ends the loops (cutting what they still relay) and every
// listener on them; from Shutdown, once connections are done.
func (e *Engine) stopLoops() {
	ls := &e.loopState
	ls.mu.Lock()
	loops := ls.loops
	ls.loops = nil
	lns := ls.lns
	ls.lns = map[*net.TCPListener]*loopListener{}
	ls.mu.Unlock()
	if len(loops) == 0 {
		return
	}
	for _, lp := range loops {
		lp.Stop()
	}
	for _, lp := range loops {
		<-lp.Done()
	}
	for _, ll := range lns {
		ll.mu.Lock()
		ll.closed = true
		if ll.goLn != nil {
			ll.goLn.Close()
		}
		ll.mu.Unlock()
		unix.Close(ll.fd)
		close(ll.done)
	}
}

// onHold is every loop's OnHold: a loop that holds its P gets one more,
// so the rest of the process keeps the Ps it had. Each call is a
// stop-the-world; a loop makes two a second at most (proxy/evloop's
// holdWindow).
func (ls *loopsState) onHold(holding bool) {
	ls.procsMu.Lock()
	defer ls.procsMu.Unlock()
	if holding {
		if ls.holding == 0 && ls.defaultProcs {
			// The default may have moved with the cgroup's limit.
			ls.base = runtime.GOMAXPROCS(0)
		}
		ls.holding++
	} else {
		ls.holding--
	}
	ls.holdingGauge.Set(float64(ls.holding))
	if ls.holding == 0 && ls.defaultProcs {
		runtime.SetDefaultGOMAXPROCS()
		return
	}
	runtime.GOMAXPROCS(ls.base + ls.holding)
}

// onLoops reports whether l is served on the loops.
func (e *Engine) onLoops(l Listener) bool {
	return len(e.loopState.loops) > 0 && l.Map == nil && e.OnDemand == nil
}

// onLoop runs f on lp and waits for it; false if lp ended first.
func onLoop(lp *evloop.Loop, f func()) bool {
	done := make(chan struct{})
	lp.Post(func() { f(); close(done) })
	select {
	case <-done:
		return true
	case <-lp.Done():
		return false
	}
}

// serveOnLoops is Serve for a listener on the loops.
func (e *Engine) serveOnLoops(l Listener, w *Workload) error {
	rc, err := l.TCP.SyscallConn()
	if err != nil {
		return nil
	}
	lport := uint16(l.TCP.Addr().(*net.TCPAddr).Port)
	ls := &e.loopState
	ls.mu.Lock()
	dup := -1
	var derr error
	if cerr := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); cerr != nil || ls.loops == nil {
		// Closed already (CloseListener came first), or the loops ended.
		ls.mu.Unlock()
		if dup >= 0 {
			unix.Close(dup)
		}
		return nil
	}
	if derr != nil {
		ls.mu.Unlock()
		e.Log.Warn("cannot take listener onto the event loops; serving it on goroutines", "pod", w.Name, "err", derr)
		return e.serveGo(l, w)
	}
	// Accepted sockets inherit it: small messages leave at once, as Go
	// sets it on every connection it accepts.
	unix.SetsockoptInt(dup, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	ll := &loopListener{fd: dup, done: make(chan struct{})}
	// One loop accepts from it: its home. Offered to every loop (with
	// EPOLLEXCLUSIVE), a new connection woke whichever loop was idle, most
	// often on the other CPU than the one that just served its client:
	// 8 % more CPU per connection than one loop per listener, measured
	// (docs/benchmarks.md, "L4 cost, sixth pass"). Listeners are spread
	// over the loops, and a home loop that finds a backlog passes the
	// excess on (spill).
	home := int(ls.next.Add(1)) % len(ls.loops)
	ll.home = home
	for i, lp := range ls.loops {
		eln := &evloop.Listener{FD: -1}
		ll.lns = append(ll.lns, eln)
		if i != home {
			continue
		}
		eln.FD = dup
		eln.Accept = func(fd int, peer unix.RawSockaddrAny, nth int) {
			if nth >= spillAfter {
				e.spill(lp, fd, peer, l, lport, w, ll)
				return
			}
			if e.acceptOnLoop(lp, fd, &peer, l, lport, w, ll) {
				e.toGoMode(lp, ll, eln, l, w)
			}
		}
		eln.Failed = func(err error) {
			e.Log.Warn("accept failed", "pod", w.Name, "direction", l.Direction, "err", err)
		}
		lp.Post(func() {
			if err := lp.AddListener(eln); err != nil {
				e.Log.Warn("event loop cannot watch a listener", "pod", w.Name, "err", err)
			}
		})
	}
	ls.lns[l.TCP] = ll
	// Out of Go's poller: the loops alone hear of new connections.
	l.TCP.Close()
	ls.mu.Unlock()
	<-ll.done
	return nil
}

// spillAfter is how many connections a home loop accepts in one wake-up
// before it passes the rest of the backlog to the other loops in turn: it
// is far behind, and the others share the work. Not fewer: passing a
// connection to another loop costs a wake-up on another CPU, and spilling
// at a backlog of 8 cost 8 % more CPU per connection with 16 clients
// connecting at once, which the home loop kept up with alone (1.08 ×
// nginx stream's CPU per connection against 1.00; gated on the home loop
// being busy nine tenths of the time, 1.03: docs/benchmarks.md, "L4 cost,
// seventh pass").
const spillAfter = 32

// spill hands a connection the home loop accepted to the next loop. A
// spilt connection does not count in the listener's mix.
func (e *Engine) spill(home *evloop.Loop, fd int, peer unix.RawSockaddrAny, l Listener, lport uint16, w *Workload, ll *loopListener) {
	loops := e.loopState.loops
	lp := loops[int(e.loopState.next.Add(1))%len(loops)]
	if lp == home || len(loops) < 2 {
		e.acceptOnLoop(home, fd, &peer, l, lport, w, nil)
		return
	}
	if !lp.Post(func() { e.acceptOnLoop(lp, fd, &peer, l, lport, w, nil) }) {
		e.acceptOnLoop(home, fd, &peer, l, lport, w, nil) // that loop ended
	}
}

// CloseListener closes a listener given to Serve, which then returns:
// required for listeners on the loops (Loops), whose *net.TCPListener
// Serve has closed already; for the others it is l.TCP.Close. Connections
// already accepted are not affected.
func (e *Engine) CloseListener(l Listener) error {
	ls := &e.loopState
	ls.mu.Lock()
	ll := ls.lns[l.TCP]
	if ll == nil {
		err := l.TCP.Close()
		ls.mu.Unlock()
		return err
	}
	delete(ls.lns, l.TCP)
	loops := ls.loops
	ls.mu.Unlock()
	ll.mu.Lock()
	ll.closed = true
	if ll.goLn != nil {
		ll.goLn.Close()
	}
	ll.mu.Unlock()
	for i, lp := range loops {
		eln := ll.lns[i]
		onLoop(lp, func() { lp.RemoveListener(eln) })
	}
	unix.Close(ll.fd)
	close(ll.done)
	return nil
}

// loopConn is one connection relayed on a loop.
type loopConn struct {
	evloop.Pair
	e       *Engine
	lp      *evloop.Loop
	w       *Workload
	dir     Direction
	l       Listener
	client  netip.AddrPort // the accepted socket's peer
	dst     netip.AddrPort
	addr    netip.AddrPort // being connected to
	r       route.Route
	cn      cluster.Connecting
	lease   *cluster.Lease
	started time.Time
	// adopted: a predecessor's connection (adoptOnLoop); r, cn and lease
	// are unset then.
	adopted *adoption
}

// acceptOnLoop handles a connection lp accepted on a listener of w (the
// loop's version of handle). It reports whether the listener's mix says
// it should be served on goroutines from now on.
func (e *Engine) acceptOnLoop(lp *evloop.Loop, fd int, peer *unix.RawSockaddrAny, l Listener, lport uint16, w *Workload, ll *loopListener) (toGo bool) {
	m := e.Metrics
	dir := l.Direction
	m.accepted(dir)
	client, _ := origdst.AddrPortOf(peer)
	var dst netip.AddrPort
	var err error
	if l.Transparent {
		dst, err = origdst.LocalFD(fd)
	} else {
		dst, err = origdst.RedirectedFD(fd, peer.Addr.Family == unix.AF_INET6)
	}
	if err != nil {
		m.refused(dir, "no_original_dst")
		e.Log.Debug("no original destination", "pod", w.Name, "direction", dir, "err", err)
		e.dropOnLoop(fd, dir)
		return false
	}
	if isLoopDst(lport, w, dst) {
		m.refused(dir, "loop")
		e.dropOnLoop(fd, dir)
		return false
	}
	var r route.Route
	if dir == Outbound {
		r = e.Routes.Load().Lookup(dst)
		if r.Refused() {
			m.refused(dir, "no_route")
			e.dropOnLoop(fd, dir)
			return false
		}
		if r.Cluster != nil && !e.relaysAtL4(r, dst.Port()) {
			e.toGoroutine(lp, fd, l, w, dst, r)
			return ll != nil && ll.count(true, true)
		}
	}
	e.wg.Add(1)
	e.startOnLoop(lp, fd, client, nil, l, w, dst, r)
	return ll != nil && ll.count(false, true)
}

// toGoMode moves ll from the loops to goroutines (on its home loop lp,
// from an accept): Go's poller watches a duplicate of its socket and
// serveGoMode accepts.
func (e *Engine) toGoMode(lp *evloop.Loop, ll *loopListener, eln *evloop.Listener, l Listener, w *Workload) {
	ll.mu.Lock()
	defer ll.mu.Unlock()
	if ll.closed || ll.goLn != nil {
		return
	}
	nl, err := fdListener(ll.fd)
	if err != nil {
		e.Log.Warn("cannot serve a listener on goroutines; it stays on the loops", "pod", w.Name, "err", err)
		return
	}
	lp.RemoveListener(eln)
	ll.goLn = nl
	lg := l
	lg.TCP, lg.mix = nl, ll
	e.Log.Debug("listener served on goroutines: its connections go to L7", "pod", w.Name, "direction", l.Direction)
	go e.serveGoMode(lg, w, ll, eln)
}

// serveGoMode serves ll on goroutines until it is closed, or until its mix
// sends it back to its home loop (handle closes the Go listener then).
func (e *Engine) serveGoMode(lg Listener, w *Workload, ll *loopListener, eln *evloop.Listener) {
	e.serveGo(lg, w)
	ll.mu.Lock()
	defer ll.mu.Unlock()
	ll.goLn, ll.back = nil, false
	if ll.closed {
		return
	}
	lp := e.loopState.loops[ll.home]
	e.Log.Debug("listener back on its event loop: its connections are L4", "pod", w.Name, "direction", lg.Direction)
	lp.Post(func() {
		// Not under ll.mu: AddListener accepts what is queued, which may
		// move the listener again. A CloseListener meanwhile posts its
		// RemoveListener after this.
		ll.mu.Lock()
		closed := ll.closed
		ll.mu.Unlock()
		if closed {
			return
		}
		if err := lp.AddListener(eln); err != nil {
			e.Log.Error("event loop lost a listener", "pod", w.Name, "err", err)
		}
	})
}

// backToLoop is handle's half of the mix on goroutines: it counts the
// connection and, when the listener's connections are mostly L4 again,
// closes the Go listener so serveGoMode returns it to the loops.
func (ll *loopListener) backToLoop(needsGoroutine bool) {
	if !ll.count(needsGoroutine, false) {
		return
	}
	ll.mu.Lock()
	if !ll.closed && ll.goLn != nil && !ll.back {
		ll.back = true
		ll.goLn.Close()
	}
	ll.mu.Unlock()
}

// fdListener makes a *net.TCPListener over a duplicate of fd.
func fdListener(fd int) (*net.TCPListener, error) {
	d, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	f := os.NewFile(uintptr(d), "")
	nl, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	return nl.(*net.TCPListener), nil
}

// startOnLoop connects the client socket fd upstream as r says and relays
// it on lp, sending prefix first; on lp, with e.wg counting it already.
func (e *Engine) startOnLoop(lp *evloop.Loop, fd int, client netip.AddrPort, prefix []byte, l Listener, w *Workload, dst netip.AddrPort, r route.Route) {
	m := e.Metrics
	dir := l.Direction
	c := &loopConn{e: e, lp: lp, w: w, dir: dir, l: l, client: client, dst: dst, r: r, started: time.Now()}
	c.Handler = c
	up, timeout, err := c.first()
	if err == nil {
		if err = lp.Add(&c.Pair, fd, up, timeout, prefix); err != nil {
			unix.Close(up)
			c.cn.Abandon()
		}
	}
	if err != nil {
		m.connectError(dir)
		e.Log.Debug("upstream connect failed", "pod", w.Name, "direction", dir, "dst", dst, "err", err)
		e.dropOnLoop(fd, dir)
		e.wg.Done()
		return
	}
	e.loopPairs(1)
}

// loopPairs counts n more (or fewer) connections relayed on the loops.
func (e *Engine) loopPairs(n int64) {
	e.loopState.pairs.Add(n)
	e.Metrics.loopConns.Add(float64(n))
}

// adoptOnLoop relays a handed-over L4 connection on a loop, as one this
// agent accepted would be (Adopt): a connection that outlives an upgrade
// costs what a new one does. It reports false, with h untouched, when the
// connection stays on goroutines: no loops, or an eBPF-accelerated
// socket (the loops' path for those starts at their listener). On true
// the loop holds duplicates of h's sockets and the caller closes h's.
func (e *Engine) adoptOnLoop(h HandOff, w *Workload) bool {
	loops := e.loopState.loops
	if len(loops) == 0 || e.Splice != nil {
		return false
	}
	cfd, err := dupConn(h.Client)
	if err != nil {
		return false
	}
	ufd, err := dupConn(h.Upstream)
	if err != nil {
		unix.Close(cfd)
		return false
	}
	if f := e.AcceleratedFD; f != nil && (f(cfd) || f(ufd)) {
		unix.Close(cfd)
		unix.Close(ufd)
		return false
	}
	lp := loops[int(e.loopState.next.Add(1))%len(loops)]
	c := &loopConn{e: e, lp: lp, w: w, dir: h.Direction, dst: h.Dst, started: h.Started,
		adopted: &adoption{cluster: h.Cluster, endpoint: h.Endpoint, prior: [2]int64{h.Up, h.Down}}}
	c.Handler = c
	e.wg.Add(1)
	posted := lp.Post(func() {
		err := lp.AddConnected(&c.Pair, cfd, ufd)
		if err == nil {
			e.loopPairs(1)
			return
		}
		// The predecessor has let go: relayed on a goroutine, not lost.
		e.Log.Warn("event loop cannot take a handed-over connection; relaying it on a goroutine", "pod", w.Name, "err", err)
		client, upstream, err := detached{client: cfd, upstream: ufd}.conns()
		if err != nil {
			e.Metrics.closed(h.Direction)
			e.wg.Done()
			return
		}
		g := h
		g.Client, g.Upstream = client, upstream
		e.relayAdopted(adoptedTracked(g, w))
	})
	if !posted {
		// That loop ended: the caller relays h.
		unix.Close(cfd)
		unix.Close(ufd)
		e.wg.Done()
		return false
	}
	return true
}

// adoption is what a handed-over connection brought from its predecessor,
// kept for the next hand-over.
type adoption struct {
	cluster  string
	endpoint netip.AddrPort
	prior    [2]int64
}

// dupConn duplicates c's socket (close-on-exec).
func dupConn(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd, derr := -1, error(nil)
	if err := rc.Control(func(s uintptr) { fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return -1, err
	}
	return fd, derr
}

// moveToLoop hands a connection a goroutine sniffed and found to be L4 to
// a loop, which relays it from there (prefix first: what the sniffer
// read). The caller closes c as usual: the loop holds a duplicate of its
// socket, and accounts for it as a connection of its own. False: c stays
// with the caller.
func (e *Engine) moveToLoop(c *net.TCPConn, prefix []byte, l Listener, w *Workload, dst netip.AddrPort, r route.Route) bool {
	loops := e.loopState.loops
	if !e.onLoops(l) || len(loops) == 0 {
		return false
	}
	fd, err := dupConn(c)
	if err != nil {
		return false
	}
	var client netip.AddrPort
	if ra, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		client = netip.AddrPortFrom(ra.AddrPort().Addr().Unmap(), ra.AddrPort().Port())
	}
	pre := append([]byte(nil), prefix...)
	lp := loops[int(e.loopState.next.Add(1))%len(loops)]
	// The caller's count of it ends when it returns; the loop's starts now.
	e.Metrics.reopened(l.Direction)
	e.wg.Add(1)
	if !lp.Post(func() { e.startOnLoop(lp, fd, client, pre, l, w, dst, r) }) {
		// That loop ended (a stranded thread): the caller relays c.
		unix.Close(fd)
		e.Metrics.closed(l.Direction)
		e.wg.Done()
		return false
	}
	return true
}

func (e *Engine) dropOnLoop(fd int, dir Direction) {
	unix.Close(fd)
	e.Metrics.closed(dir)
}

// isLoopDst reports whether dst is a capture listener itself (port lport
// on the pod's own addresses): forwarding it would loop. Under TPROXY this
// is exactly isLoop's test; under REDIRECT isLoop compares dst with the
// accepted socket's local address, which only a connection to the
// listener's own address and port matches, and that is this test too.
func isLoopDst(lport uint16, w *Workload, dst netip.AddrPort) bool {
	if dst.Port() != lport {
		return false
	}
	a := dst.Addr()
	return a.IsLoopback() || a.IsUnspecified() || slices.Contains(w.Addrs, a)
}

// toGoroutine hands an accepted socket to the goroutine path: sniffing
// and the L7 proxies work on *net.TCPConn.
func (e *Engine) toGoroutine(lp *evloop.Loop, fd int, l Listener, w *Workload, dst netip.AddrPort, r route.Route) {
	c, err := fdConn(fd)
	if err != nil {
		e.Log.Warn("cannot hand a connection to the L7 proxy", "pod", w.Name, "err", err)
		e.Metrics.closed(l.Direction)
		return
	}
	e.wg.Add(1)
	// The new goroutine is queued on the loop's P. A holding loop keeps
	// that P: it yields at the end of this batch of events. A parked one
	// ignores this and gives the P up at its next wait; meanwhile an idle
	// P, which the go statement wakes, steals the goroutine.
	lp.YieldSoon()
	go func() {
		defer e.wg.Done()
		defer c.Close()
		defer e.Metrics.closed(l.Direction)
		var ca accelOnce
		if !e.serveService(c, &ca, l, w, dst, r) {
			e.relayL4(c, &ca, nil, l, w, dst, r)
		}
	}()
}

// first starts the connect: through the cluster's pick, or to the
// original destination.
func (c *loopConn) first() (int, time.Duration, error) {
	if c.r.Cluster == nil {
		c.addr = c.dst
		fd, err := c.dial(c.dst)
		return fd, c.e.ConnectTimeout, err
	}
	addr, timeout, err := c.r.Cluster.Start(sourceKeyOf(c.client), &c.cn)
	if err != nil {
		return -1, 0, err
	}
	return c.tryFrom(addr, timeout)
}

// tryFrom connects to addr, and on an immediate failure to the cluster's
// next pick, until one starts or the cluster gives up.
func (c *loopConn) tryFrom(addr netip.AddrPort, timeout time.Duration) (int, time.Duration, error) {
	for {
		c.addr = addr
		fd, err := c.dial(addr)
		if err == nil {
			return fd, timeout, nil
		}
		if errors.Is(err, netns.ErrStranded) {
			c.cn.Abandon()
			return -1, 0, err
		}
		if addr, timeout, err = c.cn.Failed(err); err != nil {
			return -1, 0, err
		}
	}
}

// dial makes the upstream socket in the pod's namespace on the loop's
// thread and starts its connect.
func (c *loopConn) dial(addr netip.AddrPort) (int, error) {
	opts := c.e.upstreamOptions()
	var src netip.Addr
	if c.dir == Inbound && c.l.Transparent && c.client.IsValid() {
		// As connect does: from the client's address, on another port.
		src = c.client.Addr()
		opts.Transparent = true
		opts.AvoidPort = c.client.Port()
	}
	fd, err := c.w.Netns.ConnectOnThread(addr, src, opts)
	if errors.Is(err, netns.ErrStranded) {
		// This thread is in the pod's namespace for good: the loop ends,
		// its goroutine exits still locked and the thread with it; the
		// other loops go on.
		c.e.Log.Error("event loop thread stranded in a pod network namespace; stopping that loop", "pod", c.w.Name, "err", err)
		c.lp.Abort()
	}
	return fd, err
}

// Connected is evloop.Handler's.
func (c *loopConn) Connected(*evloop.Pair) {
	if c.r.Cluster != nil {
		c.lease = c.cn.Connected()
	}
}

// ConnectFailed is evloop.Handler's.
func (c *loopConn) ConnectFailed(p *evloop.Pair, err error) (int, time.Duration) {
	failed := c.addr
	if c.r.Cluster != nil {
		addr, timeout, ferr := c.cn.Failed(err)
		if ferr == nil {
			go c.w.Netns.ConnectFailed(failed, err)
			fd, t, ferr2 := c.tryFrom(addr, timeout)
			if ferr2 == nil {
				return fd, t
			}
			ferr = ferr2
		}
		err = ferr
	}
	// The conntrack sweep talks netlink, off the loop. The client's
	// socket is held open until it is done (the loop closes its own
	// descriptor when this returns): the client, seeing its connection
	// end, may connect again at once, and must find no entry left.
	keep, derr := unix.FcntlInt(uintptr(p.FD(0)), unix.F_DUPFD_CLOEXEC, 0)
	go func() {
		c.w.Netns.ConnectFailed(failed, err)
		if derr == nil {
			unix.Close(keep)
		}
	}()
	c.e.Metrics.connectError(c.dir)
	c.e.Log.Debug("upstream connect failed", "pod", c.w.Name, "direction", c.dir, "dst", c.dst, "err", err)
	return -1, 0
}

// MaySplice is evloop.Handler's.
func (c *loopConn) MaySplice(p *evloop.Pair) bool {
	f := c.e.AcceleratedFD
	return f == nil || (!f(p.FD(0)) && !f(p.FD(1)))
}

// Ended is evloop.Handler's.
func (c *loopConn) Ended(_ *evloop.Pair, res evloop.Result) {
	e := c.e
	if !res.Connected {
		c.cn.Abandon() // a cut during the connect
	}
	c.lease.Done(res.UpstreamErr)
	e.Metrics.bytes(c.dir, res.Up, res.Down)
	e.Metrics.closed(c.dir)
	select {
	case <-e.draining:
		if res.Cut || e.ctx.Err() != nil {
			e.HandoverMetrics.inc("cut")
		} else {
			e.HandoverMetrics.inc("drained")
		}
	default:
	}
	e.loopPairs(-1)
	e.wg.Done()
}

// detachLoops takes every quiet L4 connection off the loops, for a
// hand-over: their sockets become *net.TCPConns the caller sends.
func (e *Engine) detachLoops() []detached {
	var out []detached
	var mu sync.Mutex
	for _, lp := range e.loopState.loops {
		onLoop(lp, func() {
			lp.Each(func(p *evloop.Pair) {
				c := p.Handler.(*loopConn)
				up, down := p.Counts()
				cfd, ufd, ok := lp.Detach(p)
				if !ok {
					return
				}
				mu.Lock()
				out = append(out, detached{c: c, client: cfd, upstream: ufd, up: up, down: down})
				mu.Unlock()
			})
		})
	}
	return out
}

// detached is a connection taken off a loop.
type detached struct {
	c                *loopConn
	client, upstream int
	up, down         int64
}

// conns makes *net.TCPConns of d's sockets (the descriptors are closed).
func (d detached) conns() (client, upstream *net.TCPConn, err error) {
	client, err = fdConn(d.client)
	if err != nil {
		unix.Close(d.upstream)
		return nil, nil, err
	}
	upstream, err = fdConn(d.upstream)
	if err != nil {
		client.Close()
		return nil, nil, err
	}
	return client, upstream, nil
}

// fdConn makes a *net.TCPConn of the socket fd (closed: the conn holds a
// duplicate).
func fdConn(fd int) (*net.TCPConn, error) {
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// handOverLoops offers the loops' quiet connections to send, as HandOver
// does its goroutines'. A connection that cannot be sent is relayed on
// from here on a goroutine.
func (e *Engine) handOverLoops(send func(HandOff) error) (int, error) {
	handed := 0
	for _, d := range e.detachLoops() {
		c := d.c
		client, upstream, err := d.conns()
		if err != nil {
			c.end(d, false)
			continue
		}
		t := &tracked{client: client, upstream: upstream, w: c.w, dir: c.dir, dst: c.dst,
			cluster: c.clusterName(), endpoint: c.endpointAddr(), started: c.started, prior: [2]int64{d.up, d.down}}
		if a := c.adopted; a != nil {
			t.prior[0] += a.prior[0]
			t.prior[1] += a.prior[1]
		}
		if serr := send(t.handOff(0, 0)); serr != nil {
			// Resumed, on a goroutine: it keeps its accounting.
			e.loopPairs(-1)
			go func() {
				defer e.wg.Done()
				defer e.Metrics.closed(c.dir)
				defer client.Close()
				defer upstream.Close()
				res := e.relayTracked(t, nil)
				c.lease.Done(res.Err())
			}()
			return handed, serr
		}
		client.Close()
		upstream.Close()
		c.end(d, true)
		handed++
	}
	return handed, nil
}

// end accounts for a connection taken off its loop: handed over, or lost
// when its sockets could not be wrapped.
func (c *loopConn) end(d detached, handed bool) {
	e := c.e
	c.lease.Done(nil)
	e.Metrics.bytes(c.dir, d.up, d.down)
	e.Metrics.closed(c.dir)
	if handed {
		e.HandoverMetrics.inc("handed_over")
	} else {
		e.HandoverMetrics.inc("cut")
	}
	e.loopPairs(-1)
	e.wg.Done()
}

// endpointAddr is the endpoint the connection went to, if a cluster's.
func (c *loopConn) endpointAddr() netip.AddrPort {
	if c.adopted != nil {
		return c.adopted.endpoint
	}
	if c.lease == nil {
		return netip.AddrPort{}
	}
	return c.lease.Endpoint()
}

// clusterName is the connection's cluster, if any.
func (c *loopConn) clusterName() string {
	if c.adopted != nil {
		return c.adopted.cluster
	}
	return clusterName(c.r)
}

func clusterName(r route.Route) string {
	if r.Cluster == nil {
		return ""
	}
	return r.Cluster.Name()
}
