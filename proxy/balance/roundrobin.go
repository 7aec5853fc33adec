package balance

import (
	"container/heap"
	"sync/atomic"
)

// maxSequence bounds the precomputed weighted order of a RoundRobin; larger
// weight sums are scaled down to it (keeping every host at least once).
const maxSequence = 4096

// RoundRobin takes hosts in turn; with unequal weights it follows the smooth
// weighted order nginx uses (weights 5,1,1 give a a b a c a a rather than
// a a a a a b c). The order is computed once at construction, so Pick is one
// atomic add and no lock. A host that is not allowed hands its turn to the
// next allowed one in the order.
//
// The zero value is unweighted round robin over however many hosts Pick is
// given. Pick returns None when no host is allowed.
type RoundRobin struct {
	seq  []int32 // weighted order; nil means unweighted
	next atomic.Uint64
}

// NewRoundRobin builds a round robin over ts; start offsets the first pick
// (callers pass a random value so that many clusters built at the same time
// do not all start on their first endpoint).
func NewRoundRobin(ts []Target, start uint64) *RoundRobin {
	r := &RoundRobin{}
	r.next.Store(start)
	if !uniform(ts) {
		r.seq = smoothOrder(ts)
	}
	return r
}

// Pick implements the balancer interface. A host that is not allowed
// consumes its turn (the shared counter moves on), so its share spreads
// evenly over the others instead of falling to its successor.
func (r *RoundRobin) Pick(_ uint64, hs Hosts) int {
	n := hs.Len()
	if n == 0 {
		return None
	}
	if r.seq == nil {
		for range n {
			i := int((r.next.Add(1) - 1) % uint64(n))
			if hs.Allowed(i) {
				return i
			}
		}
		return None
	}
	l := uint64(len(r.seq))
	for range l {
		i := int(r.seq[(r.next.Add(1)-1)%l])
		if i < n && hs.Allowed(i) {
			return i
		}
	}
	return None
}

// Turns reserves n consecutive turns with one atomic add and returns the
// first, for a batch of picks made together (Turn picks each): the
// counter every picker shares is written once per batch, not once per
// pick, and the batch gets the same hosts in the same order as n Picks in
// a row would.
func (r *RoundRobin) Turns(n int) uint64 {
	return r.next.Add(uint64(n)) - uint64(n)
}

// Turn is the host whose turn t (from Turns) is, or None when it is not
// allowed: the caller then picks that request with Pick, which moves on
// to the next allowed host in the order.
func (r *RoundRobin) Turn(t uint64, hs Hosts) int {
	n := hs.Len()
	if n == 0 {
		return None
	}
	i := int(t % uint64(n))
	if r.seq != nil {
		i = int(r.seq[t%uint64(len(r.seq))])
	}
	if i < n && hs.Allowed(i) {
		return i
	}
	return None
}

// smoothOrder returns one period of the smooth weighted round robin order
// over ts, with weights divided by their gcd and scaled to maxSequence.
func smoothOrder(ts []Target) []int32 {
	w := make([]uint64, len(ts))
	var total uint64
	for i, t := range ts {
		w[i] = t.weight()
		total += w[i]
	}
	if total > maxSequence {
		for i := range w {
			w[i] = max(1, w[i]*maxSequence/total)
		}
	}
	g := w[0]
	for _, x := range w[1:] {
		g = gcd(g, x)
	}
	total = 0
	for i := range w {
		w[i] /= g
		total += w[i]
	}
	if total*uint64(len(w)) <= 1<<22 {
		return nginxOrder(w, total)
	}
	return edfOrder(w, total)
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// nginxOrder is nginx's smooth weighted round robin: every step each host
// gains its weight, the richest is picked and pays the total. O(total*n).
func nginxOrder(w []uint64, total uint64) []int32 {
	cur := make([]int64, len(w))
	seq := make([]int32, 0, total)
	for range total {
		best := 0
		for i := range w {
			cur[i] += int64(w[i])
			if cur[i] > cur[best] {
				best = i
			}
		}
		cur[best] -= int64(total)
		seq = append(seq, int32(best))
	}
	return seq
}

// edfOrder approximates the smooth order for very large host sets with an
// earliest-deadline-first heap: host i's k-th turn is due at (k+1/2)/w_i.
// O(total*log n).
func edfOrder(w []uint64, total uint64) []int32 {
	h := make(edfHeap, len(w))
	for i := range w {
		h[i] = edfEntry{idx: int32(i), num: 1, den: 2 * w[i]}
	}
	heap.Init(&h)
	seq := make([]int32, 0, total)
	for range total {
		e := &h[0]
		seq = append(seq, e.idx)
		e.num += 2 // deadline (2k+1)/(2w)
		heap.Fix(&h, 0)
	}
	return seq
}

type edfEntry struct {
	idx      int32
	num, den uint64 // deadline num/den
}

type edfHeap []edfEntry

func (h edfHeap) Len() int { return len(h) }
func (h edfHeap) Less(a, b int) bool {
	l, r := h[a].num*h[b].den, h[b].num*h[a].den
	if l != r {
		return l < r
	}
	return h[a].idx < h[b].idx
}
func (h edfHeap) Swap(a, b int) { h[a], h[b] = h[b], h[a] }
func (h *edfHeap) Push(x any)   { *h = append(*h, x.(edfEntry)) }
func (h *edfHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
