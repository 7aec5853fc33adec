// Package cluster turns a set of upstream endpoints into connections: it
// picks an endpoint with the configured balancer, connects with a timeout,
// retries other endpoints within a budget, ejects endpoints that keep
// failing and refuses fast when the cluster is saturated.
//
// A Cluster is immutable; a new configuration or endpoint set is a new
// Cluster built with the previous one in Options.Prev, which carries over
// everything live (counters, connections in flight, latency estimates,
// ejections, the retry budget), so metrics never go backwards and an
// endpoint that was ejected stays ejected across a rebuild.
package cluster

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weir-mesh/weir/proxy/balance"
)

// Balancer picks an endpoint among hs; it returns an index in [0,
// hs.Len()) or balance.None when hs allows none. Implementations live in
// package balance.
type Balancer interface {
	Pick(key uint64, hs balance.Hosts) int
}

// runBalancer is a Balancer that reserves a batch's turns at once
// (round robin: one write of its shared counter per batch, see PickRun)
// and then picks each turn's host, None when that host is not allowed.
type runBalancer interface {
	Turns(n int) uint64
	Turn(t uint64, hs balance.Hosts) int
}

var (
	_ runBalancer = (*balance.RoundRobin)(nil)
	_ Balancer    = (*balance.RoundRobin)(nil)
	_ Balancer    = (*balance.PeakEWMA)(nil)
	_ Balancer    = (*balance.Random)(nil)
	_ Balancer    = (*balance.LeastRequest)(nil)
	_ Balancer    = (*balance.RingHash)(nil)
	_ Balancer    = (*balance.Maglev)(nil)
)

// Options carry what a cluster needs beyond its config.
type Options struct {
	// Prev is the cluster this one replaces (same name), whose live state
	// is carried over; nil starts fresh.
	Prev *Cluster
	// LocalZone is the node's zone, for Config.Locality.
	LocalZone string
	// Clock replaces time.Now (tests); it must not run backwards.
	Clock func() time.Time
	// Seed seeds the balancers' random sources; 0 picks a random seed.
	Seed uint64
}

// Cluster is an immutable set of endpoints with the policy to connect to
// them. Build it with New.
type Cluster struct {
	cfg       Config     // with defaults
	raw       Config     // as given, for Matches
	spec      []Endpoint // as given, for Matches
	localZone string
	eps       []*endpoint
	tiers     []tier
	st        *clusterState
	clock     func() time.Time
	// realClock: clock is time.Now, so a caller's own time.Now reading
	// can stand in for it (PickInto), saving a reading per request.
	realClock bool

	errNoEndpoint  *Error
	errCircuitOpen *Error
	srOn           bool // success-rate outlier detection runs
	hashes         bool // the balancer picks by the key (UsesKey)
	// readsActive: the balancer reads the endpoints' active counts
	// (least_request, peak_ewma), so a batch's picks (PickRun) count each
	// at once, for the next pick of the batch to see it.
	readsActive bool
}

// tier is one group of endpoints a pick tries in order: the local zone of
// the subset, then the whole subset, then (subset fallback "any") the
// local zone of the cluster and the whole cluster.
type tier struct {
	eps   []*endpoint
	bal   Balancer
	local bool // subject to Locality.MinHealthyPercent
	// weights of all endpoints and of those whose Health is Healthy
	totalWeight, healthyWeight uint64
}

// clusterState outlives snapshots: counters, connections in flight, the
// retry budget and the lock that serialises ejection decisions.
type clusterState struct {
	active               atomic.Int64 // connections open or connecting
	pending              atomic.Int64 // connects in progress
	connections          atomic.Uint64
	connectFailures      atomic.Uint64 // connections that found no endpoint able to connect
	circuitOpen          atomic.Uint64
	noEndpoint           atomic.Uint64
	retries              atomic.Uint64
	retryBudgetExhausted atomic.Uint64
	budget               retryBudget

	ejectMu     sync.Mutex
	ejectedTill atomic.Int64 // the latest ejectedUntil of any endpoint
	srNext      atomic.Int64 // clock of the next success-rate evaluation; 0: not started
}

