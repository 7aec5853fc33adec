package proxy

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the engine's connection counters, labelled by direction. The
// per-direction series are resolved once, so the hot path does no label
// lookup.
type Metrics struct {
	refusedTotal *prometheus.CounterVec
	dirs         [2]dirMetrics
	// loopsHolding is how many event loops hold a P now (loops.go).
	loopsHolding prometheus.Gauge
	// loopConns is how many connections the event loops relay now.
	loopConns prometheus.Gauge
}

// dirMetrics are one direction's series.
type dirMetrics struct {
	connections, connectErrors prometheus.Counter
	active                     prometheus.Gauge
	bytesUp, bytesDown         prometheus.Counter
}

// NewMetrics registers the engine's series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	connections := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_connections_total", Help: "Captured connections accepted by the agent.",
	}, []string{"direction"})
	active := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weir_connections_active", Help: "Captured connections currently open.",
	}, []string{"direction"})
	bytesTotal := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_bytes_total", Help: "Bytes relayed, counted when a connection ends. stream is client_to_upstream or upstream_to_client.",
	}, []string{"direction", "stream"})
	connectErrors := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_upstream_connect_errors_total", Help: "Captured connections whose upstream could not be connected.",
	}, []string{"direction"})
	m := &Metrics{refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_connections_refused_total", Help: "Captured connections closed before any upstream connect, by reason.",
	}, []string{"direction", "reason"}),
		loopsHolding: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_event_loops_holding", Help: "Event loops (runtime.loops) busy enough to hold a P of their own; GOMAXPROCS is raised by as many.",
		}),
		loopConns: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_event_loop_connections", Help: "L4 connections the event loops (runtime.loops) relay now, handed-over ones included; the rest of weir_connections_active is on goroutines.",
		})}
	reg.MustRegister(connections, active, bytesTotal, connectErrors, m.refusedTotal, m.loopsHolding, m.loopConns)
	for i, d := range []Direction{Outbound, Inbound} {
		m.dirs[i] = dirMetrics{
			connections:   connections.WithLabelValues(string(d)),
			connectErrors: connectErrors.WithLabelValues(string(d)),
			active:        active.WithLabelValues(string(d)),
			bytesUp:       bytesTotal.WithLabelValues(string(d), "client_to_upstream"),
			bytesDown:     bytesTotal.WithLabelValues(string(d), "upstream_to_client"),
		}
	}
	return m
}

func (m *Metrics) dir(d Direction) *dirMetrics {
	if d == Inbound {
		return &m.dirs[1]
	}
	return &m.dirs[0]
}

func (m *Metrics) accepted(d Direction) {
	dm := m.dir(d)
	dm.connections.Inc()
	dm.active.Inc()
}

func (m *Metrics) closed(d Direction) { m.dir(d).active.Dec() }

// reopened counts an open connection again that a goroutine handed to an
// event loop: the goroutine's closed and the loop's both follow.
func (m *Metrics) reopened(d Direction) { m.dir(d).active.Inc() }

func (m *Metrics) connectError(d Direction) { m.dir(d).connectErrors.Inc() }

func (m *Metrics) refused(d Direction, reason string) {
	m.refusedTotal.WithLabelValues(string(d), reason).Inc()
}

func (m *Metrics) bytes(d Direction, up, down int64) {
	dm := m.dir(d)
	dm.bytesUp.Add(float64(up))
	dm.bytesDown.Add(float64(down))
}
