package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"time"

	"github.com/weir-mesh/weir/proxy/balance"
)

// Balancer names accepted in Config.Balancer.
const (
	RoundRobin   = "round_robin"
	Random       = "random"
	LeastRequest = "least_request"
	PeakEWMA     = "peak_ewma"
	RingHash     = "ring_hash"
	Maglev       = "maglev"
)

// Subset fallback policies.
const (
	FallbackNone = "none" // no endpoint matches: refuse (ErrNoEndpoint)
	FallbackAny  = "any"  // no endpoint matches or none is up: use every endpoint
)

// ZoneLabel is the endpoint label locality preference compares with the
// node's zone.
const ZoneLabel = "zone"

// Defaults applied by Config.WithDefaults to zero fields.
const (
	DefaultConnectTimeout        = 5 * time.Second
	DefaultMaxRetries            = 2
	DefaultRetryBudgetPercent    = 20
	DefaultMinRetriesPerSecond   = 10
	DefaultConsecutiveFailures   = 5
	DefaultBaseEjectionTime      = 30 * time.Second
	DefaultMaxEjectionTime       = 300 * time.Second
	DefaultMaxEjectionPercent    = 10
	DefaultMaxConnections        = 100000
	DefaultMaxPendingConnects    = 10000
	DefaultLocalityMinHealthyPct = 70
	DefaultRingSizeMin           = 1024
	DefaultRingSizeMax           = 1 << 20
	DefaultHealthCheckInterval   = 10 * time.Second
	DefaultHealthCheckTimeout    = 2 * time.Second
	DefaultHealthyThreshold      = 1
	DefaultUnhealthyThreshold    = 3
	DefaultSuccessRateInterval   = 10 * time.Second
	DefaultSuccessRateMinHosts   = 5
	DefaultSuccessRateVolume     = 100
	DefaultSuccessRateStdev      = 1.9
)

// Config is one cluster's balancing and resilience settings. The zero value
// (plus a Name) is a working cluster: round robin, 5s connect timeout, two
// retries on other endpoints within a 20% budget, Envoy-like outlier
// ejection and generous circuit breakers. Field names in error messages and
// JSON are the lower-camel keys the agent's YAML uses.
type Config struct {
	// Name identifies the cluster in metrics, logs and the config dump.
	Name string `json:"name,omitempty"`
	// Balancer is one of round_robin (default), random, least_request,
	// peak_ewma, ring_hash, maglev.
	Balancer string `json:"balancer,omitempty"`
	// ConnectTimeout bounds each connect attempt; default 5s.
	ConnectTimeout Duration `json:"connectTimeout,omitempty"`

	PeakEWMA       PeakEWMAConfig       `json:"peakEwma,omitzero"`
	RingHash       RingHashConfig       `json:"ringHash,omitzero"`
	Maglev         MaglevConfig         `json:"maglev,omitzero"`
	Subset         SubsetConfig         `json:"subset,omitzero"`
	Locality       LocalityConfig       `json:"locality,omitzero"`
	Retry          RetryConfig          `json:"retry,omitzero"`
	Outlier        OutlierConfig        `json:"outlier,omitzero"`
	CircuitBreaker CircuitBreakerConfig `json:"circuitBreaker,omitzero"`
	HealthCheck    HealthCheckConfig    `json:"healthCheck,omitzero"`
}

// PeakEWMAConfig tunes the peak_ewma balancer.
type PeakEWMAConfig struct {
	// DefaultRTT is the cost of an endpoint not measured yet; default 30ms.
	DefaultRTT Duration `json:"defaultRtt,omitempty"`
	// Decay is the time constant of the moving average; default 10s.
	Decay Duration `json:"decay,omitempty"`
}

// RingHashConfig sizes the ring_hash balancer's ring.
type RingHashConfig struct {
	// MinRingSize is the least number of points on the ring; default 1024.
	MinRingSize int `json:"minRingSize,omitempty"`
	// MaxRingSize caps the ring; default 1048576.
	MaxRingSize int `json:"maxRingSize,omitempty"`
}

// MaglevConfig sizes the maglev balancer's lookup table.
type MaglevConfig struct {
	// TableSize is the lookup table size, a prime. Default: the smallest
	// prime at or above 100 per endpoint, between 1021 and 65537.
	TableSize int `json:"tableSize,omitempty"`
}

// SubsetConfig restricts the cluster to endpoints whose labels match.
type SubsetConfig struct {
	// Selector lists labels an endpoint must all carry; empty selects all.
	Selector map[string]string `json:"selector,omitempty"`
	// Fallback says what happens when no selected endpoint is available:
	// none (default) refuses, any uses every endpoint of the cluster.
	Fallback string `json:"fallback,omitempty"`
}

