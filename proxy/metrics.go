package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the engine's connection counters, labelled by direction.
type Metrics struct {
	connections   *prometheus.CounterVec
	active        *prometheus.GaugeVec
	bytesTotal    *prometheus.CounterVec
	connectErrors *prometheus.CounterVec
	refusedTotal  *prometheus.CounterVec
}

// NewMetrics registers the engine's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_connections_total", Help: "Captured connections accepted by the agent.",
		}, []string{"direction"}),
		active: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weir_connections_active", Help: "Captured connections currently open.",
		}, []string{"direction"}),
		bytesTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_bytes_total", Help: "Bytes relayed, counted when a connection ends. stream is client_to_upstream or upstream_to_client.",
		}, []string{"direction", "stream"}),
		connectErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_upstream_connect_errors_total", Help: "Captured connections whose upstream could not be connected.",
		}, []string{"direction"}),
		refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_connections_refused_total", Help: "Captured connections closed before any upstream connect, by reason.",
		}, []string{"direction", "reason"}),
	}
	reg.MustRegister(m.connections, m.active, m.bytesTotal, m.connectErrors, m.refusedTotal)
	for _, d := range []Direction{Outbound, Inbound} {
		m.connections.WithLabelValues(string(d))
		m.active.WithLabelValues(string(d))
		m.connectErrors.WithLabelValues(string(d))
		m.bytesTotal.WithLabelValues(string(d), "client_to_upstream")
		m.bytesTotal.WithLabelValues(string(d), "upstream_to_client")
	}
	return m
}

func (m *Metrics) accepted(d Direction) {
	m.connections.WithLabelValues(string(d)).Inc()
	m.active.WithLabelValues(string(d)).Inc()
}

func (m *Metrics) closed(d Direction) { m.active.WithLabelValues(string(d)).Dec() }

func (m *Metrics) connectError(d Direction) { m.connectErrors.WithLabelValues(string(d)).Inc() }

func (m *Metrics) refused(d Direction, reason string) {
	m.refusedTotal.WithLabelValues(string(d), reason).Inc()
}

func (m *Metrics) bytes(d Direction, up, down int64) {
	m.bytesTotal.WithLabelValues(string(d), "client_to_upstream").Add(float64(up))
	m.bytesTotal.WithLabelValues(string(d), "upstream_to_client").Add(float64(down))
}
