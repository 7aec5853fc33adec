package http

import (
	"maps"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// routeMetrics counts requests per service, route rule and cluster. Label
// values come from the config only (service names, route names and rule
// indexes, cluster names) and from bounded status sets, never from a
// request's path or host, so the series stay as many as the config makes.
//
// Series are looked up in copy-on-write maps (cowMap): a request reads
// two maps with no lock and no allocation.
type routeMetrics struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	policies *prometheus.CounterVec

	byKey cowMap[routeKey, *routeSeries]
}

// routeKey names one route rule of one service, with the cluster that
// took the request ("" when none: a local reply or passthrough).
type routeKey struct {
	service, route string
	rule           int
	cluster        string
}

// routeSeries are the series of one routeKey.
type routeSeries struct {
	labels   [3]string // service, route, cluster
	durOnce  sync.Once // made on the first request, not by a policy count
	duration prometheus.Observer
	codes    cowMap[int32, prometheus.Counter] // by status<<8 | grpc+1
	policy   [len(policyNames)]atomic.Value    // prometheus.Counter per policy outcome; empty until first
}

// Policy outcomes counted in weir_route_policy_total.
const (
	policyRateLimited = iota
	policyDelay
	policyAbort
	policyMirror
	policyMirrorSkipped
	policyMirrorFailed
)

var policyNames = [...]string{"rate_limited", "fault_delay", "fault_abort", "mirror", "mirror_skipped", "mirror_failed"}

func (m *routeMetrics) register(reg prometheus.Registerer) {
	labels := []string{"service", "route", "cluster"}
	m.requests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_route_requests_total",
		Help: "L7 requests by service, route rule (name/index; empty when the service has no routes), cluster, HTTP status and gRPC status.",
	}, append(labels, "code", "grpc_status"))
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "weir_route_request_duration_seconds",
		Help: "Time from a request's head to the end of its response, by service, route rule and cluster.",
		// The same classic buckets as weir_http_request_duration_seconds,
		// and a native histogram (10 % wide buckets, at most 100) for a
		// Prometheus that scrapes the protobuf format.
		Buckets:                         []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		NativeHistogramBucketFactor:     1.1,
		NativeHistogramMaxBucketNumber:  100,
		NativeHistogramMinResetDuration: time.Hour,
	}, labels)
	m.policies = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_route_policy_total",
		Help: "Requests a route rule's policy acted on: rate_limited (answered 429), fault_delay, fault_abort, mirror (a copy sent), mirror_skipped (a copy not sent: body not wholly buffered, or too many copies under way), mirror_failed (a copy got no answer or a 5xx).",
	}, []string{"service", "route", "policy"})
	reg.MustRegister(m.requests, m.duration, m.policies)
}

// cowMap is a copy-on-write map: reads take no lock and allocate
// nothing; a key seen for the first time copies the map under a mutex.
// Right for maps that stop growing early, as config-bounded series do.
type cowMap[K comparable, V any] struct {
	mu sync.Mutex
	m  atomic.Pointer[map[K]V]
}

// get returns k's value, made by make on first use.
func (c *cowMap[K, V]) get(k K, make func() V) V {
	if p := c.m.Load(); p != nil {
		if v, ok := (*p)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	old := c.m.Load()
	var next map[K]V
	if old != nil {
		if v, ok := (*old)[k]; ok {
			return v
		}
		next = maps.Clone(*old)
	} else {
		next = map[K]V{}
	}
	v := make()
	next[k] = v
	c.m.Store(&next)
	return v
}

// series returns the series of key, made on first use.
func (m *routeMetrics) series(k routeKey) *routeSeries {
	return m.byKey.get(k, func() *routeSeries {
		name := ""
		if k.route != "" {
			name = k.route + "/" + strconv.Itoa(k.rule)
		}
		return &routeSeries{labels: [3]string{k.service, name, k.cluster}}
	})
}

// counter returns the request counter of one status and gRPC code.
func (s *routeSeries) counter(m *routeMetrics, status, grpc int) prometheus.Counter {
	return s.codes.get(int32(status)<<8|int32(grpc+1), func() prometheus.Counter {
		g := ""
		if grpc >= 0 {
			g = strconv.Itoa(grpc)
		}
		return m.requests.WithLabelValues(s.labels[0], s.labels[1], s.labels[2], strconv.Itoa(status), g)
	})
}

func keyOf(service string, a *route.Action, c *cluster.Cluster) routeKey {
	k := routeKey{service: service}
	if a != nil {
		k.route, k.rule = a.Route, a.Rule
	}
	if c != nil {
		k.cluster = c.Name()
	}
	return k
}

// route counts one finished request on its route's series. Statuses
// outside 100-599 count as 0 and gRPC codes outside 0-16 as 2 (UNKNOWN,
// as gRPC reads them), so a misbehaving upstream cannot add series.
func (m *Metrics) route(service string, a *route.Action, c *cluster.Cluster, status, grpc int, seconds float64) {
	if m == nil || service == "" {
		return
	}
	if status < 100 || status > 599 {
		status = 0
	}
	if grpc > 16 {
		grpc = 2
	}
	s := m.routes.series(keyOf(service, a, c))
	s.counter(&m.routes, status, grpc).Inc()
	s.durOnce.Do(func() { s.duration = m.routes.duration.WithLabelValues(s.labels[:]...) })
	s.duration.Observe(seconds)
}

// policy counts a rate limit or fault acting on a request of a's rule.
func (m *Metrics) policy(service string, a *route.Action, what int) {
	if m == nil {
		return
	}
	s := m.routes.series(keyOf(service, a, nil))
	c, ok := s.policy[what].Load().(prometheus.Counter)
	if !ok {
		// WithLabelValues returns the same series to racing callers.
		c = m.routes.policies.WithLabelValues(s.labels[0], s.labels[1], policyNames[what])
		s.policy[what].Store(c)
	}
	c.Inc()
}
