package cluster

import (
	"context"
	"sync"
)

// HealthCheck runs the active TCP health checks that are due on c's
// endpoints (healthCheck.enabled), each a connect through dial bounded by
// healthCheck.timeout, and returns when they are done. A check passes when
// the connect succeeds (the connection is closed at once).
// healthCheck.unhealthyThreshold failures in a row take an endpoint out of
// rotation; healthCheck.healthyThreshold passes in a row bring it back. The
// check state lives with the endpoint, so it survives rebuilds.
//
// limit bounds the checks run at once (0: no bound). Checks of an endpoint
// never overlap, even when HealthCheck is called again before the last
// returned. Callers call it periodically (route.RunHealthChecks does).
func (c *Cluster) HealthCheck(ctx context.Context, dial Dialer, limit int) {
	var sem chan struct{}
	if limit > 0 {
		sem = make(chan struct{}, limit)
	}
	var wg sync.WaitGroup
	c.StartHealthChecks(ctx, dial, sem, &wg)
	wg.Wait()
}

// StartHealthChecks is HealthCheck without the wait: it starts the due
// checks, each holding a slot of sem (nil: unbounded) while it runs and
// counted in wg, and returns at once. It lets one loop drive the checks of
// many clusters under one concurrency bound.
func (c *Cluster) StartHealthChecks(ctx context.Context, dial Dialer, sem chan struct{}, wg *sync.WaitGroup) {
	hc := &c.cfg.HealthCheck
	if !hc.Enabled {
		return
	}
	now := c.now()
	for _, e := range c.eps {
		st := e.st
		if now < st.checkDue.Load() || !st.checking.CompareAndSwap(false, true) {
			continue
		}
		st.checkDue.Store(now + int64(hc.Interval))
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer st.checking.Store(false)
			if sem != nil {
				select {
				case sem <- struct{}{}:
					defer func() { <-sem }()
				case <-ctx.Done():
					return
				}
			}
			c.checkOne(ctx, dial, e)
		}()
	}
}

func (c *Cluster) checkOne(ctx context.Context, dial Dialer, e *endpoint) {
	hc := &c.cfg.HealthCheck
	cctx, cancel := context.WithTimeout(ctx, hc.Timeout.D())
	conn, err := dial(cctx, e.Addr)
	cancel()
	if conn != nil {
		conn.Close()
	}
	if ctx.Err() != nil {
		return // shutting down: no verdict
	}
	st := e.st
	st.checks.Add(1)
	pass := err == nil && conn != nil
	if !pass {
		st.checkFails.Add(1)
	}
	down := st.checkDown.Load()
	if pass != down {
		// The check agrees with the current state.
		st.checkStreak.Store(0)
		return
	}
	need := hc.UnhealthyThreshold
	if down {
		need = hc.HealthyThreshold
	}
	if int(st.checkStreak.Add(1)) >= need {
		st.checkDown.Store(!down)
		st.checkStreak.Store(0)
	}
}
