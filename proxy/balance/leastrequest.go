package balance

// LeastRequest is power of two choices over active connections: it draws
// two distinct allowed hosts at random and takes the one with fewer
// connections in flight relative to its weight. Two random choices avoid
// the herd that "pick the global minimum" causes when many pickers see the
// same counts, at O(1) cost.
//
// The zero value is unweighted with a source seeded with 0. Pick returns
// None when no host is allowed.
type LeastRequest struct {
	weights []uint64 // nil: all equal
	rand    Rand
}

// NewLeastRequest builds the balancer over ts.
func NewLeastRequest(ts []Target, seed uint64) *LeastRequest {
	l := &LeastRequest{weights: weightsOf(ts)}
	l.rand.state.Store(seed)
	return l
}

// Pick implements the balancer interface.
func (l *LeastRequest) Pick(_ uint64, hs Hosts) int {
	a, b := twoChoices(&l.rand, hs)
	if b == None {
		return a
	}
	// Compare active/weight without division: aa*wb vs ab*wa.
	aa, ab := uint64(max(hs.Active(a), 0)), uint64(max(hs.Active(b), 0))
	wa, wb := uint64(1), uint64(1)
	if l.weights != nil && a < len(l.weights) && b < len(l.weights) {
		wa, wb = l.weights[a], l.weights[b]
	}
	if ab*wa < aa*wb {
		return b
	}
	return a
}
