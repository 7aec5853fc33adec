package cluster

import (
	"net/netip"
	"time"
)

// Connecting is one connect to the cluster in progress, for a caller that
// connects without blocking: an event loop that starts a non-blocking
// connect, waits for the socket in epoll and only then knows the outcome
// cannot hand Connect a Dialer, so it drives the same steps itself. Start
// admits the connect and names the first endpoint; for each attempt the
// caller reports Connected or Failed (which names the next endpoint while
// retries are left), or gives up with Abandon. Connect is these steps
// with a blocking dial, so both kinds of caller count, retry and eject
// alike.
//
// A connect holds the cluster's counts (active, pending) and the current
// endpoint's active count from Start until it ends: at Connected, at a
// Failed that returns an error, or at Abandon. Once it has ended (or
// before any Start) Connected returns nil, Failed returns an error and no
// address, and Abandon does nothing, so a caller whose paths race to end
// it cannot release the counts twice. The zero value is ready for Start,
// and so is an ended Connecting: keep one per client connection and
// reuse it. A Connecting is used by one goroutine at a time.
type Connecting struct {
	c *Cluster
	// l holds the pick view (the endpoints tried, the clock of the
	// current attempt's pick, which is its start). It becomes the
	// caller's at Connected; a connect that ended otherwise leaves it
	// for the next Start to reuse.
	l   *Lease
	key uint64
	// ep is the current attempt's endpoint, nil when no connect is in
	// progress.
	ep *endpoint
}

// errIdle is what Failed returns on a Connecting that never started.
var errIdle = &Error{Err: ErrNoEndpoint}

// Start begins a connect as Connect does: the circuit breakers refuse at
// once when the cluster is full (ErrCircuitOpen, counted as Connect counts
// it), the connect adds to the retry budget, and a pick that finds no
// endpoint fails with ErrNoEndpoint. Otherwise it returns the endpoint to
// connect to now and the connect timeout, the caller's deadline for this
// attempt; report the attempt's outcome with Connected or Failed. On error
// the connect has ended and holds nothing.
//
// cn may be zero or a Connecting used before: Start resets it (a connect
// still in progress in it is abandoned first, so no count leaks). Start
// allocates at most the lease that Connected hands out, as Connect does,
// and nothing when cn's last connect ended without one.
func (c *Cluster) Start(key uint64, cn *Connecting) (addr netip.AddrPort, timeout time.Duration, err error) {
	if cn.ep != nil {
		cn.Abandon()
	}
	st := c.st
	if st.active.Add(1) > int64(c.cfg.CircuitBreaker.MaxConnections) {
		st.active.Add(-1)
		st.circuitOpen.Add(1)
		return netip.AddrPort{}, 0, c.errCircuitOpen
	}
	if st.pending.Add(1) > int64(c.cfg.CircuitBreaker.MaxPendingConnects) {
		st.pending.Add(-1)
		st.active.Add(-1)
		st.circuitOpen.Add(1)
		return netip.AddrPort{}, 0, c.errCircuitOpen
	}
	st.budget.deposit(c.cfg.Retry.BudgetPercent, c.cfg.Retry.MinRetriesPerSecond)

	l := cn.l
	if l == nil {
		l = &Lease{c: c}
		cn.l = l
	} else {
		// Never handed out (Connected forgets it): reset in place.
		*l = Lease{c: c}
	}
	cn.c, cn.key = c, key
	e := c.pick(key, &l.view, c.now())
	if e == nil {
		st.pending.Add(-1)
		st.active.Add(-1)
		st.noEndpoint.Add(1)
		return netip.AddrPort{}, 0, c.errNoEndpoint
	}
	cn.begin(e)
	return e.Addr, c.cfg.ConnectTimeout.D(), nil
}

// begin makes e the current attempt, picked at l.view.now: it is tried
// (later picks avoid it) and counts as active on e from the attempt on.
func (cn *Connecting) begin(e *endpoint) {
	cn.l.view.remember(e.st)
	e.st.active.Add(1)
	cn.ep = e
}

