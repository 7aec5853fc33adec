package xds

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// Defaults for on-demand clusters.
const (
	DefaultOnDemandTimeout = 5 * time.Second
	DefaultOnDemandIdle    = 5 * time.Minute
)

// On-demand clusters (Options.OnDemand, delta only): listeners and route
// configurations are subscribed as usual (wildcard LDS, RDS by name), so
// the client knows every destination the control plane routes and which
// xDS clusters each needs; clusters (and through them their endpoints)
// are subscribed by name, the first time a connection to one of those
// destinations asks (Await), and unsubscribed once no connection asked
// for OnDemandIdle. A node thus holds the listeners of every service but
// the clusters, endpoints and balancers of the few it talks to.
//
// Only the goroutine running the stream touches the store; Await runs on
// connection goroutines and meets it through onDemand: the destination
// index (an immutable map swapped atomically at each full compose) and
// the wanted entries (under mu), with wake telling the stream goroutine
// that a new name is wanted.
type onDemand struct {
	timeout, idle time.Duration
	// index maps a listener address to the xDS clusters a connection to
	// it needs: the tcp_proxy cluster, or every backend of the HTTP
	// routes.
	index atomic.Pointer[map[netip.AddrPort][]string]
	wake  chan struct{}

	mu      sync.Mutex
	entries map[string]*demandEntry
	// gen is the store's index generation last loaded.
	gen uint64
	// requested and dropped count names subscribed and unsubscribed.
	requested, dropped uint64
}

// demandEntry is one wanted cluster.
type demandEntry struct {
	used int64 // unix nanoseconds of the last Await that needed it
	// pinned: named by a listener chain on a wildcard address or prefix
	// (0.0.0.0:80, prefix_ranges), which Await cannot index by address:
	// subscribed for as long as the listener names it, never idle.
	pinned bool
	held   bool // the cluster and its endpoints are published
	// absent: the control plane did not send the cluster within the
	// does-not-exist time; connections needing it fail at once.
	absent bool
	// ready is closed (and closed set) once held or absent; a new one
	// replaces it when neither holds any more.
	closed bool
	ready  chan struct{}
}

func newOnDemand(timeout, idle time.Duration) *onDemand {
	if timeout <= 0 {
		timeout = DefaultOnDemandTimeout
	}
	if idle <= 0 {
		idle = DefaultOnDemandIdle
	}
	return &onDemand{timeout: timeout, idle: idle, wake: make(chan struct{}, 1), entries: map[string]*demandEntry{}}
}

// Await implements proxy.OnDemand: it marks the clusters a connection to
// dst needs as used and, when one is not held yet, subscribes it and
// waits until it and its endpoints are published, for at most
// OnDemandTimeout. It returns nil at once when on-demand clusters are off,
// when no listener claims dst, or when everything dst needs is held.
func (c *Client) Await(ctx context.Context, dst netip.AddrPort) error {
	od := c.od
	if od == nil {
		return nil
	}
	idx := od.index.Load()
	if idx == nil {
		return nil
	}
	names := (*idx)[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())]
	if len(names) == 0 {
		return nil
	}
	return c.Want(ctx, names...)
}

