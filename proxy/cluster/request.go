package cluster

import (
	"context"
	"net"
	"time"
)

// Pick chooses an endpoint for one L7 request without connecting: the L7
// half keeps pools of upstream connections per endpoint and needs the
// balancer's choice before it knows whether it must dial. The lease counts
// as an active request on the cluster (circuitBreaker.maxConnections bounds
// requests in flight) and on the endpoint (least_request sees it) until
// Done, which also feeds outlier ejection with the request's outcome and,
// under peak_ewma, the request's latency (from the pick to Done).
//
// prev, when not nil, is the lease of an earlier attempt of the same
// request: the pick avoids every endpoint prev tried, and the attempt is a
// retry that must fit the cluster's retry budget (ErrNoEndpoint when it
// does not, or when no untried endpoint is left). prev is released first
// if the caller has not ended it: without an outcome, so a failed Dial
// (already counted) does not also reset the endpoint's error streak.
func (c *Cluster) Pick(key uint64, prev *Lease) (*Lease, error) {
	l := new(Lease)
	if err := c.PickInto(l, key, prev, time.Time{}); err != nil {
		return nil, err
	}
	return l, nil
}

// PickInto is Pick into a lease the caller keeps, typically a field of
// its own per-request state that it recycles, so a request's pick
// allocates nothing. l must not be live (zero, or ended with Done or
// Release) and must not be prev: a retry alternates between two leases.
// now, when not zero, is a time.Now reading the caller already took for
// the request (e.g. once per read of a batch of requests); it stands in
// for the cluster's clock, which is then not read per request (a cluster
// built with Options.Clock ignores it). On error l is left ended.
func (c *Cluster) PickInto(l *Lease, key uint64, prev *Lease, now time.Time) error {
	st := c.st
	l.c, l.ep, l.request = c, nil, true
	if prev != nil {
		l.view = prev.view
		prev.Release()
	} else {
		l.view.t, l.view.pass, l.view.n = nil, 0, 0
	}
	// With no endpoint until the pick succeeds, Done or Release on a
	// failed lease does nothing (they check ep first); done is set only
	// on success, as an atomic store costs a full barrier per request.
	if l.view.n >= maxTried {
		return c.errNoEndpoint
	}
	if st.active.Add(1) > int64(c.cfg.CircuitBreaker.MaxConnections) {
		st.active.Add(-1)
		st.circuitOpen.Add(1)
		return c.errCircuitOpen
	}
	t := c.at(now)
	// A retry takes its budget before the pick, so a refused one does not
	// move the balancer on (round robin would otherwise hand the next
	// request to the endpoint that just failed); the token goes back if no
	// endpoint is left.
	if prev != nil && (c.cfg.Retry.Disabled || l.view.n > c.cfg.Retry.MaxRetries ||
		!st.budget.withdraw(t, c.cfg.Retry.MinRetriesPerSecond)) {
		st.active.Add(-1)
		st.retryBudgetExhausted.Add(1)
		return c.errNoEndpoint
	}
	e := c.pick(key, &l.view, t)
	if e == nil {
		if prev != nil {
			st.budget.refund(c.cfg.Retry.MinRetriesPerSecond)
		}
		st.active.Add(-1)
		st.noEndpoint.Add(1)
		return c.errNoEndpoint
	}
	if prev != nil {
		st.retries.Add(1)
	} else {
		st.budget.deposit(c.cfg.Retry.BudgetPercent, c.cfg.Retry.MinRetriesPerSecond)
	}
	l.view.remember(e.st)
	e.st.active.Add(1)
	l.ep = e
	st.connections.Add(1)
	l.done.Store(false)
	return nil
}