// LocalityConfig prefers endpoints in the node's own zone.
type LocalityConfig struct {
	// Enabled turns on same-zone preference (endpoints labelled
	// zone=<node zone> first); off by default.
	Enabled bool `json:"enabled,omitempty"`
	// MinHealthyPercent is the share of the local zone's weight that must
	// be up for traffic to stay local; below it every zone is used.
	// Default 70.
	MinHealthyPercent int `json:"minHealthyPercent,omitempty"`
}

// RetryConfig bounds connect retries (always on another endpoint).
type RetryConfig struct {
	// MaxRetries is the number of further endpoints tried after a failed
	// connect; default 2. Set Disabled to never retry.
	MaxRetries int `json:"maxRetries,omitempty"`
	// Disabled turns retries off.
	Disabled bool `json:"disabled,omitempty"`
	// BudgetPercent caps retries at this percentage of new connections
	// (plus MinRetriesPerSecond), so a dying cluster is not hammered;
	// default 20.
	BudgetPercent int `json:"budgetPercent,omitempty"`
	// MinRetriesPerSecond is the retry rate always allowed, so a quiet
	// cluster can still retry; default 10.
	MinRetriesPerSecond int `json:"minRetriesPerSecond,omitempty"`
}

// OutlierConfig ejects endpoints that fail in a row.
type OutlierConfig struct {
	// Disabled turns outlier ejection off.
	Disabled bool `json:"disabled,omitempty"`
	// ConsecutiveFailures ejects an endpoint after this many connect
	// failures in a row, or this many connections in a row ending in an
	// upstream error; default 5.
	ConsecutiveFailures int `json:"consecutiveFailures,omitempty"`
	// BaseEjectionTime is the first ejection's length; the n-th ejection
	// in a row lasts n times as long. Default 30s.
	BaseEjectionTime Duration `json:"baseEjectionTime,omitempty"`
	// MaxEjectionTime caps one ejection; default 300s.
	MaxEjectionTime Duration `json:"maxEjectionTime,omitempty"`
	// MaxEjectionPercent caps the share of endpoints ejected at once,
	// rounded down but never below one endpoint (so a two-endpoint cluster
	// can eject one); default 10.
	MaxEjectionPercent int `json:"maxEjectionPercent,omitempty"`
	// SuccessRate ejects endpoints whose share of successful requests
	// and connections is an outlier among the cluster's; off by default.
	SuccessRate SuccessRateConfig `json:"successRate,omitzero"`
}

// SuccessRateConfig is success-rate outlier detection in Envoy's shape:
// every Interval, each endpoint that saw at least RequestVolume outcomes
// (L7 requests, L4 connections, failed connects) gets its success rate;
// if at least MinimumHosts endpoints qualify, those below mean −
// StdevFactor × standard deviation are ejected (for the same ejection
// times, within the same maxEjectionPercent, as consecutive failures).
// It catches an endpoint that fails often but never several times in a
// row. A failure is what counts toward consecutive failures: a connect
// failure, an upstream error, a 5xx or gRPC UNAVAILABLE answer.
type SuccessRateConfig struct {
	// Enabled turns success-rate detection on.
	Enabled bool `json:"enabled,omitempty"`
	// Interval between two evaluations; default 10s. An evaluation runs
	// on the first outcome after the interval ends, so an idle cluster
	// costs nothing.
	Interval Duration `json:"interval,omitempty"`
	// MinimumHosts is how many endpoints must have RequestVolume
	// outcomes in the interval for any ejection; default 5.
	MinimumHosts int `json:"minimumHosts,omitempty"`
	// RequestVolume is the outcomes an endpoint needs in the interval to
	// be judged; default 100.
	RequestVolume int `json:"requestVolume,omitempty"`
	// StdevFactor sets the ejection threshold below the mean in standard
	// deviations; default 1.9 (Envoy's 1900 thousandths).
	StdevFactor float64 `json:"stdevFactor,omitempty"`
}

// CircuitBreakerConfig refuses new connections fast when a cluster is
// saturated.
type CircuitBreakerConfig struct {
	// MaxConnections caps connections open to the cluster (established and
	// connecting); default 100000.
	MaxConnections int `json:"maxConnections,omitempty"`
	// MaxPendingConnects caps connects in progress; default 10000.
	MaxPendingConnects int `json:"maxPendingConnects,omitempty"`
}

