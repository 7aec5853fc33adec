package cluster

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"
)

func TestPickSpreadsRequestsAndCountsActive(t *testing.T) {
	c := mustNew(t, Config{Name: "l7"}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	var leases []*Lease
	got := map[netip.AddrPort]int{}
	for range 10 {
		l, err := c.Pick(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[l.Endpoint()]++
		leases = append(leases, l)
	}
	if got[ap("10.0.0.1:80")] != 5 || got[ap("10.0.0.2:80")] != 5 {
		t.Errorf("10 picks went %v, want 5 and 5", got)
	}
	if s := c.Stats(); s.Active != 10 || s.Endpoints[0].Active != 5 {
		t.Errorf("active %d (endpoint 0: %d), want 10 and 5 while requests are in flight", s.Active, s.Endpoints[0].Active)
	}
	for _, l := range leases {
		l.Done(nil)
	}
	if s := c.Stats(); s.Active != 0 || s.Endpoints[0].Active != 0 || s.Endpoints[1].Active != 0 {
		t.Errorf("after Done: active %d, endpoints %d %d, want 0", s.Active, s.Endpoints[0].Active, s.Endpoints[1].Active)
	}
}

func TestPickRetryAvoidsTriedEndpoints(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "l7retry"}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
	f.setDown(ap("10.0.0.1:80"), true)
	f.setDown(ap("10.0.0.2:80"), true)
	for range 4 {
		l, err := c.Pick(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[netip.AddrPort]bool{}
		for {
			if seen[l.Endpoint()] {
				t.Fatalf("retry picked %s again", l.Endpoint())
			}
			seen[l.Endpoint()] = true
			conn, err := l.Dial(context.Background(), f.dial)
			if err == nil {
				conn.Close()
				break
			}
			if l, err = c.Pick(0, l); err != nil {
				t.Fatalf("retry after %v: %v", seen, err)
			}
		}
		if l.Endpoint() != ap("10.0.0.3:80") {
			t.Fatalf("ended on %s, want the only endpoint up", l.Endpoint())
		}
		l.Done(nil)
	}
	s := c.Stats()
	if s.Retries == 0 || s.Active != 0 {
		t.Errorf("retries %d active %d, want retries > 0 and nothing active", s.Retries, s.Active)
	}
	if s.Endpoints[0].ConnectFailures == 0 {
		t.Errorf("a failed Dial was not counted on the endpoint")
	}
}

func TestPickRetriesBoundedAndBreaker(t *testing.T) {
	c := mustNew(t, Config{Name: "l7b", Retry: RetryConfig{MaxRetries: 1}, CircuitBreaker: CircuitBreakerConfig{MaxConnections: 2}},
		eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
	l, err := c.Pick(0, nil)
	if err != nil {
		t.Fatal(err)
	}
	l2, err := c.Pick(0, l) // the one retry allowed
	if err != nil {
		t.Fatalf("first retry: %v", err)
	}
	if _, err := c.Pick(0, l2); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("second retry with maxRetries 1: %v, want ErrNoEndpoint", err)
	}
	a, _ := c.Pick(0, nil)
	b, _ := c.Pick(0, nil)
	if _, err := c.Pick(0, nil); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("third request in flight with maxConnections 2: %v, want ErrCircuitOpen", err)
	}
	a.Done(nil)
	b.Done(nil)
	if s := c.Stats(); s.Active != 0 {
		t.Errorf("active %d after every lease ended", s.Active)
	}
}

func TestRequestErrorsEject(t *testing.T) {
	c := mustNew(t, Config{Name: "l7ej", Outlier: OutlierConfig{ConsecutiveFailures: 3}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	bad := ap("10.0.0.1:80")
	for i := 0; i < 20; i++ {
		l, err := c.Pick(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.Endpoint() == bad {
			l.Done(errors.New("502 from upstream"))
		} else {
			l.Done(nil)
		}
	}
	for _, e := range c.Stats().Endpoints {
		if e.Addr == bad && (e.Ejections == 0 || !e.Ejected) {
			t.Errorf("endpoint failing every request: ejections %d ejected %v", e.Ejections, e.Ejected)
		}
	}
}

// A retry the budget refuses does not move the balancer on: round robin
// keeps alternating first picks, so a failing endpoint is not handed every
// request while the budget is dry.
func TestRefusedRetryKeepsRoundRobin(t *testing.T) {
	c := mustNew(t, Config{Name: "l7dry", Retry: RetryConfig{Disabled: true}, Outlier: OutlierConfig{Disabled: true}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	got := map[netip.AddrPort]int{}
	for range 10 {
		l, err := c.Pick(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[l.Endpoint()]++
		l.Done(errors.New("503"))
		if _, err := c.Pick(0, l); err == nil {
			t.Fatal("a retry passed with retries disabled")
		}
	}
	if got[ap("10.0.0.1:80")] != 5 || got[ap("10.0.0.2:80")] != 5 {
		t.Errorf("first picks went %v, want 5 and 5", got)
	}
	if s := c.Stats(); s.RetryBudgetExhausted != 10 || s.Active != 0 {
		t.Errorf("stats %+v, want 10 refused retries and nothing active", s)
	}
}

func TestPickFeedsRequestLatencyToPeakEWMA(t *testing.T) {
	clk := newFakeClock()
	c := mustNew(t, Config{Name: "ewma", Balancer: PeakEWMA}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{Clock: clk.Now})
	slow := ap("10.0.0.2:80")
	got := map[netip.AddrPort]int{}
	for range 200 {
		l, err := c.Pick(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		if l.Endpoint() == slow {
			clk.Advance(200 * time.Millisecond)
		} else {
			clk.Advance(time.Millisecond)
		}
		got[l.Endpoint()]++
		l.Done(nil)
	}
	if got[slow] > 40 {
		t.Errorf("an endpoint answering 200× slower got %d of 200 requests under peak_ewma: %v", got[slow], got)
	}
}

// TestPickIntoReusesLeases: a request's two leases, reused across requests
// and retries as proxy/rpc does, count exactly as Pick's; a failed pick
// leaves the lease ended, so ending it again changes no counter; and the
// caller's clock reading is what peak-EWMA measures from.
func TestPickIntoReusesLeases(t *testing.T) {
	c := mustNew(t, Config{Name: "into", CircuitBreaker: CircuitBreakerConfig{MaxConnections: 2}, Retry: RetryConfig{BudgetPercent: 100}}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
	var ls [2]Lease
	for i := range 20 {
		if err := c.PickInto(&ls[0], 0, nil, time.Now()); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
		// a retry into the other lease avoids the first endpoint and
		// releases the first lease
		if err := c.PickInto(&ls[1], 0, &ls[0], time.Time{}); err != nil {
			t.Fatalf("request %d, retry: %v", i, err)
		}
		if ls[1].Endpoint() == ls[0].Endpoint() {
			t.Fatalf("request %d: the retry went to %s again", i, ls[0].Endpoint())
		}
		if s := c.Stats(); s.Active != 1 {
			t.Fatalf("request %d: active %d during the retry, want 1", i, s.Active)
		}
		ls[0].Done(errors.New("stale")) // ended already: nothing changes
		ls[1].Done(nil)
		ls[1].Done(nil)
	}
	s := c.Stats()
	if s.Active != 0 || s.Retries != 20 {
		t.Errorf("active %d, retries %d; want 0 and 20", s.Active, s.Retries)
	}
	for _, e := range s.Endpoints {
		if e.Active != 0 || e.Errors != 0 {
			t.Errorf("endpoint %s: active %d, errors %d; want 0 and 0", e.Name, e.Active, e.Errors)
		}
	}
	// The breaker refuses the third request in flight; the refused lease
	// is ended and must not release anything when ended again.
	var a, b, refused Lease
	if err := c.PickInto(&a, 0, nil, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := c.PickInto(&b, 0, nil, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := c.PickInto(&refused, 0, nil, time.Time{}); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("third request in flight: %v, want the circuit open", err)
	}
	refused.Done(errors.New("x"))
	refused.Release()
	if s := c.Stats(); s.Active != 2 {
		t.Errorf("active %d after ending a refused lease, want 2", s.Active)
	}
	a.Done(nil)
	b.Done(nil)
}

// TestUsesKey: only the hash balancers pick by key, so only their callers
// need to compute one; every other balancer picks the same whatever the
// key.
func TestUsesKey(t *testing.T) {
	for _, b := range []string{"", RoundRobin, LeastRequest, Random, PeakEWMA, RingHash, Maglev} {
		c := mustNew(t, Config{Name: "l7", Balancer: b}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
		want := b == RingHash || b == Maglev
		if c.UsesKey() != want {
			t.Errorf("balancer %q: UsesKey %v, want %v", b, c.UsesKey(), want)
		}
		if want {
			continue
		}
		// Keys that a hash would spread: the same picks as key 0 gives.
		a := mustNew(t, Config{Name: "l7", Balancer: b}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
		for i := range 30 {
			if b == Random || b == LeastRequest || b == PeakEWMA {
				break // random choices: nothing to compare pick by pick
			}
			l1, err1 := c.Pick(uint64(i)*0x9e3779b97f4a7c15, nil)
			l2, err2 := a.Pick(0, nil)
			if err1 != nil || err2 != nil || l1.Endpoint() != l2.Endpoint() {
				t.Fatalf("balancer %q: pick %d with a key went to %v, with none to %v", b, i, l1.Endpoint(), l2.Endpoint())
			}
			l1.Done(nil)
			l2.Done(nil)
		}
	}
}

// TestPickRunSpreadsAndCountsEach: a run of leases picked together is
// balanced request by request (round robin alternates within the run) and
// counts as that many active requests until each lease ends (Done, or
// DoneRun for a run of them, each once); a run the
// circuit breaker cannot admit whole, and a cluster that picks by key,
// are left for one-by-one picks with nothing changed.
func TestPickRunSpreadsAndCountsEach(t *testing.T) {
	c := mustNew(t, Config{Name: "run"}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	ls := make([]*Lease, 6)
	for i := range ls {
		ls[i] = new(Lease)
	}
	if !c.PickRun(ls, time.Time{}) {
		t.Fatal("PickRun refused a run the cluster can take")
	}
	got := map[netip.AddrPort]int{}
	for i, l := range ls {
		got[l.Endpoint()]++
		if i > 0 && l.Endpoint() == ls[i-1].Endpoint() {
			t.Errorf("leases %d and %d both went to %s: round robin did not alternate", i-1, i, l.Endpoint())
		}
	}
	if got[ap("10.0.0.1:80")] != 3 || got[ap("10.0.0.2:80")] != 3 {
		t.Errorf("6 leases went %v, want 3 and 3", got)
	}
	if s := c.Stats(); s.Active != 6 || s.Endpoints[0].Active != 3 || s.Endpoints[1].Active != 3 {
		t.Errorf("active %d (endpoints %d, %d), want 6 (3, 3)", s.Active, s.Endpoints[0].Active, s.Endpoints[1].Active)
	}
	ls[0].Done(nil)
	DoneRun(append(ls, nil)) // ends the other five; nil and ended leases are skipped
	ls[1].Done(nil)          // a second end does nothing
	DoneRun(ls)
	if s := c.Stats(); s.Active != 0 || s.Endpoints[0].Active != 0 || s.Endpoints[1].Active != 0 {
		t.Errorf("after Done and DoneRun: active %d, endpoints %d %d, want 0", s.Active, s.Endpoints[0].Active, s.Endpoints[1].Active)
	}

	// A run of one endpoint is counted on it at once (round robin reads
	// no counts); a balancer that reads them sees each pick of the run.
	one := mustNew(t, Config{Name: "one"}, eps("10.0.0.1:80"), Options{})
	if !one.PickRun(ls, time.Time{}) {
		t.Fatal("PickRun refused a run of one endpoint")
	}
	if s := one.Stats(); s.Active != 6 || s.Endpoints[0].Active != 6 {
		t.Errorf("one endpoint: active %d (endpoint %d), want 6 (6)", s.Active, s.Endpoints[0].Active)
	}
	DoneRun(ls)
	if s := one.Stats(); s.Active != 0 || s.Endpoints[0].Active != 0 {
		t.Errorf("one endpoint after DoneRun: active %d (endpoint %d), want 0", s.Active, s.Endpoints[0].Active)
	}
	// Round robin's turns are reserved for the run; a turn of an endpoint
	// that is not to be picked (draining) goes to one that is.
	draining := mustNew(t, Config{Name: "draining"}, []Endpoint{{Addr: ap("10.0.0.1:80")}, {Addr: ap("10.0.0.2:80"), Health: Draining}}, Options{})
	if !draining.PickRun(ls, time.Time{}) {
		t.Fatal("PickRun refused a run with one endpoint draining")
	}
	for i, l := range ls {
		if l.Endpoint() != ap("10.0.0.1:80") {
			t.Errorf("lease %d went to %s, which drains", i, l.Endpoint())
		}
	}
	DoneRun(ls)
	least := mustNew(t, Config{Name: "least", Balancer: LeastRequest}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	if !least.PickRun(ls, time.Time{}) {
		t.Fatal("PickRun refused a least_request run")
	}
	if s := least.Stats(); s.Endpoints[0].Active != 3 || s.Endpoints[1].Active != 3 {
		t.Errorf("least_request: endpoints %d and %d active, want 3 and 3 (each pick sees the ones before)", s.Endpoints[0].Active, s.Endpoints[1].Active)
	}
	DoneRun(ls)

	small := mustNew(t, Config{Name: "small", CircuitBreaker: CircuitBreakerConfig{MaxConnections: 4}}, eps("10.0.0.1:80"), Options{})
	if small.PickRun(ls, time.Time{}) {
		t.Error("PickRun admitted 6 requests past a breaker of 4")
	}
	if s := small.Stats(); s.Active != 0 {
		t.Errorf("a refused run left %d active", s.Active)
	}
	keyed := mustNew(t, Config{Name: "keyed", Balancer: RingHash}, eps("10.0.0.1:80"), Options{})
	if keyed.PickRun(ls, time.Time{}) {
		t.Error("PickRun picked for a cluster that picks by key")
	}
}