// Want is Await by xDS cluster name: it subscribes the clusters not held
// yet and waits for them (bounded by OnDemandTimeout and ctx). Without
// on-demand clusters it returns nil: every cluster is held anyway.
func (c *Client) Want(ctx context.Context, names ...string) error {
	od := c.od
	if od == nil {
		return nil
	}
	now := time.Now().UnixNano()
	type wait struct {
		name string
		e    *demandEntry
		ch   chan struct{}
	}
	var waits []wait
	added := false
	od.mu.Lock()
	for _, n := range names {
		e := od.entries[n]
		if e == nil {
			e = &demandEntry{ready: make(chan struct{})}
			od.entries[n] = e
			od.requested++
			added = true
		}
		e.used = now
		if e.absent && !e.held {
			od.mu.Unlock()
			c.metrics.demandTimeouts.Inc()
			return fmt.Errorf("xds: cluster %s does not exist on the control plane", n)
		}
		if !e.held {
			waits = append(waits, wait{n, e, e.ready})
		}
	}
	od.mu.Unlock()
	if added {
		select {
		case od.wake <- struct{}{}:
		default:
		}
	}
	if len(waits) == 0 {
		return nil
	}
	c.metrics.demandWaits.Inc()
	t := time.NewTimer(od.timeout)
	defer t.Stop()
	for _, w := range waits {
		select {
		case <-w.ch:
			od.mu.Lock()
			held := w.e.held
			od.mu.Unlock()
			if !held {
				c.metrics.demandTimeouts.Inc()
				return fmt.Errorf("xds: cluster %s does not exist on the control plane", w.name)
			}
		case <-t.C:
			c.metrics.demandTimeouts.Inc()
			return fmt.Errorf("xds: cluster %s not received within %v", w.name, od.timeout)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// wanted returns the names to subscribe, forgetting those idle for longer
// than the idle time.
func (od *onDemand) wanted(now time.Time) map[string]bool {
	od.mu.Lock()
	defer od.mu.Unlock()
	cutoff := now.Add(-od.idle).UnixNano()
	out := make(map[string]bool, len(od.entries))
	for n, e := range od.entries {
		if e.used < cutoff && !e.pinned {
			delete(od.entries, n)
			od.dropped++
			continue
		}
		out[n] = true
	}
	return out
}

// syncDemand brings the cluster subscription to the wanted names: new
// ones are subscribed, idle ones unsubscribed and their clusters (and
// endpoints) forgotten. st nil only sets the subscription (before a
// stream's first request).
func (c *Client) syncDemand(st stream) error {
	t := c.byURL[ClusterType]
	names := c.od.wanted(time.Now())
	if maps.Equal(names, t.names) {
		return nil
	}
	before := len(c.store.clusters)
	c.resubscribe(t, names)
	dropped := len(c.store.clusters) != before
	if dropped {
		if err := c.publish(); err != nil {
			c.log.Warn("xds: routing after dropping idle clusters not applied", "err", err)
		}
	}
	if st == nil {
		// Before a stream's first requests, which carry the subscriptions.
		if dropped {
			c.resubscribe(c.byURL[EndpointType], c.store.endpointNames())
		}
		c.markReady()
		return nil
	}
	if err := c.subscribe(st, t); err != nil {
		return err
	}
	if dropped {
		if err := c.follow(st, t); err != nil {
			return err
		}
	}
	c.armPending()
	c.markReady()
	c.updateStatus()
	return nil
}

// markReady wakes the waiters of every wanted cluster that is now
// published with its endpoints, and re-arms those whose cluster went.
func (c *Client) markReady() {
	od := c.od
	if od == nil {
		return
	}
	eds, cds := c.byURL[EndpointType], c.byURL[ClusterType]
	od.mu.Lock()
	defer od.mu.Unlock()
	for n, e := range od.entries {
		e.absent = cds.absent[n]
		ce := c.store.clusters[n]
		ok := ce != nil
		if ok && ce.eds != "" {
			_, has := c.store.endpoints[ce.eds]
			ok = has || eds.absent[ce.eds]
		}
		e.held = ok
		resolved := ok || e.absent
		switch {
		case resolved && !e.closed:
			e.closed = true
			close(e.ready)
		case !resolved && e.closed:
			e.closed = false
			e.ready = make(chan struct{})
		}
	}
}

// demandCounts returns how many clusters are wanted, requested and
// dropped so far.
func (od *onDemand) counts() (wanted int, requested, dropped uint64) {
	od.mu.Lock()
	defer od.mu.Unlock()
	return len(od.entries), od.requested, od.dropped
}

// pin makes names the pinned entries, creating the missing ones.
func (od *onDemand) pin(names map[string]bool) {
	od.mu.Lock()
	added := false
	now := time.Now().UnixNano()
	for n, e := range od.entries {
		if e.pinned && !names[n] {
			e.pinned, e.used = false, now // idle from now on
		}
	}
	for n := range names {
		e := od.entries[n]
		if e == nil {
			e = &demandEntry{ready: make(chan struct{}), used: now}
			od.entries[n] = e
			od.requested++
			added = true
		}
		e.pinned = true
	}
	od.mu.Unlock()
	if added {
		select {
		case od.wake <- struct{}{}:
		default:
		}
	}
}

// demandIndex maps every listener address to the clusters a connection to
// it needs (the first listener by name claiming an address wins, as in
// compose), and lists the clusters of chains on wildcard addresses or
// prefixes, which are pinned.
func (s *store) demandIndex(listenerNames []string) (map[netip.AddrPort][]string, map[string]bool) {
	idx := map[netip.AddrPort][]string{}
	pinned := map[string]bool{}
	for _, ln := range listenerNames {
		for _, c := range s.listeners[ln].chains {
			var names []string
			switch {
			case c.cluster != "":
				names = []string{c.cluster}
			default:
				re := c.inline
				if c.rds != "" {
					re = s.routes[c.rds]
				}
				if re == nil {
					continue
				}
				seen := map[string]bool{}
				for _, r := range re.routes {
					for _, rule := range r.Rules {
						for _, b := range rule.Backends {
							if !seen[b.Service] {
								seen[b.Service] = true
								names = append(names, b.Service)
							}
						}
					}
				}
			}
			if len(names) == 0 {
				continue
			}
			if len(c.cidrs) > 0 {
				for _, n := range names {
					pinned[n] = true
				}
			}
			for _, a := range c.addrs {
				if _, dup := idx[a]; !dup {
					idx[a] = names
				}
			}
		}
	}
	return idx, pinned
}
