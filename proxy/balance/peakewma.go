package balance

import (
	"math"
	"sync/atomic"
	"time"
)

// Defaults of the peak-EWMA estimator, Linkerd's.
const (
	DefaultRTT   = 30 * time.Millisecond
	DefaultDecay = 10 * time.Second
)

// RTT is a peak-EWMA latency estimate for one endpoint: a sample above the
// estimate replaces it at once (peak), a sample below is blended in with a
// weight that grows with the time since the last sample, and the estimate
// decays toward zero while nothing is observed so that an idle or formerly
// slow endpoint gets tried again. The zero value has observed nothing.
// Updates race benignly: concurrent samples may overwrite each other.
type RTT struct {
	est atomic.Uint64 // float64 bits, nanoseconds
	at  atomic.Int64  // clock of the last sample, 0 before the first
}

// Observe folds a sample taken at now (nanoseconds on the caller's clock)
// into the estimate.
func (r *RTT) Observe(sample time.Duration, now int64, decay time.Duration) {
	s := float64(sample)
	at := r.at.Load()
	prev := math.Float64frombits(r.est.Load())
	next := s
	if at != 0 && s < prev {
		w := weight(now-at, decay)
		next = prev*w + s*(1-w)
	}
	r.est.Store(math.Float64bits(next))
	r.at.Store(max(now, 1))
}

// Estimate returns the estimate decayed to now, or def when nothing was
// observed yet.
func (r *RTT) Estimate(now int64, decay, def time.Duration) float64 {
	at := r.at.Load()
	if at == 0 {
		return float64(def)
	}
	return math.Float64frombits(r.est.Load()) * weight(now-at, decay)
}

// weight is exp(-elapsed/decay): how much of the old estimate survives.
func weight(elapsed int64, decay time.Duration) float64 {
	if elapsed <= 0 {
		return 1
	}
	if decay <= 0 {
		return 0
	}
	return math.Exp(-float64(elapsed) / float64(decay))
}

// PeakEWMA is power of two choices over peak-EWMA cost, Linkerd's default
// balancer: it draws two distinct allowed hosts at random and takes the one
// whose latency estimate times (active connections + 1), divided by its
// weight, is lower. Hosts without an estimate cost DefaultRTT.
//
// The zero value uses Linkerd's defaults (30ms, 10s), equal weights and a
// random source seeded with 0. Pick returns None when no host is allowed.
type PeakEWMA struct {
	// DefaultRTT is the cost of a host never observed; 0 means 30ms.
	DefaultRTT time.Duration
	// Decay is the time constant of the moving average; 0 means 10s.
	Decay time.Duration

	weights []uint64 // nil: all 1
	rand    Rand
}

// NewPeakEWMA builds the balancer over ts with a seeded random source.
func NewPeakEWMA(ts []Target, seed uint64, defaultRTT, decay time.Duration) *PeakEWMA {
	p := &PeakEWMA{DefaultRTT: defaultRTT, Decay: decay, weights: weightsOf(ts)}
	p.rand.state.Store(seed)
	return p
}

// Pick implements the balancer interface.
func (p *PeakEWMA) Pick(_ uint64, hs Hosts) int {
	a, b := twoChoices(&p.rand, hs)
	if b == None {
		return a
	}
	now := hs.Now()
	if p.cost(hs, b, now) < p.cost(hs, a, now) {
		return b
	}
	return a
}

func (p *PeakEWMA) cost(hs Hosts, i int, now int64) float64 {
	def, decay := p.DefaultRTT, p.Decay
	if def <= 0 {
		def = DefaultRTT
	}
	if decay <= 0 {
		decay = DefaultDecay
	}
	rtt := float64(def)
	if r := hs.RTT(i); r != nil {
		rtt = r.Estimate(now, decay, def)
	}
	c := rtt * float64(hs.Active(i)+1)
	if p.weights != nil && i < len(p.weights) {
		c /= float64(p.weights[i])
	}
	return c
}

// weightsOf returns the effective weights, or nil when they are all equal.
func weightsOf(ts []Target) []uint64 {
	if uniform(ts) {
		return nil
	}
	w := make([]uint64, len(ts))
	for i, t := range ts {
		w[i] = t.weight()
	}
	return w
}

// twoChoices draws two distinct allowed hosts uniformly. When only one host
// is allowed it returns (that host, None); when none, (None, None). Draws
// that land on disallowed hosts are retried a few times, then the allowed
// hosts are found by a scan from a random point, so a mostly ejected
// cluster still answers in bounded time.
func twoChoices(r *Rand, hs Hosts) (int, int) {
	n := hs.Len()
	if n == 0 {
		return None, None
	}
	a := drawAllowed(r, hs, n, None)
	if a == None {
		return None, None
	}
	return a, drawAllowed(r, hs, n, a)
}

func drawAllowed(r *Rand, hs Hosts, n, not int) int {
	for range 4 {
		i := r.IntN(n)
		if i != not && hs.Allowed(i) {
			return i
		}
	}
	start := r.IntN(n)
	for k := range n {
		i := (start + k) % n
		if i != not && hs.Allowed(i) {
			return i
		}
	}
	return None
}