// attempts is how many endpoints the connect has tried, the current one
// included; it stays readable after the connect ended without a
// connection (Connect reports it after Abandon).
func (cn *Connecting) attempts() int {
	if cn.l == nil {
		return 0
	}
	return cn.l.view.n
}

// Connected records that the current attempt connected: the endpoint's
// connections, its latency estimate (from the attempt's pick to now) and
// the end of its connect failures in a row, as Connect records a
// successful dial. It ends the connect and returns the lease the caller
// must Done when the connection ends; the lease is the caller's from then
// on and the Connecting forgets it. On a Connecting with no connect in
// progress it returns nil (whose Done does nothing).
func (cn *Connecting) Connected() *Lease {
	e := cn.ep
	if e == nil {
		return nil
	}
	c, l := cn.c, cn.l
	cn.ep, cn.l = nil, nil
	c.connectOK(e, l.view.now, c.now())
	c.st.connections.Add(1)
	c.st.pending.Add(-1)
	l.ep = e
	return l
}

// Failed records that the current attempt failed with err, the endpoint's
// fault (a refusal, a reset, the connect timeout): a connect failure on
// it, the whole timeout in its latency estimate, an outcome for
// success-rate detection and a failure in a row toward ejection, as
// Connect records a failed dial. Then, while retries
// (retry.maxRetries; none when retry.disabled) and the retry budget allow,
// it picks an endpoint the connect has not tried and returns it with the
// connect timeout: connect there and report again. Otherwise the connect
// ends and Failed returns what Connect would: ErrConnectFailed with the
// number of attempts and err as Cause.
//
// A caller that gives up for a reason of its own must Abandon instead, so
// the endpoint is not blamed. On a Connecting with no connect in progress
// Failed changes nothing and returns an error (ErrNoEndpoint), never an
// address.
func (cn *Connecting) Failed(err error) (addr netip.AddrPort, timeout time.Duration, ferr error) {
	e := cn.ep
	if e == nil {
		if cn.c == nil {
			return netip.AddrPort{}, 0, errIdle
		}
		return netip.AddrPort{}, 0, cn.c.errNoEndpoint
	}
	c, l, st := cn.c, cn.l, cn.c.st
	e.st.active.Add(-1)
	// One clock reading ends this attempt and starts the next.
	now := c.now()
	c.connectFailed(e, now)

	maxRetries := c.cfg.Retry.MaxRetries
	if c.cfg.Retry.Disabled {
		maxRetries = 0
	}
	// The budget is asked only when an endpoint is left, so a connect
	// that ran out of endpoints does not spend a retry.
	if l.view.n <= maxRetries {
		if next := c.pick(cn.key, &l.view, now); next != nil {
			if st.budget.withdraw(now, c.cfg.Retry.MinRetriesPerSecond) {
				st.retries.Add(1)
				cn.begin(next)
				return next.Addr, c.cfg.ConnectTimeout.D(), nil
			}
			st.retryBudgetExhausted.Add(1)
		}
	}
	cn.ep = nil
	st.active.Add(-1)
	st.connectFailures.Add(1)
	st.pending.Add(-1)
	return netip.AddrPort{}, 0, &Error{Cluster: c.cfg.Name, Attempts: l.view.n, Err: ErrConnectFailed, Cause: err}
}

// Abandon ends a connect whose caller gave up for a reason of its own (the
// engine shutting down, the client gone, its own deadline): as when
// Connect's ctx ends, the endpoint is not blamed, the counts the connect
// held are released, and the cluster counts a failed connect
// (Stats.ConnectFailures), since the client got no connection. The caller
// closes its socket. On a Connecting with no connect in progress Abandon
// does nothing.
func (cn *Connecting) Abandon() {
	e := cn.ep
	if e == nil {
		return
	}
	cn.ep = nil
	st := cn.c.st
	e.st.active.Add(-1)
	st.active.Add(-1)
	st.connectFailures.Add(1)
	st.pending.Add(-1)
}
