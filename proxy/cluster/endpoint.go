package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"reflect"
	"sync/atomic"

	"github.com/weir-mesh/weir/proxy/balance"
)

// Health is an endpoint's readiness as the agent learned it (for Kubernetes,
// from EndpointSlice conditions). The zero value is Healthy, so an Endpoint
// with only an address is usable.
type Health uint8

// Endpoint health values.
const (
	// Healthy endpoints take new connections.
	Healthy Health = iota
	// Draining endpoints are going away but still serve (EndpointSlice
	// serving and terminating); they get new connections only when no
	// healthy endpoint is available.
	Draining
	// Unhealthy endpoints never get new connections.
	Unhealthy
)

var healthNames = [...]string{"healthy", "draining", "unhealthy"}

// String returns the lower-case name used in JSON.
func (h Health) String() string {
	if int(h) < len(healthNames) {
		return healthNames[h]
	}
	return fmt.Sprintf("health(%d)", h)
}

// MarshalJSON writes the health as its name.
func (h Health) MarshalJSON() ([]byte, error) { return json.Marshal(h.String()) }

// UnmarshalJSON reads healthy, draining or unhealthy.
func (h *Health) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("health must be a string, got %s", b)
	}
	for i, n := range healthNames {
		if s == n {
			*h = Health(i)
			return nil
		}
	}
	return fmt.Errorf("health %q is not one of healthy, draining, unhealthy", s)
}

// Endpoint is one upstream address of a cluster.
type Endpoint struct {
	Addr netip.AddrPort `json:"addr"`
	// Weight is the endpoint's share relative to the others; 0 means 1.
	Weight uint32 `json:"weight,omitempty"`
	// Labels feed subsets (Config.Subset.Selector) and locality (the
	// "zone" label). The map is kept, not copied: do not change it after
	// passing it to New.
	Labels map[string]string `json:"labels,omitempty"`
	// Health is the readiness the agent knows; zero is Healthy.
	Health Health `json:"health,omitempty"`
}

// Equal reports whether two endpoints are the same.
func (e *Endpoint) Equal(o *Endpoint) bool {
	return e.Addr == o.Addr && e.Weight == o.Weight && e.Health == o.Health && sameLabels(e.Labels, o.Labels)
}

// sameLabels compares label maps, at once when both are the same map (the
// usual case when a config is rebuilt from parts of the last one).
func sameLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || reflect.ValueOf(a).UnsafePointer() == reflect.ValueOf(b).UnsafePointer() {
		return true
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// EndpointsEqual reports whether two endpoint lists are the same, at once
// when they share their backing array.
func EndpointsEqual(a, b []Endpoint) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	for i := range a {
		if !a[i].Equal(&b[i]) {
			return false
		}
	}
	return true
}

// endpoint is an Endpoint inside one cluster snapshot: its fixed spec plus
// the live state it shares with the same address in earlier and later
// snapshots of the cluster.
type endpoint struct {
	Endpoint
	name string // Addr as text, for metrics and dumps
	st   *endpointState
}

// endpointState outlives snapshots: counters, load, latency and outlier
// status of one address in one cluster.
type endpointState struct {
	active          atomic.Int64
	connections     atomic.Uint64 // successful connects
	connectFailures atomic.Uint64 // failed connect attempts
	errors          atomic.Uint64 // connections that ended in an upstream error
	ejections       atomic.Uint64
	rtt             balance.RTT

	connectStreak atomic.Int32 // connect failures in a row
	errorStreak   atomic.Int32 // connections in a row ending in error
	ejectedUntil  atomic.Int64 // clock; ejected while now < ejectedUntil
	ejectStep     atomic.Int32 // ejections in a row (the multiplier)
	// Outcomes in the current success-rate interval (only counted when
	// outlier.successRate is enabled).
	srTotal, srFailed atomic.Uint64

	checkDown   atomic.Bool  // failed active health checks
	checkStreak atomic.Int32 // checks in a row agreeing with the opposite of checkDown
	checkDue    atomic.Int64 // clock of the next check
	checking    atomic.Bool  // a check is running
	checks      atomic.Uint64
	checkFails  atomic.Uint64
}

func (s *endpointState) ejected(now int64) bool { return now < s.ejectedUntil.Load() }
