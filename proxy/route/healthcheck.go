package route

import (
	"context"
	"sync"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// RunHealthChecks drives the active health checks of every cluster with
// healthCheck.enabled in t's current snapshot until ctx ends: every tick
// (0: one second) it starts the checks that are due, at most limit at once
// across all clusters (0: 64). dial makes the check connections; give it
// the same kind of Dialer the engine gives Connect (a socket in a pod
// namespace, with the bypass mark), so checks see what connections see.
// It returns after the checks in flight have finished.
func RunHealthChecks(ctx context.Context, t *Table, dial cluster.Dialer, tick time.Duration, limit int) {
	if tick <= 0 {
		tick = time.Second
	}
	if limit <= 0 {
		limit = 64
	}
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	defer wg.Wait()
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		for _, c := range t.Load().Clusters() {
			c.StartHealthChecks(ctx, dial, sem, &wg)
		}
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
	}
}
