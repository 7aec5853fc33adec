package balance

import "sort"

// Random picks a host at random, in proportion to its weight.
//
// The zero value is unweighted and uses a source seeded with 0. Pick
// returns None when no host is allowed.
type Random struct {
	cum  []uint64 // cumulative weights; nil means unweighted
	rand Rand
}

// NewRandom builds a weighted random balancer over ts.
func NewRandom(ts []Target, seed uint64) *Random {
	r := &Random{cum: cumulative(ts)}
	r.rand.state.Store(seed)
	return r
}

// Pick implements the balancer interface.
func (r *Random) Pick(_ uint64, hs Hosts) int {
	n := hs.Len()
	if n == 0 {
		return None
	}
	if r.cum == nil || len(r.cum) != n {
		return drawAllowed(&r.rand, hs, n, None)
	}
	return weightedAllowed(&r.rand, r.cum, hs)
}

// cumulative returns running sums of the weights, or nil when they are all
// equal.
func cumulative(ts []Target) []uint64 {
	if uniform(ts) {
		return nil
	}
	cum := make([]uint64, len(ts))
	var s uint64
	for i, t := range ts {
		s += t.weight()
		cum[i] = s
	}
	return cum
}

// weightedAllowed draws hosts by weight until one is allowed (a few
// tries), then falls back to the next allowed host after the last draw.
func weightedAllowed(r *Rand, cum []uint64, hs Hosts) int {
	total := cum[len(cum)-1]
	n := len(cum)
	i := 0
	for range 4 {
		x := r.Uint64() % total
		i = sort.Search(n, func(j int) bool { return cum[j] > x })
		if hs.Allowed(i) {
			return i
		}
	}
	for k := 1; k < n; k++ {
		j := (i + k) % n
		if hs.Allowed(j) {
			return j
		}
	}
	return None
}
