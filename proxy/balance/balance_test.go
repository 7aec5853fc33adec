package balance

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
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

// TestRoundRobinTurns: a batch of turns reserved at once (Turns, Turn)
// gets the hosts n Picks in a row get, weighted or not; a turn whose host
// is not allowed is None, for the caller to Pick instead.
func TestRoundRobinTurns(t *testing.T) {
	for _, w := range [][]uint32{{1, 1, 1}, {5, 1, 1}} {
		one, batch := NewRoundRobin(targets(w...), 7), NewRoundRobin(targets(w...), 7)
		hs := &hosts{n: len(w)}
		first := batch.Turns(20)
		for i := range uint64(20) {
			if got, want := batch.Turn(first+i, hs), one.Pick(0, hs); got != want {
				t.Errorf("weights %v, turn %d: host %d, Pick gives %d", w, i, got, want)
			}
		}
		if got, want := batch.Pick(0, hs), one.Pick(0, hs); got != want {
			t.Errorf("weights %v: after the batch Pick gives %d, one by one %d", w, got, want)
		}
	}
	var r RoundRobin
	hs := &hosts{n: 2, down: map[int]bool{1: true}}
	if first := r.Turns(2); r.Turn(first, hs) != 0 || r.Turn(first+1, hs) != None {
		t.Error("a turn of a host not allowed is not None")
	}
	if r.Turn(0, &hosts{}) != None {
		t.Error("a turn with no hosts is not None")
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

func TestRandomWeighted(t *testing.T) {
	r := NewRandom(targets(1, 2, 7), 7)
	c := count(r, &hosts{n: 3}, 100000)
	within(t, "host 0", c[0], 10000, 0.05)
	within(t, "host 1", c[1], 20000, 0.05)
	within(t, "host 2", c[2], 70000, 0.05)

	// Deterministic: the same seed gives the same picks.
	a, b := NewRandom(targets(1, 2, 7), 7), NewRandom(targets(1, 2, 7), 7)
	for k := range 100 {
		if x, y := a.Pick(0, &hosts{n: 3}), b.Pick(0, &hosts{n: 3}); x != y {
			t.Fatalf("pick %d differs with equal seeds: %d vs %d", k, x, y)
		}
	}

	// A disallowed host's share goes to the others.
	c = count(r, &hosts{n: 3, down: map[int]bool{2: true}}, 30000)
	if c[2] != 0 {
		t.Errorf("down host picked %d times", c[2])
	}
	if i := r.Pick(0, &hosts{n: 3, down: map[int]bool{0: true, 1: true, 2: true}}); i != None {
		t.Errorf("all down: %d, want None", i)
	}

	var zero Random
	c = count(&zero, &hosts{n: 4}, 40000)
	for i := range c {
		within(t, fmt.Sprintf("zero value host %d", i), c[i], 10000, 0.05)
	}
}

func TestLeastRequestPrefersIdle(t *testing.T) {
	l := NewLeastRequest(targets(1, 1, 1, 1), 3)
	hs := &hosts{n: 4, active: []int64{10, 10, 10, 0}}
	c := count(l, hs, 10000)
	// Host 3 wins whenever it is one of the two choices: 1-(3/4*2/3)=1/2.
	within(t, "idle host", c[3], 5000, 0.05)
	for i := range 3 {
		within(t, fmt.Sprintf("busy host %d", i), c[i], 5000/3, 0.1)
	}

	// Weights: equal load per weight unit means equal cost, so with two
	// hosts at 10 and 5 active and weights 2:1 the costs tie.
	lw := NewLeastRequest(targets(2, 1), 3)
	hs = &hosts{n: 2, active: []int64{9, 5}}
	c = count(lw, hs, 1000)
	if c[0] != 1000 {
		t.Errorf("weight 2 host at 9 active vs weight 1 at 5: got %v, want all on host 0", c)
	}

	// Only one allowed: it is picked; none: None.
	if i := l.Pick(0, &hosts{n: 4, down: map[int]bool{0: true, 1: true, 3: true}}); i != 2 {
		t.Errorf("one allowed: %d, want 2", i)
	}
	var zero LeastRequest
	if i := zero.Pick(0, &hosts{n: 2, down: map[int]bool{0: true, 1: true}}); i != None {
		t.Errorf("none allowed: %d, want None", i)
	}
}

func TestPeakEWMAPrefersFast(t *testing.T) {
	const ms = int64(time.Millisecond)
	now := int64(100 * time.Second)
	rtts := make([]*RTT, 3)
	for i, d := range []time.Duration{5 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond} {
		rtts[i] = &RTT{}
		rtts[i].Observe(d, now, DefaultDecay)
	}
	p := NewPeakEWMA(targets(1, 1, 1), 11, 0, 0)
	hs := &hosts{n: 3, rtt: rtts, now: now}
	c := count(p, hs, 9000)
	// The fast host wins every draw it is in: 2/3 of picks.
	within(t, "fast host", c[0], 6000, 0.05)

	// Load counts: the fast host with 20 connections in flight costs
	// 5ms*21 > 50ms*1, so the slow idle hosts win.
	hs.active = []int64{20, 0, 0}
	c = count(p, hs, 9000)
	within(t, "loaded fast host", c[0], 0, 0)

	// A peak replaces the estimate at once; lower samples decay it back.
	r := &RTT{}
	r.Observe(10*time.Millisecond, now, DefaultDecay)
	r.Observe(500*time.Millisecond, now+ms, DefaultDecay)
	if e := r.Estimate(now+ms, DefaultDecay, DefaultRTT); e != float64(500*time.Millisecond) {
		t.Errorf("after a peak: %v, want 500ms", time.Duration(e))
	}
	r.Observe(10*time.Millisecond, now+10*int64(time.Second), DefaultDecay)
	if e := time.Duration(r.Estimate(now+10*int64(time.Second), DefaultDecay, DefaultRTT)); e < 150*time.Millisecond || e > 250*time.Millisecond {
		t.Errorf("10s (one decay) after the peak: %v, want about 500ms/e+10ms*(1-1/e) ≈ 190ms", e)
	}
	if e := (&RTT{}).Estimate(now, DefaultDecay, DefaultRTT); e != float64(DefaultRTT) {
		t.Errorf("unobserved estimate %v, want the 30ms seed", time.Duration(e))
	}
}

func TestHashBalancersAffinityAndWeights(t *testing.T) {
	for _, tc := range []struct {
		name string
		mk   func([]Target) picker
		tol  float64 // a host with k points strays about 1/sqrt(k)
	}{
		{"ring_hash_1024", func(ts []Target) picker { return NewRingHash(ts, 0, 0) }, 0.25},
		{"ring_hash_65536", func(ts []Target) picker { return NewRingHash(ts, 1<<16, 0) }, 0.05},
		{"maglev_auto", func(ts []Target) picker { return NewMaglev(ts, 0) }, 0.05},
		{"maglev_65537", func(ts []Target) picker { return NewMaglev(ts, 65537) }, 0.05},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := targets(1, 1, 2, 4)
			p := tc.mk(ts)
			hs := &hosts{n: 4}
			const keys = 40000
			owner := make([]int, keys)
			c := make([]int, 4)
			for k := range keys {
				key := HashAddr(netip.AddrFrom4([4]byte{10, byte(k >> 16), byte(k >> 8), byte(k)}))
				owner[k] = p.Pick(key, hs)
				c[owner[k]]++
				if again := p.Pick(key, hs); again != owner[k] {
					t.Fatalf("key %d: %d then %d, want the same host", k, owner[k], again)
				}
			}
			tol := tc.tol
			within(t, "weight 1", c[0], keys/8, tol)
			within(t, "weight 1", c[1], keys/8, tol)
			within(t, "weight 2", c[2], keys/4, tol)
			within(t, "weight 4", c[3], keys/2, tol)

			// Host 3 goes down: its keys move, nobody else's do, and they
			// spread over the remaining hosts.
			hs.down = map[int]bool{3: true}
			moved := make([]int, 4)
			for k := range keys {
				key := HashAddr(netip.AddrFrom4([4]byte{10, byte(k >> 16), byte(k >> 8), byte(k)}))
				got := p.Pick(key, hs)
				if got == 3 {
					t.Fatalf("key %d went to the down host", k)
				}
				if owner[k] != 3 && got != owner[k] {
					t.Fatalf("key %d moved from %d to %d although its host is up", k, owner[k], got)
				}
				if owner[k] == 3 {
					moved[got]++
				}
			}
			for i := range 3 {
				if moved[i] == 0 {
					t.Errorf("no key of the down host moved to host %d: %v", i, moved)
				}
			}
			hs.down = map[int]bool{0: true, 1: true, 2: true, 3: true}
			if i := p.Pick(1, hs); i != None {
				t.Errorf("all down: %d, want None", i)
			}
		})
	}
	// Same construction on another node: same table.
	a, b := NewMaglev(targets(1, 2, 3), 0), NewMaglev(targets(1, 2, 3), 0)
	for k := range uint64(1000) {
		if a.Pick(k, &hosts{n: 3}) != b.Pick(k, &hosts{n: 3}) {
			t.Fatal("two Maglev tables built from the same endpoints differ")
		}
	}
	// Zero values still give affinity by modulo.
	var zr RingHash
	var zm Maglev
	if zr.Pick(77, &hosts{n: 5}) != zr.Pick(77, &hosts{n: 5}) || zm.Pick(77, &hosts{n: 5}) == None {
		t.Error("zero-value hash balancers")
	}
}

func TestAutoMaglevTableSize(t *testing.T) {
	for n, want := range map[int]int{0: 1021, 4: 1021, 11: 1103, 1000: 65537, 5000: 65537} {
		if got := AutoMaglevTableSize(n); got != want {
			t.Errorf("AutoMaglevTableSize(%d) = %d, want %d", n, got, want)
		}
	}
	if got := len(NewMaglev(targets(1, 1, 1), 0).table); got != 1021 {
		t.Errorf("3 hosts: table of %d, want 1021", got)
	}
}
