package rpc

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics counts the requests the framework proxies. A nil *Metrics
// counts nothing.
type Metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	heartbeats *prometheus.CounterVec
	retries    *prometheus.CounterVec

	mu      sync.Mutex
	methods map[methodKey]bool // label sets in use, bounded by maxMethods
	// counters and durations cache the series already made, so a request
	// costs a map probe, not a label hash.
	counters  sync.Map // counterKey -> prometheus.Counter
	durations sync.Map // protocol -> prometheus.Observer
}

type methodKey struct{ protocol, service, method string }

type counterKey struct {
	methodKey
	status string
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
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weir_rpc_request_duration_seconds",
			Help:    "Time from reading an RPC request to its answer being ready, by protocol.",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"protocol"}),
		heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_rpc_heartbeats_total",
			Help: "Heartbeats the agent answered itself, by protocol and side (client: a downstream application's; server: an upstream endpoint's).",
		}, []string{"protocol", "side"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_rpc_retries_total",
			Help: "RPC requests sent again to another endpoint, by protocol, weir service and reason (connect-failure, reset, busy).",
		}, []string{"protocol", "service", "reason"}),
		methods: map[methodKey]bool{},
	}
	reg.MustRegister(m.requests, m.duration, m.heartbeats, m.retries)
	return m
}

// request counts one answered request.
func (m *Metrics) request(protocol, service string, method []byte, status string, start time.Time) {
	if m == nil {
		return
	}
	k := counterKey{methodKey{protocol, service, string(method)}, status}
	if k.method == "" {
		k.method = "none"
	}
	c, ok := m.counters.Load(k)
	if !ok {
		m.mu.Lock()
		if !m.methods[k.methodKey] {
			if len(m.methods) < maxMethods {
				m.methods[k.methodKey] = true
			} else {
				k.method = "other"
			}
		}
		m.mu.Unlock()
		c, _ = m.counters.LoadOrStore(k, m.requests.WithLabelValues(protocol, service, k.method, status))
	}
	c.(prometheus.Counter).Inc()
	d, ok := m.durations.Load(protocol)
	if !ok {
		d, _ = m.durations.LoadOrStore(protocol, m.duration.WithLabelValues(protocol))
	}
	d.(prometheus.Observer).Observe(time.Since(start).Seconds())
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
