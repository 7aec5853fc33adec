package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"time"
)

// Errors Connect returns, wrapped in an *Error; test with errors.Is.
var (
	// ErrNoEndpoint: no endpoint could be picked (none configured, none
	// selected by the subset, all unhealthy or already tried).
	ErrNoEndpoint = errors.New("no endpoint available")
	// ErrCircuitOpen: the cluster is at circuitBreaker.maxConnections or
	// maxPendingConnects; the connection is refused without trying.
	ErrCircuitOpen = errors.New("circuit breaker open")
	// ErrConnectFailed: every attempt failed; the *Error also wraps the
	// last dial error.
	ErrConnectFailed = errors.New("connect failed")
)

// Error is what Connect returns on failure: which cluster, how many
// endpoints were tried, and why. errors.Is matches its Err (one of the
// sentinels above) and its Cause (the last dial error). The errors for
// ErrNoEndpoint and ErrCircuitOpen are shared values, made once per cluster
// so refusing costs no allocation: do not modify an *Error.
type Error struct {
	Cluster  string
	Attempts int
	Err      error
	Cause    error
}

func (e *Error) Error() string {
	switch {
	case e.Cause != nil:
		return fmt.Sprintf("cluster %s: %v after %d attempts: %v", e.Cluster, e.Err, e.Attempts, e.Cause)
	default:
		return fmt.Sprintf("cluster %s: %v", e.Cluster, e.Err)
	}
}

// Unwrap gives errors.Is and errors.As both the sentinel and the cause.
func (e *Error) Unwrap() []error {
	if e.Cause == nil {
		return []error{e.Err}
	}
	return []error{e.Err, e.Cause}
}

// Dialer makes an upstream TCP connection; the engine's creates the socket
// inside the pod's network namespace with the bypass mark. It must honour
// ctx's deadline.
type Dialer func(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error)

// Connect opens a connection to one of the cluster's endpoints. key is the
// affinity hash of the client (balance.HashAddr of its address), used by the
// hash balancers and ignored by the others.
//
// In order: the circuit breakers refuse at once when the cluster is full
// (ErrCircuitOpen); a pick that finds no endpoint fails with ErrNoEndpoint;
// each attempt dials with the connect timeout; a failed attempt counts
// against the endpoint (outlier ejection) and, while retries and the retry
// budget allow, the next attempt goes to an endpoint not tried yet. If ctx
// ends, Connect returns its error without blaming the endpoint.
//
// On success the caller owns the connection and must call Lease.Done when
// it ends.
func (c *Cluster) Connect(ctx context.Context, key uint64, dial Dialer) (*net.TCPConn, *Lease, error) {
	// The steps are Connecting's, which an event loop drives without
	// blocking; here each attempt is one blocking dial. cn stays on the
	// stack: the lease Start allocates is the connect's only allocation
	// beyond the dial's timeout context.
	var cn Connecting
	addr, timeout, err := c.Start(key, &cn)
	for err == nil {
		dctx, cancel := context.WithTimeout(ctx, timeout)
		conn, derr := dial(dctx, addr)
		cancel()
		if derr == nil {
			if conn != nil {
				return conn, cn.Connected(), nil
			}
			derr = errNoConn
		}
		if ctx.Err() != nil {
			// The caller gave up, not the endpoint: Abandon blames nobody
			// and counts the connect as failed, which it is to the caller.
			n := cn.attempts()
			cn.Abandon()
			return nil, nil, &Error{Cluster: c.cfg.Name, Attempts: n, Err: ErrConnectFailed, Cause: ctx.Err()}
		}
		addr, timeout, err = cn.Failed(derr)
	}
	return nil, nil, err
}

// errNoConn is the failure of a dialer that broke its contract.
var errNoConn = errors.New("dialer returned no connection and no error")

