package sniff

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// resultError is the result label of a Detect that failed to read.
const resultError = "error"

// Metrics count Detect outcomes and time them. Every series is resolved
// when Metrics is made, so recording one is an atomic add with no label
// lookup. A nil *Metrics records nothing.
type Metrics struct {
	// Index numProtocols is the "error" result.
	total    [numProtocols + 1]prometheus.Counter
	duration [numProtocols + 1]prometheus.Observer
}

// durationBuckets run from a client whose first flight was already queued
// (tens of µs) to past DefaultTimeout, where Timeout results land.
var durationBuckets = []float64{25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1}

// NewMetrics registers weir_sniff_total and weir_sniff_duration_seconds,
// both labelled by result (a Protocol's String, or "error"), on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	total := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_sniff_total",
		Help: "Protocol detections by result: a protocol, unknown (opaque TCP), timeout (client silent), skipped (declared port) or error.",
	}, []string{"result"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "weir_sniff_duration_seconds",
		Help:    "Time Detect took to reach its result, including waiting for the client's first bytes.",
		Buckets: durationBuckets,
	}, []string{"result"})
	reg.MustRegister(total, duration)
	m := &Metrics{}
	for i := range m.total {
		label := resultError
		if p := Protocol(i); p < numProtocols {
			label = p.String()
		}
		m.total[i] = total.WithLabelValues(label)
		m.duration[i] = duration.WithLabelValues(label)
	}
	return m
}

func (m *Metrics) observe(p Protocol, d time.Duration) {
	if m == nil || p >= numProtocols {
		return
	}
	m.record(int(p), d)
}

func (m *Metrics) failed(d time.Duration) {
	if m != nil {
		m.record(int(numProtocols), d)
	}
}

func (m *Metrics) record(i int, d time.Duration) {
	m.total[i].Inc()
	m.duration[i].Observe(d.Seconds())
}
