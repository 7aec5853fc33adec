package xds

import "github.com/prometheus/client_golang/prometheus"

// metrics are the client's Prometheus series.
type metrics struct {
	connected  prometheus.Gauge
	reconnects prometheus.Counter
	updates    *prometheus.CounterVec
	nacks      *prometheus.CounterVec
	absent     *prometheus.CounterVec
	resources  *prometheus.GaugeVec

	demandWaits, demandTimeouts prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_xds_connected", Help: "1 while the ADS stream to the control plane is open; 0 while the last routing is served without it.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_xds_streams_total", Help: "ADS streams opened (the first one and every reconnect).",
		}),
		updates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_xds_updates_total", Help: "xDS responses applied, by resource type (NACKed ones included).",
		}, []string{"type"}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_xds_nacks_total", Help: "xDS responses NACKed (one or more resources rejected), by resource type.",
		}, []string{"type"}),
		absent: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_xds_resources_absent_total", Help: "Subscribed resources declared absent after the does-not-exist timeout, by type.",
		}, []string{"type"}),
		resources: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weir_xds_resources", Help: "Accepted xDS resources held, by type.",
		}, []string{"type"}),
		demandWaits: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_xds_ondemand_waits_total", Help: "Connections held until an on-demand cluster arrived.",
		}),
		demandTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_xds_ondemand_timeouts_total", Help: "Connections refused because an on-demand cluster did not arrive in time.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connected, m.reconnects, m.updates, m.nacks, m.absent, m.resources, m.demandWaits, m.demandTimeouts)
	}
	return m
}