// dialEndpoint dials e with the connect timeout and records the outcome on
// it: latency, connect failures in a row, ejection.
func (c *Cluster) dialEndpoint(ctx context.Context, dial Dialer, e *endpoint, start int64) (*net.TCPConn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.cfg.ConnectTimeout.D())
	conn, err := dial(dctx, e.Addr)
	cancel()
	now := c.now()
	if err == nil {
		if conn != nil {
			c.connectOK(e, start, now)
			return conn, nil
		}
		err = errNoConn
	}
	if ctx.Err() != nil {
		return nil, err
	}
	c.connectFailed(e, now)
	return nil, err
}

// connectOK records a connect to e that succeeded at now, started at
// start: the latency estimate learns it and e's connect failures in a row
// end. Every connect (Connect, Connecting, Lease.Dial) records through
// here and connectFailed, so they weigh endpoints alike.
func (c *Cluster) connectOK(e *endpoint, start, now int64) {
	e.st.connections.Add(1)
	e.st.connectStreak.Store(0)
	e.st.rtt.Observe(time.Duration(now-start), now, c.cfg.PeakEWMA.Decay.D())
}

// connectFailed records a connect to e that failed at now, the endpoint's
// fault: a failure in a row toward ejection, and in success-rate
// detection.
func (c *Cluster) connectFailed(e *endpoint, now int64) {
	e.st.connectFailures.Add(1)
	// A failed connect costs the whole timeout in the latency estimate, so
	// an endpoint that refuses fast does not look attractive.
	e.st.rtt.Observe(c.cfg.ConnectTimeout.D(), now, c.cfg.PeakEWMA.Decay.D())
	c.outcome(e, false, now)
	c.failed(e, &e.st.connectStreak, now)
}

// failed counts a failure in a row on e and ejects it at the threshold.
func (c *Cluster) failed(e *endpoint, streak *atomic.Int32, now int64) {
	o := &c.cfg.Outlier
	if o.Disabled || streak.Add(1) < int32(o.ConsecutiveFailures) {
		return
	}
	c.eject(e, now)
}

// eject takes e out of rotation for base×n (capped), where n counts its
// ejections in a row, unless that would eject more than
// outlier.maxEjectionPercent of the cluster (but at least one endpoint may
// always be ejected). Each base period spent back in rotation forgives one
// step of n.
func (c *Cluster) eject(e *endpoint, now int64) {
	st := c.st
	st.ejectMu.Lock()
	defer st.ejectMu.Unlock()
	if e.st.ejected(now) {
		return
	}
	ejected := 0
	for _, o := range c.eps {
		if o.st.ejected(now) {
			ejected++
		}
	}
	if ejected >= max(1, len(c.eps)*c.cfg.Outlier.MaxEjectionPercent/100) {
		return
	}
	base := int64(c.cfg.Outlier.BaseEjectionTime)
	step := int64(e.st.ejectStep.Load())
	if last := e.st.ejectedUntil.Load(); last > 0 && step > 0 {
		step = max(0, step-(now-last)/base)
	}
	step++
	d := min(base*step, int64(c.cfg.Outlier.MaxEjectionTime))
	e.st.ejectStep.Store(int32(step))
	e.st.ejectedUntil.Store(now + d)
	e.st.ejections.Add(1)
	e.st.connectStreak.Store(0)
	e.st.errorStreak.Store(0)
	if now+d > st.ejectedTill.Load() {
		st.ejectedTill.Store(now + d)
	}
}

// Lease is one connection's hold on an endpoint: it counts as active until
// Done.
type Lease struct {
	c    *Cluster
	ep   *endpoint
	done atomic.Bool
	// request marks an L7 lease (Pick): its life is one request, whose
	// latency feeds peak-EWMA, as connect latency does at L4. Beside the
	// fields every Done reads, before the view's list of endpoints tried.
	request bool
	view    pickView
}

// Endpoint is the address the connection went to.
func (l *Lease) Endpoint() netip.AddrPort { return l.ep.Addr }

