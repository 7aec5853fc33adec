package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
)

// idle fails the test unless c holds nothing: no connection active or
// pending on the cluster or any endpoint.
func idle(t *testing.T, c *Cluster) {
	t.Helper()
	s := c.Stats()
	if s.Active != 0 || s.Pending != 0 {
		t.Errorf("cluster active %d pending %d, want 0 0", s.Active, s.Pending)
	}
	for _, e := range s.Endpoints {
		if e.Active != 0 {
			t.Errorf("%s active %d, want 0", e.Addr, e.Active)
		}
	}
}

func endpointStats(t *testing.T, c *Cluster, a netip.AddrPort) EndpointStats {
	t.Helper()
	for _, e := range c.Stats().Endpoints {
		if e.Addr == a {
			return e
		}
	}
	t.Fatalf("no endpoint %s", a)
	return EndpointStats{}
}

func TestConnectingConnectedCountsLikeConnect(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	cfg := Config{Name: "ok"}
	addrs := eps("10.0.0.1:80", "10.0.0.2:80")
	blocking := mustNew(t, cfg, addrs, Options{Clock: clk.Now})
	stepped := mustNew(t, cfg, addrs, Options{Clock: clk.Now})

	conn, want, err := blocking.Connect(context.Background(), 7, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	var cn Connecting
	a, timeout, err := stepped.Start(7, &cn)
	if err != nil {
		t.Fatal(err)
	}
	if a != want.Endpoint() || timeout != DefaultConnectTimeout {
		t.Errorf("Start = %s, %v; want %s (Connect's pick), %v", a, timeout, want.Endpoint(), DefaultConnectTimeout)
	}
	if s := stepped.Stats(); s.Active != 1 || s.Pending != 1 || endpointStats(t, stepped, a).Active != 1 {
		t.Errorf("while connecting: active %d pending %d endpoint active %d, want 1 1 1", s.Active, s.Pending, endpointStats(t, stepped, a).Active)
	}
	clk.Advance(7 * time.Millisecond)
	l := cn.Connected()
	if l == nil || l.Endpoint() != a {
		t.Fatalf("Connected = %v, want a lease on %s", l, a)
	}
	if cn.Connected() != nil {
		t.Error("a second Connected returned a lease")
	}
	cn.Abandon() // ended: must not release the lease's counts
	if _, _, err := cn.Failed(errRefused); err == nil {
		t.Error("Failed after Connected returned no error")
	}

	same := func(when string) {
		t.Helper()
		bs, ss := blocking.Stats(), stepped.Stats()
		if bs.Connections != ss.Connections || bs.Active != ss.Active || bs.Pending != ss.Pending || bs.ConnectFailures != ss.ConnectFailures {
			t.Errorf("%s: Connect counts %+v, Start+Connected %+v", when, bs, ss)
		}
		be, se := endpointStats(t, blocking, a), endpointStats(t, stepped, a)
		if be.Connections != se.Connections || be.Active != se.Active || be.ConnectFailures != se.ConnectFailures {
			t.Errorf("%s: endpoint after Connect %+v, after Start+Connected %+v", when, be, se)
		}
	}
	same("lease held")
	if s := stepped.Stats(); s.Connections != 1 || s.Active != 1 || s.Pending != 0 {
		t.Errorf("lease held: connections %d active %d pending %d, want 1 1 0", s.Connections, s.Active, s.Pending)
	}
	// The latency runs from Start's pick to Connected.
	if rtt := endpointStats(t, stepped, a).RTT; rtt.D() != 7*time.Millisecond {
		t.Errorf("rtt = %v, want the 7ms from Start to Connected", rtt)
	}
	want.Done(nil)
	l.Done(nil)
	same("lease done")
	idle(t, stepped)
}

func TestConnectingFailedRetriesElsewhere(t *testing.T) {
	clk := newFakeClock()
	c := mustNew(t, Config{Name: "retry", Outlier: OutlierConfig{Disabled: true}}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"), Options{Clock: clk.Now})
	var cn Connecting
	a, _, err := c.Start(0, &cn)
	if err != nil {
		t.Fatal(err)
	}
	tried := map[netip.AddrPort]bool{a: true}
	cause := fmt.Errorf("dial: %w", errRefused)
	// retry.maxRetries defaults to 2: two more endpoints, each new.
	for i := range 2 {
		next, timeout, err := cn.Failed(cause)
		if err != nil {
			t.Fatalf("Failed #%d: %v, want a retry", i+1, err)
		}
		if tried[next] || timeout != DefaultConnectTimeout {
			t.Fatalf("Failed #%d = %s, %v; want an endpoint not tried (%v) and the connect timeout", i+1, next, timeout, tried)
		}
		tried[next] = true
		if s := c.Stats(); s.Active != 1 || s.Pending != 1 || endpointStats(t, c, a).Active != 0 || endpointStats(t, c, next).Active != 1 {
			t.Errorf("retrying: %+v, want the cluster's counts held and only the new endpoint active", s)
		}
		a = next
	}
	next, _, err := cn.Failed(cause)
	var ce *Error
	if !errors.As(err, &ce) || !errors.Is(err, ErrConnectFailed) || !errors.Is(err, errRefused) || next.IsValid() {
		t.Fatalf("last Failed = %s, %v; want ErrConnectFailed wrapping the cause and no address", next, err)
	}
	if ce.Attempts != 3 || ce.Cluster != "retry" {
		t.Errorf("err = %+v, want 3 attempts on cluster retry", ce)
	}
	if s := c.Stats(); s.ConnectFailures != 1 || s.Retries != 2 || s.Connections != 0 {
		t.Errorf("stats: %+v, want 1 connect failure, 2 retries", s)
	}
	for a := range tried {
		e := endpointStats(t, c, a)
		if e.ConnectFailures != 1 || e.RTT.D() != DefaultConnectTimeout {
			t.Errorf("%s: %d connect failures, rtt %v; want 1 and the whole timeout", a, e.ConnectFailures, e.RTT)
		}
	}
	// Ended: nothing more to release or record.
	if _, _, err := cn.Failed(cause); err == nil {
		t.Error("Failed after the end returned no error")
	}
	cn.Abandon()
	if cn.Connected() != nil {
		t.Error("Connected after the end returned a lease")
	}
	if s := c.Stats(); s.ConnectFailures != 1 {
		t.Errorf("connect failures %d after calls on an ended connect, want 1", s.ConnectFailures)
	}
	idle(t, c)

	// The Connecting is reusable.
	if _, _, err := c.Start(0, &cn); err != nil {
		t.Fatal(err)
	}
	if cn.Connected() == nil {
		t.Fatal("no lease from a reused Connecting")
	}
}

func TestConnectingRetriesDisabled(t *testing.T) {
	for name, cfg := range map[string]Config{
		"disabled":  {Name: "d", Retry: RetryConfig{Disabled: true}},
		"exhausted": {Name: "e", Retry: RetryConfig{BudgetPercent: 1, MinRetriesPerSecond: 0}},
	} {
		t.Run(name, func(t *testing.T) {
			c := mustNew(t, cfg, eps("10.0.0.1:80", "10.0.0.2:80"), Options{Clock: newFakeClock().Now})
			c.cfg.Retry.MinRetriesPerSecond = 0 // zero means the default in Config: force no floor
			var cn Connecting
			if _, _, err := c.Start(0, &cn); err != nil {
				t.Fatal(err)
			}
			a, _, err := cn.Failed(errRefused)
			var ce *Error
			if !errors.As(err, &ce) || !errors.Is(err, ErrConnectFailed) || ce.Attempts != 1 || a.IsValid() {
				t.Fatalf("Failed = %s, %v; want ErrConnectFailed after 1 attempt", a, err)
			}
			s := c.Stats()
			if s.Retries != 0 || s.ConnectFailures != 1 {
				t.Errorf("stats %+v, want no retry and 1 connect failure", s)
			}
			if name == "exhausted" && s.RetryBudgetExhausted != 1 {
				t.Errorf("retryBudgetExhausted = %d, want 1", s.RetryBudgetExhausted)
			}
			idle(t, c)
		})
	}
}

func TestConnectingCircuitOpen(t *testing.T) {
	c := mustNew(t, Config{Name: "cb", CircuitBreaker: CircuitBreakerConfig{MaxConnections: 2, MaxPendingConnects: 1}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	var first, second Connecting
	if _, _, err := c.Start(0, &first); err != nil {
		t.Fatal(err)
	}
	// One connect pending: maxPendingConnects refuses the next.
	if a, _, err := c.Start(0, &second); !errors.Is(err, ErrCircuitOpen) || a.IsValid() {
		t.Fatalf("second Start while one is pending = %s, %v; want ErrCircuitOpen", a, err)
	}
	if second.Connected() != nil {
		t.Error("a refused Start left a connect to complete")
	}
	l1 := first.Connected()
	l2, err := startConnected(c)
	if err != nil {
		t.Fatal(err)
	}
	// Two connections: maxConnections refuses the next.
	if _, _, err := c.Start(0, &second); !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("Start at maxConnections: %v, want ErrCircuitOpen", err)
	}
	if s := c.Stats(); s.CircuitOpen != 2 || s.Active != 2 || s.Pending != 0 {
		t.Errorf("stats %+v, want 2 refused, 2 active, none pending", s)
	}
	l1.Done(nil)
	l2.Done(nil)
	idle(t, c)
}

func startConnected(c *Cluster) (*Lease, error) {
	var cn Connecting
	if _, _, err := c.Start(0, &cn); err != nil {
		return nil, err
	}
	return cn.Connected(), nil
}

func TestConnectingNoEndpoint(t *testing.T) {
	c := mustNew(t, Config{Name: "none"}, []Endpoint{{Addr: ap("10.0.0.1:80"), Health: Unhealthy}}, Options{})
	var cn Connecting
	if _, _, err := c.Start(0, &cn); !errors.Is(err, ErrNoEndpoint) {
		t.Fatalf("Start = %v, want ErrNoEndpoint", err)
	}
	if s := c.Stats(); s.NoEndpoint != 1 || s.ConnectFailures != 0 {
		t.Errorf("stats %+v, want noEndpoint 1", s)
	}
	var zero Connecting
	if _, _, err := zero.Failed(errRefused); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("Failed on a zero Connecting = %v, want ErrNoEndpoint", err)
	}
	zero.Abandon()
	idle(t, c)
}

func TestConnectingAbandon(t *testing.T) {
	c := mustNew(t, Config{Name: "gone", Outlier: OutlierConfig{ConsecutiveFailures: 1}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	var cn Connecting
	a, _, err := c.Start(0, &cn)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := cn.Failed(errRefused); err != nil {
		t.Fatalf("Failed: %v, want a retry", err)
	}
	cn.Abandon()
	cn.Abandon() // twice: no double release
	idle(t, c)
	s := c.Stats()
	if s.ConnectFailures != 1 || s.Connections != 0 {
		t.Errorf("stats %+v, want the abandoned connect counted as 1 connect failure", s)
	}
	// The first endpoint failed on its own (ejected at 1 failure); the
	// second was abandoned, not blamed.
	for _, e := range s.Endpoints {
		if blamed := e.Addr == a; (e.ConnectFailures == 1) != blamed || e.Ejected != blamed {
			t.Errorf("%s: %+v; only %s should be blamed", e.Addr, e, a)
		}
	}
	// Start on a connect in progress abandons it first.
	if _, _, err := c.Start(0, &cn); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Start(0, &cn); err != nil {
		t.Fatal(err)
	}
	cn.Abandon()
	idle(t, c)
}

func TestConnectingEjects(t *testing.T) {
	clk := newFakeClock()
	c := mustNew(t, Config{Name: "ej", Outlier: OutlierConfig{ConsecutiveFailures: 3}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{Clock: clk.Now})
	var bad netip.AddrPort
	for i := range 3 {
		var cn Connecting
		a, _, err := c.Start(0, &cn)
		for err == nil && bad.IsValid() && a != bad {
			// Round robin: let the other endpoint connect, then try again.
			cn.Connected().Done(nil)
			a, _, err = c.Start(0, &cn)
		}
		if err != nil {
			t.Fatal(err)
		}
		bad = a
		if ejected(c, bad) {
			t.Fatalf("ejected after %d failures, want 3", i)
		}
		if _, _, err := cn.Failed(errRefused); err != nil {
			t.Fatalf("Failed: %v, want a retry on the other endpoint", err)
		}
		cn.Connected().Done(nil)
	}
	if !ejected(c, bad) {
		t.Fatalf("%s not ejected after 3 failed connects in a row", bad)
	}
	if n := endpointStats(t, c, bad).Ejections; n != 1 {
		t.Errorf("ejections = %d, want 1", n)
	}
	idle(t, c)
}

// TestConnectingAllocs: the stepped connect allocates only its lease.
// Connect allocates that lease too, plus the dial's timeout context (4
// more), which a non-blocking caller replaces with its own deadline.
func TestConnectingAllocs(t *testing.T) {
	// Each connect funds one retry, so every Failed below retries.
	cfg := Config{Name: "allocs", Outlier: OutlierConfig{Disabled: true}, Retry: RetryConfig{BudgetPercent: 100}}
	c := mustNew(t, cfg, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	var cn Connecting
	n := testing.AllocsPerRun(100, func() {
		if _, _, err := c.Start(0, &cn); err != nil {
			t.Fatal(err)
		}
		cn.Connected().Done(nil)
	})
	if n > 1 {
		t.Errorf("Start+Connected+Done allocates %v, want at most 1 (the lease)", n)
	}
	// A failed attempt and its retry allocate nothing, and a connect
	// that ended without a connection leaves its lease for the next Start.
	n = testing.AllocsPerRun(100, func() {
		if _, _, err := c.Start(0, &cn); err != nil {
			t.Fatal(err)
		}
		if _, _, err := cn.Failed(errRefused); err != nil {
			t.Fatal(err)
		}
		cn.Abandon()
	})
	if n != 0 {
		t.Errorf("Start+Failed+Abandon on a reused Connecting allocates %v, want 0", n)
	}

	conn := new(net.TCPConn)
	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) { return conn, nil }
	m := testing.AllocsPerRun(100, func() {
		_, l, err := c.Connect(context.Background(), 0, dial)
		if err != nil {
			t.Fatal(err)
		}
		l.Done(nil)
	})
	if m != 5 {
		t.Errorf("Connect allocates %v, want 5 (the lease and the timeout context), as before it ran on Connecting", m)
	}
}
