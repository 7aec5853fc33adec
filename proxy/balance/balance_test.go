package balance

import (
	"fmt"
	"net/netip"
	"testing"
)

// hosts is a test Hosts: n hosts, some disallowed, with given active counts
// and latency estimates.
type hosts struct {
	n      int
	down   map[int]bool
	active []int64
	rtt    []*RTT
	now    int64
}

func (h *hosts) Len() int           { return h.n }
func (h *hosts) Allowed(i int) bool { return !h.down[i] }
func (h *hosts) Active(i int) int64 {
	if h.active == nil {
		return 0
	}
	return h.active[i]
}
func (h *hosts) RTT(i int) *RTT {
	if h.rtt == nil {
		return nil
	}
	return h.rtt[i]
}
func (h *hosts) Now() int64 { return h.now }

func targets(weights ...uint32) []Target {
	ts := make([]Target, len(weights))
	for i, w := range weights {
		ts[i] = Target{Addr: netip.MustParseAddrPort(fmt.Sprintf("10.0.0.%d:80", i+1)), Weight: w}
	}
	return ts
}

type picker interface{ Pick(uint64, Hosts) int }

// count picks n times with keys 0..n-1 and counts the picks per host.
func count(p picker, hs Hosts, n int) []int {
	c := make([]int, hs.Len())
	for k := range n {
		i := p.Pick(uint64(k), hs)
		if i == None {
			continue
		}
		c[i]++
	}
	return c
}

// within fails unless got is within tol (a fraction) of want.
func within(t *testing.T, what string, got, want int, tol float64) {
	t.Helper()
	d := float64(got - want)
	if d < 0 {
		d = -d
	}
	if d > tol*float64(want) {
		t.Errorf("%s: got %d, want %d ±%.0f%%", what, got, want, tol*100)
	}
}

func TestRoundRobinSmoothWeighted(t *testing.T) {
	r := NewRoundRobin(targets(5, 1, 1), 0)
	hs := &hosts{n: 3}
	var got string
	for range 7 {
		got += string(rune('a' + r.Pick(0, hs)))
	}
	if got != "aabacaa" {
		t.Errorf("order = %s, want the smooth aabacaa", got)
	}
	c := count(r, hs, 7000)
	if c[0] != 5000 || c[1] != 1000 || c[2] != 1000 {
		t.Errorf("distribution %v, want exactly 5000/1000/1000", c)
	}
}

func TestRoundRobinSkipsDisallowed(t *testing.T) {
	var r RoundRobin // zero value: unweighted
	hs := &hosts{n: 4, down: map[int]bool{1: true}}
	c := count(&r, hs, 400)
	if c[1] != 0 || c[0]+c[2]+c[3] != 400 {
		t.Errorf("distribution %v: host 1 is down", c)
	}
	hs.down = map[int]bool{0: true, 1: true, 2: true, 3: true}
	if i := r.Pick(0, hs); i != None {
		t.Errorf("all down: Pick = %d, want None", i)
	}
	if i := r.Pick(0, &hosts{}); i != None {
		t.Errorf("no hosts: Pick = %d, want None", i)
	}
}

func TestRoundRobinLargeWeightsScaled(t *testing.T) {
	r := NewRoundRobin(targets(100000, 1), 0)
	if len(r.seq) > maxSequence+1 {
		t.Fatalf("sequence of %d entries, want <= %d", len(r.seq), maxSequence+1)
	}
	c := count(r, &hosts{n: 2}, len(r.seq))
	if c[1] != 1 {
		t.Errorf("light host got %d picks per period, want 1", c[1])
	}
}