// HealthCheckConfig turns on active TCP health checks: a connect to each
// endpoint every interval, through the Dialer given to the checker.
type HealthCheckConfig struct {
	// Enabled turns checks on; off by default (the readiness the agent
	// feeds in and outlier ejection cover most needs).
	Enabled bool `json:"enabled,omitempty"`
	// Interval between two checks of one endpoint; default 10s.
	Interval Duration `json:"interval,omitempty"`
	// Timeout of one check's connect; default 2s.
	Timeout Duration `json:"timeout,omitempty"`
	// HealthyThreshold is how many passing checks in a row bring a failed
	// endpoint back; default 1.
	HealthyThreshold int `json:"healthyThreshold,omitempty"`
	// UnhealthyThreshold is how many failing checks in a row take an
	// endpoint out; default 3.
	UnhealthyThreshold int `json:"unhealthyThreshold,omitempty"`
}

// WithDefaults returns c with every zero field set to its default.
func (c Config) WithDefaults() Config {
	if c.Balancer == "" {
		c.Balancer = RoundRobin
	}
	def(&c.ConnectTimeout, DefaultConnectTimeout)
	def(&c.PeakEWMA.DefaultRTT, balance.DefaultRTT)
	def(&c.PeakEWMA.Decay, balance.DefaultDecay)
	defInt(&c.RingHash.MinRingSize, DefaultRingSizeMin)
	defInt(&c.RingHash.MaxRingSize, max(DefaultRingSizeMax, c.RingHash.MinRingSize))
	if c.Subset.Fallback == "" {
		c.Subset.Fallback = FallbackNone
	}
	defInt(&c.Locality.MinHealthyPercent, DefaultLocalityMinHealthyPct)
	defInt(&c.Retry.MaxRetries, DefaultMaxRetries)
	defInt(&c.Retry.BudgetPercent, DefaultRetryBudgetPercent)
	defInt(&c.Retry.MinRetriesPerSecond, DefaultMinRetriesPerSecond)
	defInt(&c.Outlier.ConsecutiveFailures, DefaultConsecutiveFailures)
	def(&c.Outlier.BaseEjectionTime, DefaultBaseEjectionTime)
	def(&c.Outlier.MaxEjectionTime, max(DefaultMaxEjectionTime, c.Outlier.BaseEjectionTime.D()))
	defInt(&c.Outlier.MaxEjectionPercent, DefaultMaxEjectionPercent)
	def(&c.Outlier.SuccessRate.Interval, DefaultSuccessRateInterval)
	defInt(&c.Outlier.SuccessRate.MinimumHosts, DefaultSuccessRateMinHosts)
	defInt(&c.Outlier.SuccessRate.RequestVolume, DefaultSuccessRateVolume)
	if c.Outlier.SuccessRate.StdevFactor == 0 {
		c.Outlier.SuccessRate.StdevFactor = DefaultSuccessRateStdev
	}
	defInt(&c.CircuitBreaker.MaxConnections, DefaultMaxConnections)
	defInt(&c.CircuitBreaker.MaxPendingConnects, DefaultMaxPendingConnects)
	def(&c.HealthCheck.Interval, DefaultHealthCheckInterval)
	def(&c.HealthCheck.Timeout, DefaultHealthCheckTimeout)
	defInt(&c.HealthCheck.HealthyThreshold, DefaultHealthyThreshold)
	defInt(&c.HealthCheck.UnhealthyThreshold, DefaultUnhealthyThreshold)
	return c
}

func def(d *Duration, v time.Duration) {
	if *d == 0 {
		*d = Duration(v)
	}
}