// New validates cfg and eps and builds a cluster. Errors name the field
// (e.g. "endpoints[2].addr: ...").
func New(cfg Config, eps []Endpoint, opt Options) (*Cluster, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := validateEndpoints(eps); err != nil {
		return nil, err
	}
	c := &Cluster{
		cfg:       cfg.WithDefaults(),
		raw:       cfg,
		spec:      eps,
		localZone: opt.LocalZone,
		clock:     opt.Clock,
	}
	if c.clock == nil {
		c.clock, c.realClock = time.Now, true
	}
	c.srOn = c.cfg.Outlier.SuccessRate.Enabled && !c.cfg.Outlier.Disabled
	c.hashes = c.cfg.Balancer == RingHash || c.cfg.Balancer == Maglev
	c.readsActive = c.cfg.Balancer == LeastRequest || c.cfg.Balancer == PeakEWMA
	prev := opt.Prev
	if prev != nil && prev.cfg.Name == cfg.Name {
		c.st = prev.st
	} else {
		prev = nil
		c.st = &clusterState{}
	}
	c.errNoEndpoint = &Error{Cluster: cfg.Name, Err: ErrNoEndpoint}
	c.errCircuitOpen = &Error{Cluster: cfg.Name, Err: ErrCircuitOpen}

	c.eps = make([]*endpoint, len(eps))
	var old map[netip.AddrPort]*endpointState
	if prev != nil && len(prev.eps) > 8 {
		old = make(map[netip.AddrPort]*endpointState, len(prev.eps))
		for _, e := range prev.eps {
			old[e.Addr] = e.st
		}
	}
	for i, e := range eps {
		var st *endpointState
		switch {
		case old != nil:
			st = old[e.Addr]
		case prev != nil:
			for _, p := range prev.eps {
				if p.Addr == e.Addr {
					st = p.st
					break
				}
			}
		}
		if st == nil {
			st = &endpointState{}
		}
		c.eps[i] = &endpoint{Endpoint: e, name: e.Addr.String(), st: st}
	}

	seed := opt.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	c.buildTiers(seed)
	return c, nil
}

func validateEndpoints(eps []Endpoint) error {
	var errs []error
	seen := make(map[netip.AddrPort]int, len(eps))
	for i, e := range eps {
		switch {
		case !e.Addr.IsValid():
			errs = append(errs, fmt.Errorf("endpoints[%d].addr is missing", i))
			continue
		case e.Addr.Port() == 0:
			errs = append(errs, fmt.Errorf("endpoints[%d].addr %s has no port", i, e.Addr))
		case e.Addr.Addr().Zone() != "":
			errs = append(errs, fmt.Errorf("endpoints[%d].addr %s must not carry an IPv6 zone", i, e.Addr))
		}
		if e.Health > Unhealthy {
			errs = append(errs, fmt.Errorf("endpoints[%d].health %d is not one of healthy, draining, unhealthy", i, e.Health))
		}
		if j, dup := seen[e.Addr]; dup {
			errs = append(errs, fmt.Errorf("endpoints[%d].addr %s repeats endpoints[%d]", i, e.Addr, j))
		}
		seen[e.Addr] = i
	}
	return errors.Join(errs...)
}

// buildTiers groups the endpoints into the tiers a pick walks and builds
// one balancer per tier.
func (c *Cluster) buildTiers(seed uint64) {
	all := c.eps
	subset := all
	if sel := c.cfg.Subset.Selector; len(sel) > 0 {
		subset = nil
		for _, e := range all {
			if matches(e.Labels, sel) {
				subset = append(subset, e)
			}
		}
	}
	var groups [][]*endpoint
	var local []bool
	add := func(set []*endpoint) {
		if c.cfg.Locality.Enabled && c.localZone != "" {
			var near []*endpoint
			for _, e := range set {
				if e.Labels[ZoneLabel] == c.localZone {
					near = append(near, e)
				}
			}
			if len(near) > 0 && len(near) < len(set) {
				groups = append(groups, near)
				local = append(local, true)
			}
		}
		if len(set) > 0 {
			groups = append(groups, set)
			local = append(local, false)
		}
	}
	add(subset)
	if len(subset) != len(all) && c.cfg.Subset.Fallback == FallbackAny {
		add(all)
	}
	c.tiers = make([]tier, len(groups))
	for i, g := range groups {
		t := &c.tiers[i]
		t.eps, t.local = g, local[i]
		ts := make([]balance.Target, len(g))
		for j, e := range g {
			ts[j] = balance.Target{Addr: e.Addr, Weight: e.Weight}
			w := uint64(max(e.Weight, 1))
			t.totalWeight += w
			if e.Health == Healthy {
				t.healthyWeight += w
			}
		}
		t.bal = newBalancer(c.cfg, ts, seed+uint64(i)*0x9e3779b97f4a7c15)
	}
}

