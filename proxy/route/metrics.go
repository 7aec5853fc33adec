package route

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Collector exports per-cluster and per-endpoint metrics of whatever
// snapshot a Table holds at scrape time. Counters are cumulative per
// cluster name and endpoint address across rebuilds; an endpoint removed and
// added back later starts again from zero (a counter reset, which
// Prometheus' rate() handles).
type Collector struct {
	t *Table
}

// NewCollector returns a Collector over t; register it once.
func NewCollector(t *Table) *Collector { return &Collector{t: t} }

var (
	clusterLabels  = []string{"cluster"}
	endpointLabels = []string{"cluster", "endpoint"}

	descClusterConnections = prometheus.NewDesc("weir_cluster_connections_total",
		"Connections established to the cluster.", clusterLabels, nil)
	descClusterConnectFailures = prometheus.NewDesc("weir_cluster_connect_failures_total",
		"Connections for which every connect attempt failed.", clusterLabels, nil)
	descClusterCircuitOpen = prometheus.NewDesc("weir_cluster_circuit_open_total",
		"Connections refused because a circuit breaker was open.", clusterLabels, nil)
	descClusterNoEndpoint = prometheus.NewDesc("weir_cluster_no_endpoint_total",
		"Connections refused because no endpoint was available.", clusterLabels, nil)
	descClusterRetries = prometheus.NewDesc("weir_cluster_retries_total",
		"Connect attempts after the first, each on another endpoint.", clusterLabels, nil)
	descClusterBudgetExhausted = prometheus.NewDesc("weir_cluster_retry_budget_exhausted_total",
		"Retries not made because the retry budget was spent.", clusterLabels, nil)
	descClusterActive = prometheus.NewDesc("weir_cluster_active_connections",
		"Connections open or connecting.", clusterLabels, nil)
	descClusterPending = prometheus.NewDesc("weir_cluster_pending_connects",
		"Connects in progress.", clusterLabels, nil)

	descEndpointConnections = prometheus.NewDesc("weir_endpoint_connections_total",
		"Connections established to the endpoint.", endpointLabels, nil)
	descEndpointActive = prometheus.NewDesc("weir_endpoint_active_connections",
		"Connections open or connecting to the endpoint.", endpointLabels, nil)
	descEndpointConnectFailures = prometheus.NewDesc("weir_endpoint_connect_failures_total",
		"Failed connect attempts to the endpoint.", endpointLabels, nil)
	descEndpointErrors = prometheus.NewDesc("weir_endpoint_errors_total",
		"Connections to the endpoint that ended in an upstream error.", endpointLabels, nil)
	descEndpointEjections = prometheus.NewDesc("weir_endpoint_ejections_total",
		"Times the endpoint was ejected by outlier detection.", endpointLabels, nil)
	descEndpointEjected = prometheus.NewDesc("weir_endpoint_ejected",
		"1 while the endpoint is ejected, else 0.", endpointLabels, nil)
	descEndpointCheckFailing = prometheus.NewDesc("weir_endpoint_health_check_failing",
		"1 while active health checks keep the endpoint out, else 0.", endpointLabels, nil)
	descEndpointCheckFailures = prometheus.NewDesc("weir_endpoint_health_check_failures_total",
		"Failed active health checks of the endpoint.", endpointLabels, nil)
	descEndpointRTT = prometheus.NewDesc("weir_endpoint_connect_rtt_seconds",
		"Peak-EWMA estimate of the endpoint's connect latency.", endpointLabels, nil)
)

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		descClusterConnections, descClusterConnectFailures, descClusterCircuitOpen,
		descClusterNoEndpoint, descClusterRetries, descClusterBudgetExhausted,
		descClusterActive, descClusterPending,
		descEndpointConnections, descEndpointActive, descEndpointConnectFailures,
		descEndpointErrors, descEndpointEjections, descEndpointEjected, descEndpointRTT,
		descEndpointCheckFailing, descEndpointCheckFailures,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	counter, gauge := prometheus.CounterValue, prometheus.GaugeValue
	for _, cl := range c.t.Load().Clusters() {
		s := cl.Stats()
		n := s.Name
		ch <- prometheus.MustNewConstMetric(descClusterConnections, counter, float64(s.Connections), n)
		ch <- prometheus.MustNewConstMetric(descClusterConnectFailures, counter, float64(s.ConnectFailures), n)
		ch <- prometheus.MustNewConstMetric(descClusterCircuitOpen, counter, float64(s.CircuitOpen), n)
		ch <- prometheus.MustNewConstMetric(descClusterNoEndpoint, counter, float64(s.NoEndpoint), n)
		ch <- prometheus.MustNewConstMetric(descClusterRetries, counter, float64(s.Retries), n)
		ch <- prometheus.MustNewConstMetric(descClusterBudgetExhausted, counter, float64(s.RetryBudgetExhausted), n)
		ch <- prometheus.MustNewConstMetric(descClusterActive, gauge, float64(s.Active), n)
		ch <- prometheus.MustNewConstMetric(descClusterPending, gauge, float64(s.Pending), n)
		for _, e := range s.Endpoints {
			ep := e.Name
			ejected, failing := 0.0, 0.0
			if e.Ejected {
				ejected = 1
			}
			if e.HealthCheckFailing {
				failing = 1
			}
			ch <- prometheus.MustNewConstMetric(descEndpointConnections, counter, float64(e.Connections), n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointActive, gauge, float64(e.Active), n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointConnectFailures, counter, float64(e.ConnectFailures), n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointErrors, counter, float64(e.Errors), n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointEjections, counter, float64(e.Ejections), n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointEjected, gauge, ejected, n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointRTT, gauge, e.RTT.D().Seconds(), n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointCheckFailing, gauge, failing, n, ep)
			ch <- prometheus.MustNewConstMetric(descEndpointCheckFailures, counter, float64(e.HealthCheckFailures), n, ep)
		}
	}
}

var _ prometheus.Collector = (*Collector)(nil)