// PickRun is PickInto with no key and no earlier attempt for every lease
// of ls: for a batch of requests read together (a read's worth of
// pipelined commands) to a cluster that does not pick by key. The
// balancer still decides for each request on its own (round robin
// spreads a batch as it spreads requests one by one), and each lease is a
// request of its own (active until its Done, with its own outcome); what
// the batch shares is the cluster-wide bookkeeping of a pick (the
// circuit breaker's count of active requests, the retry budget's
// deposits, the pick counter, and round robin's turns: one add to its
// shared counter reserves the batch's), done once for the batch instead
// of once per request on lines every core writes. It reports false, having
// changed nothing, when the cluster picks by key (UsesKey), when the
// circuit breaker would not admit the whole batch, or when a request
// finds no endpoint: the caller then picks each lease on its own
// (PickInto), which admits as many as one-by-one picks would and gives
// each refused request its error. The leases must not be live; now is as
// for PickInto.
func (c *Cluster) PickRun(ls []*Lease, now time.Time) bool {
	n := int64(len(ls))
	if n == 0 || c.hashes {
		return false
	}
	st := c.st
	if st.active.Add(n) > int64(c.cfg.CircuitBreaker.MaxConnections) {
		st.active.Add(-n)
		return false
	}
	t := c.at(now)
	// A balancer that does not read the active counts (round robin,
	// random) sees no difference when a run of picks of one endpoint is
	// counted on it at once: one atomic add per run, not per request.
	var (
		runEP *endpoint
		runN  int64
	)
	// With one tier and a balancer that takes turns (round robin), the
	// batch's turns are reserved at once; a turn whose host is not
	// allowed is picked as usual.
	var (
		rb   runBalancer
		turn uint64
	)
	if len(c.tiers) == 1 && !c.tiers[0].local {
		if rb, _ = c.tiers[0].bal.(runBalancer); rb != nil {
			turn = rb.Turns(len(ls))
		}
	}
	for i, l := range ls {
		l.view.t, l.view.pass, l.view.n = nil, 0, 0
		var e *endpoint
		if rb != nil {
			tr := &c.tiers[0]
			l.view.t, l.view.now = tr, t
			if k := rb.Turn(turn+uint64(i), &l.view); k >= 0 && k < len(tr.eps) {
				e = tr.eps[k]
			}
		}
		if e == nil {
			e = c.pick(0, &l.view, t)
		}
		if e == nil {
			if runN > 0 {
				runEP.st.active.Add(runN)
			}
			for _, p := range ls[:i] {
				p.ep.st.active.Add(-1)
				p.ep = nil
			}
			st.active.Add(-n)
			return false
		}
		l.view.remember(e.st)
		switch {
		case c.readsActive:
			e.st.active.Add(1)
		case e == runEP:
			runN++
		default:
			if runN > 0 {
				runEP.st.active.Add(runN)
			}
			runEP, runN = e, 1
		}
		l.c, l.ep, l.request = c, e, true
	}
	if runN > 0 {
		runEP.st.active.Add(runN)
	}
	st.budget.add(int64(c.cfg.Retry.BudgetPercent)*10*n, budgetCap(c.cfg.Retry.MinRetriesPerSecond))
	st.connections.Add(uint64(n))
	for _, l := range ls {
		l.done.Store(false)
	}
	return true
}

// Dial opens a new connection to the lease's endpoint with the cluster's
// connect timeout, for an L7 pool that had none idle. The outcome is
// recorded on the endpoint as an L4 connect's is (latency estimate,
// connect failures in a row, ejection); the lease itself stays open either
// way: on error, retry with Pick(key, lease) or end it with Done.
func (l *Lease) Dial(ctx context.Context, dial Dialer) (*net.TCPConn, error) {
	return l.c.dialEndpoint(ctx, dial, l.ep, l.c.now())
}

// Release ends the lease without recording an outcome: for an attempt that
// ended for a reason that says nothing of the endpoint (the caller's
// context ended, a retry moved on after a failure Dial already counted).
// Calls after the first end, and Release on a nil Lease, do nothing.
func (l *Lease) Release() {
	if l == nil || l.ep == nil || !l.done.CompareAndSwap(false, true) {
		return
	}
	l.ep.st.active.Add(-1)
	l.c.st.active.Add(-1)
}