func matches(labels, sel map[string]string) bool {
	for k, v := range sel {
		if w, ok := labels[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// newBalancer builds the configured balancer over one tier.
func newBalancer(cfg Config, ts []balance.Target, seed uint64) Balancer {
	switch cfg.Balancer {
	case PeakEWMA:
		return balance.NewPeakEWMA(ts, seed, cfg.PeakEWMA.DefaultRTT.D(), cfg.PeakEWMA.Decay.D())
	case Random:
		return balance.NewRandom(ts, seed)
	case LeastRequest:
		return balance.NewLeastRequest(ts, seed)
	case RingHash:
		return balance.NewRingHash(ts, cfg.RingHash.MinRingSize, cfg.RingHash.MaxRingSize)
	case Maglev:
		return balance.NewMaglev(ts, cfg.Maglev.TableSize)
	default:
		return balance.NewRoundRobin(ts, seed)
	}
}

// Name returns the cluster's name.
func (c *Cluster) Name() string { return c.cfg.Name }

// UsesKey reports whether picks depend on their key (ring_hash, maglev):
// an L7 caller whose key costs work per request (a Redis key's hash)
// computes it only when it does.
func (c *Cluster) UsesKey() bool { return c.hashes }

// Config returns the cluster's configuration with defaults filled in.
func (c *Cluster) Config() Config { return c.cfg }

// Matches reports whether a cluster built from cfg, eps and localZone would
// be the same as c, so a rebuild can keep c as it is. It compares values;
// an Endpoints slice shared with the previous build is recognised at once.
func (c *Cluster) Matches(cfg Config, eps []Endpoint, localZone string) bool {
	if c == nil || len(eps) != len(c.spec) || !cfg.Equal(&c.raw) {
		return false
	}
	if c.cfg.Locality.Enabled && localZone != c.localZone {
		return false
	}
	return EndpointsEqual(eps, c.spec)
}

// now is the cluster clock in nanoseconds since the process started (or
// since the injected clock's origin): positive and monotonic.
func (c *Cluster) now() int64 {
	return int64(c.clock().Sub(epoch)) + 1
}

// at is now from t, a time.Now reading the caller took, when the cluster
// runs on the real clock; a zero t, or an injected clock, reads the
// cluster's clock.
func (c *Cluster) at(t time.Time) int64 {
	if c.realClock && !t.IsZero() {
		return int64(t.Sub(epoch)) + 1
	}
	return c.now()
}

var epoch = time.Now()

// pick chooses an endpoint for one attempt, walking three passes over the
// tiers: healthy endpoints neither ejected nor failing health checks; then
// draining ones too; then, when every endpoint is out (panic), ejected and
// failing ones too. Within a pass a
// local tier is skipped while too little of it is up.
func (c *Cluster) pick(key uint64, v *pickView, now int64) *endpoint {
	v.now = now
	for pass := range 3 {
		v.pass = pass
		for ti := range c.tiers {
			t := &c.tiers[ti]
			if t.local && !c.localUp(t, v.now) {
				continue
			}
			v.t = t
			if i := t.bal.Pick(key, v); i >= 0 && i < len(t.eps) {
				return t.eps[i]
			}
		}
	}
	return nil
}

// localUp reports whether the local tier has enough healthy weight, not
// ejected, to keep traffic in the zone.
func (c *Cluster) localUp(t *tier, now int64) bool {
	up := t.healthyWeight
	if now < c.st.ejectedTill.Load() || c.cfg.HealthCheck.Enabled {
		for _, e := range t.eps {
			if e.Health == Healthy && (e.st.ejected(now) || e.st.checkDown.Load()) {
				up -= uint64(max(e.Weight, 1))
			}
		}
	}
	return up*100 >= t.totalWeight*uint64(c.cfg.Locality.MinHealthyPercent) && up > 0
}

// maxTried bounds how many endpoints a connection remembers so retries go
// elsewhere; Validate caps retry.maxRetries at 10.
const maxTried = 11

// pickView is the balance.Hosts one connection's picks see. It lives in
// the Lease, so a pick allocates nothing beyond the lease (and nothing at
// all through PickInto).
type pickView struct {
	t    *tier
	now  int64
	pass int
	n    int // before tried: a first pick writes n and tried[0] only
	// tried holds the endpoints tried, n of them
	tried [maxTried]*endpointState
}

func (v *pickView) Len() int { return len(v.t.eps) }

func (v *pickView) Allowed(i int) bool {
	e := v.t.eps[i]
	switch e.Health {
	case Unhealthy:
		return false
	case Draining:
		if v.pass == 0 {
			return false
		}
	}
	if v.pass < 2 && (e.st.ejected(v.now) || e.st.checkDown.Load()) {
		return false
	}
	for _, s := range v.tried[:v.n] {
		if s == e.st {
			return false
		}
	}
	return true
}

func (v *pickView) Active(i int) int64        { return v.t.eps[i].st.active.Load() }
func (v *pickView) RTT(i int) *balance.RTT    { return &v.t.eps[i].st.rtt }
func (v *pickView) Now() int64                { return v.now }
func (v *pickView) remember(s *endpointState) { v.tried[v.n] = s; v.n++ }