// Done releases the lease when the relayed connection ends. Pass the
// upstream side's error (a reset by the endpoint, a read or write error on
// the upstream socket) or nil for a clean end; errors count toward outlier
// ejection (outlier.consecutiveFailures connections in a row), a clean end
// resets that count. A client's reset is not the endpoint's fault: pass nil.
// Calls after the first do nothing; Done on a nil Lease does nothing.
func (l *Lease) Done(err error) {
	if l == nil || l.ep == nil || !l.done.CompareAndSwap(false, true) {
		return
	}
	e, c := l.ep, l.c
	e.st.active.Add(-1)
	c.st.active.Add(-1)
	if c.srOn {
		c.outcome(e, err == nil, c.now())
	}
	if err == nil {
		l.succeeded()
		return
	}
	e.st.errors.Add(1)
	c.failed(e, &e.st.errorStreak, c.now())
}

// succeeded records a clean end on the lease's endpoint: its error
// streak ends and, for a request under peak_ewma, its latency counts.
func (l *Lease) succeeded() {
	e, c := l.ep, l.c
	// A load first: per L7 request, a store would take the shared line
	// from every other core for nothing.
	if e.st.errorStreak.Load() != 0 {
		e.st.errorStreak.Store(0)
	}
	if l.request && c.cfg.Balancer == PeakEWMA {
		now := c.now()
		e.st.rtt.Observe(time.Duration(now-l.view.now), now, c.cfg.PeakEWMA.Decay.D())
	}
}

// DoneRun ends every lease of ls as Done(nil) does (nil leases are
// skipped): for the requests one read of an upstream connection answered
// at once. Each lease reports its own clean outcome; what consecutive
// leases of one endpoint share is the decrement of the active counts (the
// cluster's and the endpoint's), made once for them instead of once per
// request on lines every core writes.
func DoneRun(ls []*Lease) {
	var (
		e *endpoint
		c *Cluster
		n int64
	)
	for _, l := range ls {
		if l == nil || l.ep == nil || !l.done.CompareAndSwap(false, true) {
			continue
		}
		if l.ep != e || l.c != c {
			if n > 0 {
				e.st.active.Add(-n)
				c.st.active.Add(-n)
			}
			e, c, n = l.ep, l.c, 0
		}
		n++
		if c.srOn {
			c.outcome(e, true, c.now())
		}
		l.succeeded()
	}
	if n > 0 {
		e.st.active.Add(-n)
		c.st.active.Add(-n)
	}
}

// retryBudget is a token bucket in thousandths of a retry: every new
// connection deposits budgetPercent×10, time adds minRetriesPerSecond×1000
// a second, and a retry takes 1000. The balance is capped at ten seconds of
// the minimum rate (at least 100 retries), so a calm period cannot bank a
// retry storm.
type retryBudget struct {
	milli atomic.Int64
	last  atomic.Int64 // clock of the last time-based refill
}

func budgetCap(minPerSecond int) int64 { return 1000 * int64(max(100, 10*minPerSecond)) }

func (b *retryBudget) add(n, limit int64) {
	for {
		t := b.milli.Load()
		next := min(t+n, limit)
		if next <= t || b.milli.CompareAndSwap(t, next) {
			return
		}
	}
}

func (b *retryBudget) deposit(percent, minPerSecond int) {
	b.add(int64(percent)*10, budgetCap(minPerSecond))
}

// refund returns a withdrawn retry that was not made.
func (b *retryBudget) refund(minPerSecond int) { b.add(1000, budgetCap(minPerSecond)) }

func (b *retryBudget) withdraw(now int64, minPerSecond int) bool {
	limit := budgetCap(minPerSecond)
	if last := b.last.Load(); now > last && b.last.CompareAndSwap(last, now) {
		elapsed := min(now-last, int64(10*time.Second))
		if last == 0 {
			elapsed = int64(time.Second)
		}
		b.add(elapsed*int64(minPerSecond)/1e6, limit)
	}
	for {
		t := b.milli.Load()
		if t < 1000 {
			return false
		}
		if b.milli.CompareAndSwap(t, t-1000) {
			return true
		}
	}
}