func defInt(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

// Validate reports every invalid field, each error naming the field by its
// YAML key (e.g. "outlier.consecutiveFailures must be > 0"). Zero fields
// are valid: they take defaults.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	switch c.Balancer {
	case "", RoundRobin, Random, LeastRequest, PeakEWMA, RingHash, Maglev:
	default:
		bad("balancer %q is not one of round_robin, random, least_request, peak_ewma, ring_hash, maglev", c.Balancer)
	}
	positive := func(name string, d Duration) {
		if d < 0 {
			bad("%s must be > 0, got %s", name, d)
		}
	}
	positiveInt := func(name string, v int) {
		if v < 0 {
			bad("%s must be > 0, got %d", name, v)
		}
	}
	percent := func(name string, v int) {
		if v < 0 || v > 100 {
			bad("%s must be between 1 and 100, got %d", name, v)
		}
	}
	positive("connectTimeout", c.ConnectTimeout)
	positive("peakEwma.defaultRtt", c.PeakEWMA.DefaultRTT)
	positive("peakEwma.decay", c.PeakEWMA.Decay)
	positiveInt("ringHash.minRingSize", c.RingHash.MinRingSize)
	positiveInt("ringHash.maxRingSize", c.RingHash.MaxRingSize)
	if c.RingHash.MinRingSize > 0 && c.RingHash.MaxRingSize > 0 && c.RingHash.MaxRingSize < c.RingHash.MinRingSize {
		bad("ringHash.maxRingSize (%d) must be >= ringHash.minRingSize (%d)", c.RingHash.MaxRingSize, c.RingHash.MinRingSize)
	}
	if c.RingHash.MaxRingSize > 1<<23 {
		bad("ringHash.maxRingSize must be <= %d, got %d", 1<<23, c.RingHash.MaxRingSize)
	}
	if t := c.Maglev.TableSize; t != 0 && (t < 3 || t > 1<<20 || !isPrime(t)) {
		bad("maglev.tableSize must be a prime between 3 and %d, got %d", 1<<20, t)
	}
	switch c.Subset.Fallback {
	case "", FallbackNone, FallbackAny:
	default:
		bad("subset.fallback %q is not one of none, any", c.Subset.Fallback)
	}
	for k := range c.Subset.Selector {
		if k == "" {
			bad("subset.selector has an empty label name")
		}
	}
	percent("locality.minHealthyPercent", c.Locality.MinHealthyPercent)
	positiveInt("retry.maxRetries", c.Retry.MaxRetries)
	if c.Retry.MaxRetries > 10 {
		bad("retry.maxRetries must be <= 10, got %d", c.Retry.MaxRetries)
	}
	percent("retry.budgetPercent", c.Retry.BudgetPercent)
	positiveInt("retry.minRetriesPerSecond", c.Retry.MinRetriesPerSecond)
	positiveInt("outlier.consecutiveFailures", c.Outlier.ConsecutiveFailures)
	positive("outlier.baseEjectionTime", c.Outlier.BaseEjectionTime)
	positive("outlier.maxEjectionTime", c.Outlier.MaxEjectionTime)
	if c.Outlier.BaseEjectionTime > 0 && c.Outlier.MaxEjectionTime > 0 && c.Outlier.MaxEjectionTime < c.Outlier.BaseEjectionTime {
		bad("outlier.maxEjectionTime (%s) must be >= outlier.baseEjectionTime (%s)", c.Outlier.MaxEjectionTime, c.Outlier.BaseEjectionTime)
	}
	percent("outlier.maxEjectionPercent", c.Outlier.MaxEjectionPercent)
	positive("outlier.successRate.interval", c.Outlier.SuccessRate.Interval)
	positiveInt("outlier.successRate.minimumHosts", c.Outlier.SuccessRate.MinimumHosts)
	positiveInt("outlier.successRate.requestVolume", c.Outlier.SuccessRate.RequestVolume)
	if f := c.Outlier.SuccessRate.StdevFactor; !(f >= 0 && f <= 100) {
		bad("outlier.successRate.stdevFactor must be between 0 and 100, got %v", f)
	}
	positiveInt("circuitBreaker.maxConnections", c.CircuitBreaker.MaxConnections)
	positiveInt("circuitBreaker.maxPendingConnects", c.CircuitBreaker.MaxPendingConnects)
	positive("healthCheck.interval", c.HealthCheck.Interval)
	positive("healthCheck.timeout", c.HealthCheck.Timeout)
	positiveInt("healthCheck.healthyThreshold", c.HealthCheck.HealthyThreshold)
	positiveInt("healthCheck.unhealthyThreshold", c.HealthCheck.UnhealthyThreshold)
	return errors.Join(errs...)
}

// Equal reports whether two configs are the same as given (before
// defaults); Config holds a map, so == does not compile.
func (c *Config) Equal(o *Config) bool {
	return c.Name == o.Name && c.Balancer == o.Balancer && c.ConnectTimeout == o.ConnectTimeout &&
		c.PeakEWMA == o.PeakEWMA && c.RingHash == o.RingHash && c.Maglev == o.Maglev &&
		c.Subset.Fallback == o.Subset.Fallback && labelsEqual(c.Subset.Selector, o.Subset.Selector) &&
		c.Locality == o.Locality && c.Retry == o.Retry && c.Outlier == o.Outlier &&
		c.CircuitBreaker == o.CircuitBreaker && c.HealthCheck == o.HealthCheck
}

// labelsEqual is maps.Equal without starting an iteration for empty maps.
func labelsEqual(a, b map[string]string) bool {
	return len(a) == len(b) && (len(a) == 0 || maps.Equal(a, b))
}

func isPrime(n int) bool {
	if n < 2 {
		return false
	}
	for d := 2; d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Duration is a time.Duration that reads and writes as a Go duration string
// ("5s", "250ms") in JSON and YAML.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d like time.Duration.
func (d Duration) String() string { return time.Duration(d).String() }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads a duration string such as "5s".
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"5s\", got %s", b)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %w", s, err)
	}
	*d = Duration(v)
	return nil
}
