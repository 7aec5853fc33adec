package rpc

import (
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts the requests the framework proxies. A nil *Metrics
// counts nothing.
type Metrics struct {
	requests   *prometheus.CounterVec
	duration   *durations
	heartbeats *prometheus.CounterVec
	retries    *prometheus.CounterVec

	mu      sync.Mutex
	methods int // label sets in use, bounded by maxMethods
	tables  map[tableKey]*serviceTable
}

type tableKey struct{ protocol, service string }

// serviceTable holds the series of one protocol and service, so that a
// session finds them once and a request costs one map probe by its
// method's bytes (no allocation), not a label hash.
type serviceTable struct {
	m                 *Metrics
	protocol, service string
	duration          *durationHist
	mu                sync.RWMutex
	methods           map[string]*methodCounters // by the method's bytes
	other             *methodCounters            // past maxMethods
}

// methodCounters are one method's request counters: "ok" apart, as it is
// nearly every request.
type methodCounters struct {
	ok       prometheus.Counter
	method   string
	mu       sync.Mutex
	statuses map[string]prometheus.Counter
}

// maxMethods bounds the distinct (protocol, service, method) label sets:
// a method name comes from the client, so past the bound new ones count
// as "other" rather than grow the registry without end.
const maxMethods = 1000

// NewMetrics registers the RPC metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_rpc_requests_total",
			Help: "RPC requests (Dubbo, SOFABolt, RocketMQ, Redis) proxied or answered by the agent, by protocol, weir service, method and status (the protocol's status; \"timeout\" for a request past its route's timeout, \"error\" for another answer the agent made, \"sent\" for a one-way request).",
		}, []string{"protocol", "service", "method", "status"}),
		duration: newDurations(),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_rpc_heartbeats_total",
			Help: "Heartbeats the agent answered itself, by protocol and side (client: a downstream application's; server: an upstream endpoint's).",
		}, []string{"protocol", "side"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_rpc_retries_total",
			Help: "RPC requests sent again to another endpoint, by protocol, weir service and reason (connect-failure, reset, busy).",
		}, []string{"protocol", "service", "reason"}),
		tables: map[tableKey]*serviceTable{},
	}
	reg.MustRegister(m.requests, m.duration, m.heartbeats, m.retries)
	return m
}

// table returns the series of one protocol and service; nil from a nil
// *Metrics.
func (m *Metrics) table(protocol, service string) *serviceTable {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	k := tableKey{protocol, service}
	t := m.tables[k]
	if t == nil {
		t = &serviceTable{m: m, protocol: protocol, service: service,
			duration: m.duration.hist(protocol), methods: map[string]*methodCounters{}}
		m.tables[k] = t
	}
	return t
}

// counters returns the counters of method (the method's bytes are not
// kept); nil from a nil table.
func (t *serviceTable) counters(method []byte) *methodCounters {
	if t == nil {
		return nil
	}
	t.mu.RLock()
	mc := t.methods[string(method)]
	t.mu.RUnlock()
	if mc == nil {
		mc = t.newMethod(method)
	}
	return mc
}

// request counts one answered request of the method mc counts (nil: no
// metrics), read at start and answered at end (zero: now).
func (t *serviceTable) request(mc *methodCounters, status string, start, end time.Time) {
	if t == nil || mc == nil {
		return
	}
	if status == "ok" {
		mc.ok.Inc()
	} else {
		mc.status(t, status).Inc()
	}
	t.observe(start, end, nil)
}

// observe records one request's duration, read at start and answered at
// end (zero: now), at once or, with run set, with run's others; nil
// counts nothing.
func (t *serviceTable) observe(start, end time.Time, run *durationRun) {
	if t == nil {
		return
	}
	if end.IsZero() {
		end = time.Now()
	}
	if run != nil {
		run.addSpan(t.duration, start, end)
		return
	}
	t.duration.observe(end.Sub(start))
}

// methodCache is one reader's last few methods and their counters: a
// client calls the same few methods over and over, so most requests find
// their counters by comparing the method's bytes with a few names, with
// no lock and no map probe. Not safe for concurrent use.
type methodCache struct {
	entries [4]struct {
		name string
		mc   *methodCounters
	}
	next int // the entry a miss replaces
}

// get returns the counters of method, from the cache or t; nil from a nil
// table.
func (c *methodCache) get(t *serviceTable, method []byte) *methodCounters {
	if t == nil {
		return nil
	}
	for i := range c.entries {
		if e := &c.entries[i]; e.mc != nil && e.name == string(method) {
			return e.mc
		}
	}
	e := &c.entries[c.next]
	c.next = (c.next + 1) % len(c.entries)
	e.mc, e.name = t.counters(method), string(method)
	return e.mc
}

// newMethod makes the counters of a method not seen yet, or returns
// the shared "other" ones past maxMethods.
func (t *serviceTable) newMethod(method []byte) *methodCounters {
	t.mu.Lock()
	defer t.mu.Unlock()
	if mc := t.methods[string(method)]; mc != nil {
		return mc
	}
	t.m.mu.Lock()
	full := t.m.methods >= maxMethods
	if !full {
		t.m.methods++
	}
	t.m.mu.Unlock()
	if full {
		if t.other == nil {
			t.other = &methodCounters{ok: t.m.requests.WithLabelValues(t.protocol, t.service, "other", "ok"), method: "other"}
		}
		return t.other
	}
	// A method name is the client's bytes: Prometheus panics on a label
	// that is not UTF-8.
	label := strings.ToValidUTF8(string(method), "\uFFFD")
	if label == "" {
		label = "none"
	}
	mc := &methodCounters{ok: t.m.requests.WithLabelValues(t.protocol, t.service, label, "ok"), method: label}
	t.methods[string(method)] = mc
	return mc
}

// status returns the counter of a status other than "ok".
func (mc *methodCounters) status(t *serviceTable, status string) prometheus.Counter {
	mc.mu.Lock()
	defer mc.mu.Unlock()
	c := mc.statuses[status]
	if c == nil {
		if mc.statuses == nil {
			mc.statuses = map[string]prometheus.Counter{}
		}
		c = t.m.requests.WithLabelValues(t.protocol, t.service, mc.method, status)
		mc.statuses[status] = c
	}
	return c
}

// heartbeat counts one heartbeat answered locally.
func (m *Metrics) heartbeat(protocol string, from Side) {
	if m == nil {
		return
	}
	side := "client"
	if from == Server {
		side = "server"
	}
	m.heartbeats.WithLabelValues(protocol, side).Inc()
}

// retry counts one request sent again.
func (m *Metrics) retry(protocol, service, reason string) {
	if m == nil {
		return
	}
	m.retries.WithLabelValues(protocol, service, reason).Inc()
}
