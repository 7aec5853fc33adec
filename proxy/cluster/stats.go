package cluster

import "time"

// Stats is a point-in-time copy of a cluster's counters, for metrics and
// the config dump. Counters are cumulative over the life of the cluster's
// name, across rebuilds.
type Stats struct {
	Name string `json:"name"`
	// Connections established.
	Connections uint64 `json:"connections"`
	// ConnectFailures counts connections for which every attempt failed.
	ConnectFailures uint64 `json:"connectFailures"`
	// CircuitOpen counts connections refused by a circuit breaker.
	CircuitOpen uint64 `json:"circuitOpen"`
	// NoEndpoint counts connections refused because no endpoint was
	// available.
	NoEndpoint uint64 `json:"noEndpoint"`
	// Retries counts attempts after the first.
	Retries uint64 `json:"retries"`
	// RetryBudgetExhausted counts retries the budget did not allow.
	RetryBudgetExhausted uint64 `json:"retryBudgetExhausted"`
	// Active is connections open or connecting; Pending is connecting.
	Active  int64 `json:"active"`
	Pending int64 `json:"pending"`

	Endpoints []EndpointStats `json:"endpoints"`
}

// EndpointStats is a point-in-time copy of one endpoint's state.
type EndpointStats struct {
	Endpoint
	// Name is Addr as text, the metrics label.
	Name            string `json:"-"`
	Active          int64  `json:"active"`
	Connections     uint64 `json:"connections"`
	ConnectFailures uint64 `json:"connectFailures"`
	// Errors counts connections that ended in an upstream error.
	Errors    uint64 `json:"errors"`
	Ejections uint64 `json:"ejections"`
	// Ejected is true while the endpoint is out of rotation; EjectedFor is
	// the time left.
	Ejected    bool     `json:"ejected"`
	EjectedFor Duration `json:"ejectedFor,omitempty"`
	// HealthCheckFailing is true while active health checks keep the
	// endpoint out; HealthChecks and HealthCheckFailures count checks.
	HealthCheckFailing  bool   `json:"healthCheckFailing,omitempty"`
	HealthChecks        uint64 `json:"healthChecks,omitempty"`
	HealthCheckFailures uint64 `json:"healthCheckFailures,omitempty"`
	// RTT is the peak-EWMA estimate of connect latency, 0 before the first
	// connect.
	RTT Duration `json:"rtt,omitempty"`
}

// Stats copies the cluster's counters and per-endpoint state.
func (c *Cluster) Stats() Stats {
	st := c.st
	s := Stats{
		Name:                 c.cfg.Name,
		Connections:          st.connections.Load(),
		ConnectFailures:      st.connectFailures.Load(),
		CircuitOpen:          st.circuitOpen.Load(),
		NoEndpoint:           st.noEndpoint.Load(),
		Retries:              st.retries.Load(),
		RetryBudgetExhausted: st.retryBudgetExhausted.Load(),
		Active:               st.active.Load(),
		Pending:              st.pending.Load(),
		Endpoints:            make([]EndpointStats, len(c.eps)),
	}
	now := c.now()
	for i, e := range c.eps {
		es := EndpointStats{
			Endpoint:        e.Endpoint,
			Name:            e.name,
			Active:          e.st.active.Load(),
			Connections:     e.st.connections.Load(),
			ConnectFailures: e.st.connectFailures.Load(),
			Errors:          e.st.errors.Load(),
			Ejections:       e.st.ejections.Load(),

			HealthCheckFailing:  e.st.checkDown.Load(),
			HealthChecks:        e.st.checks.Load(),
			HealthCheckFailures: e.st.checkFails.Load(),
		}
		if until := e.st.ejectedUntil.Load(); now < until {
			es.Ejected, es.EjectedFor = true, Duration(until-now)
		}
		if rtt := e.st.rtt.Estimate(now, c.cfg.PeakEWMA.Decay.D(), 0); rtt > 0 {
			es.RTT = Duration(time.Duration(rtt))
		}
		s.Endpoints[i] = es
	}
	return s
}

// Dump is the JSON view of a cluster for the admin config dump: its
// effective config and its live state.
type Dump struct {
	Config Config `json:"config"`
	Stats
}

// Dump returns the cluster's JSON view.
func (c *Cluster) Dump() Dump { return Dump{Config: c.cfg, Stats: c.Stats()} }
