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

func ejected(c *Cluster, a netip.AddrPort) bool {
	for _, e := range c.Stats().Endpoints {
		if e.Addr == a {
			return e.Ejected
		}
	}
	panic("no endpoint " + a.String())
}

func TestOutlierEjectionAndReturn(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80"}
	// A two-endpoint cluster must be able to eject one even at 10%.
	c := mustNew(t, Config{Name: "ej", Retry: RetryConfig{Disabled: true}}, eps(addrs...), Options{Clock: clk.Now})
	bad := ap("10.0.0.1:80")
	f.setDown(bad, true)

	// Round robin alternates, so 10 connections make 5 failures on bad.
	fails := 0
	for range 10 {
		if _, err := connect(t, c, f, 0, nil); err != nil {
			fails++
		}
	}
	if fails != 5 || !ejected(c, bad) {
		t.Fatalf("after %d failures: ejected=%v, want ejected after 5 in a row", fails, ejected(c, bad))
	}
	// While ejected, every connection goes to the good endpoint.
	f.reset()
	for range 10 {
		if a, err := connect(t, c, f, 0, nil); err != nil || a != ap("10.0.0.2:80") {
			t.Fatalf("while ejected: %s, %v", a, err)
		}
	}
	for _, a := range f.dialed() {
		if a == bad {
			t.Fatal("an ejected endpoint was dialed")
		}
	}
	// Base ejection time is 30s: back at 30s.
	clk.Advance(29 * time.Second)
	if !ejected(c, bad) {
		t.Fatal("returned before 30s")
	}
	clk.Advance(time.Second)
	if ejected(c, bad) {
		t.Fatal("still ejected after 30s")
	}
	// Still failing: ejected again after 5 more, now for 2×30s.
	for i := 0; i < 10 && !ejected(c, bad); i++ {
		connect(t, c, f, 0, nil)
	}
	if !ejected(c, bad) {
		t.Fatal("not ejected a second time")
	}
	clk.Advance(59 * time.Second)
	if !ejected(c, bad) {
		t.Fatal("second ejection should last 60s")
	}
	clk.Advance(time.Second)
	if ejected(c, bad) {
		t.Fatal("second ejection lasted more than 60s")
	}
	// Healthy for a long time: the multiplier is forgiven.
	f.setDown(bad, false)
	clk.Advance(10 * time.Minute)
	f.setDown(bad, true)
	for i := 0; i < 20 && !ejected(c, bad); i++ {
		connect(t, c, f, 0, nil)
	}
	clk.Advance(30 * time.Second)
	if ejected(c, bad) {
		t.Fatal("after a long healthy spell the ejection should be back to 30s")
	}
	if n := c.Stats().Endpoints[0].Ejections; n != 3 {
		t.Errorf("ejections = %d, want 3", n)
	}
}

func TestMaxEjectionPercent(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	var addrs []string
	for i := range 20 {
		addrs = append(addrs, fmt.Sprintf("10.0.0.%d:80", i+1))
	}
	c := mustNew(t, Config{Name: "pct", Retry: RetryConfig{Disabled: true}, Outlier: OutlierConfig{ConsecutiveFailures: 1}}, eps(addrs...), Options{Clock: clk.Now})
	for _, a := range addrs {
		f.setDown(ap(a), true)
	}
	for range 40 {
		connect(t, c, f, 0, nil)
	}
	n := 0
	for _, e := range c.Stats().Endpoints {
		if e.Ejected {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d of 20 ejected, want 2 (10%%)", n)
	}
}

func TestSingleEndpointPanicsInsteadOfRefusing(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	c := mustNew(t, Config{Name: "one", Outlier: OutlierConfig{ConsecutiveFailures: 1}}, eps("10.0.0.1:80"), Options{Clock: clk.Now})
	f.setDown(ap("10.0.0.1:80"), true)
	connect(t, c, f, 0, nil)
	if !ejected(c, ap("10.0.0.1:80")) {
		t.Fatal("the only endpoint should be ejectable")
	}
	f.setDown(ap("10.0.0.1:80"), false)
	if _, err := connect(t, c, f, 0, nil); err != nil {
		t.Fatalf("with every endpoint ejected the cluster should still try them (panic), got %v", err)
	}
}

func TestResetsEject(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	c := mustNew(t, Config{Name: "rst", Outlier: OutlierConfig{ConsecutiveFailures: 3}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{Clock: clk.Now})
	reset := errors.New("connection reset by peer")
	bad := ap("10.0.0.1:80")
	// bad accepts and then resets every connection; good ends cleanly.
	for range 6 {
		conn, l, err := c.Connect(context.Background(), 0, f.dial)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if l.Endpoint() == bad {
			l.Done(reset)
		} else {
			l.Done(nil)
		}
	}
	if !ejected(c, bad) {
		t.Fatalf("3 connections in a row ending in a reset should eject: %+v", c.Stats().Endpoints[0])
	}
	if c.Stats().Endpoints[0].Errors != 3 {
		t.Errorf("errors = %d, want 3", c.Stats().Endpoints[0].Errors)
	}
	// A clean end resets the streak.
	c2 := mustNew(t, Config{Name: "rst2", Outlier: OutlierConfig{ConsecutiveFailures: 3}}, eps("10.0.0.1:80"), Options{Clock: clk.Now})
	for i := range 6 {
		conn, l, err := c2.Connect(context.Background(), 0, f.dial)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if i%2 == 0 {
			l.Done(reset)
		} else {
			l.Done(nil)
		}
	}
	if ejected(c2, bad) {
		t.Error("alternating resets and clean ends should not eject")
	}
}

func TestRetryBudget(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	var addrs []string
	for i := range 10 {
		addrs = append(addrs, fmt.Sprintf("10.0.0.%d:80", i+1))
	}
	// No floor: only the 20% of new connections funds retries.
	cfg := Config{Name: "budget", Outlier: OutlierConfig{Disabled: true}, Retry: RetryConfig{MaxRetries: 3, MinRetriesPerSecond: 0}}
	cfg.Retry.MinRetriesPerSecond = 0
	c := mustNew(t, cfg, eps(addrs...), Options{Clock: clk.Now})
	c.cfg.Retry.MinRetriesPerSecond = 0 // zero means the default in Config; force none here
	for _, a := range addrs {
		f.setDown(ap(a), true)
	}
	f.reset()
	const conns = 50
	for range conns {
		connect(t, c, f, 0, nil)
	}
	s := c.Stats()
	// 50 connections deposit 50×0.2 = 10 retries.
	if s.Retries != 10 {
		t.Errorf("retries = %d, want 10 (20%% of %d)", s.Retries, conns)
	}
	if got := len(f.dialed()); got != conns+10 {
		t.Errorf("dialed %d times, want %d: the budget must bound attempts on a dying cluster", got, conns+10)
	}
	if s.RetryBudgetExhausted == 0 {
		t.Error("retryBudgetExhausted not counted")
	}

	// The floor: minRetriesPerSecond refills with time.
	c2 := mustNew(t, Config{Name: "floor", Outlier: OutlierConfig{Disabled: true}, Retry: RetryConfig{MaxRetries: 1, BudgetPercent: 1, MinRetriesPerSecond: 2}}, eps(addrs...), Options{Clock: clk.Now})
	for range 10 {
		connect(t, c2, f, 0, nil)
	}
	first := c2.Stats().Retries
	clk.Advance(5 * time.Second)
	for range 20 {
		connect(t, c2, f, 0, nil)
	}
	if got := c2.Stats().Retries - first; got != 10 {
		t.Errorf("5s at 2 retries/s allowed %d retries, want 10", got)
	}
}

func TestSubsets(t *testing.T) {
	f := newFakeNet(t)
	e := []Endpoint{
		{Addr: ap("10.0.0.1:80"), Labels: map[string]string{"version": "v1"}},
		{Addr: ap("10.0.0.2:80"), Labels: map[string]string{"version": "v2"}},
		{Addr: ap("10.0.0.3:80"), Labels: map[string]string{"version": "v2"}},
	}
	c := mustNew(t, Config{Name: "sub", Subset: SubsetConfig{Selector: map[string]string{"version": "v2"}}, Retry: RetryConfig{Disabled: true}}, e, Options{})
	got := map[netip.AddrPort]int{}
	for range 100 {
		a, err := connect(t, c, f, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[a]++
	}
	if got[ap("10.0.0.1:80")] != 0 || got[ap("10.0.0.2:80")] != 50 || got[ap("10.0.0.3:80")] != 50 {
		t.Errorf("subset version=v2: %v, want 50/50 over .2 and .3", got)
	}
	// Fallback none: no v3 endpoint means no endpoint.
	c = mustNew(t, Config{Name: "sub3", Subset: SubsetConfig{Selector: map[string]string{"version": "v3"}}}, e, Options{})
	if _, err := connect(t, c, f, 0, nil); !errors.Is(err, ErrNoEndpoint) {
		t.Errorf("empty subset, fallback none: %v, want ErrNoEndpoint", err)
	}
	// Fallback any: the whole cluster.
	c = mustNew(t, Config{Name: "sub3any", Subset: SubsetConfig{Selector: map[string]string{"version": "v3"}, Fallback: FallbackAny}}, e, Options{})
	if _, err := connect(t, c, f, 0, nil); err != nil {
		t.Errorf("empty subset, fallback any: %v", err)
	}
	// Fallback any also covers a subset whose endpoints are all down.
	e2 := []Endpoint{e[0], {Addr: ap("10.0.0.2:80"), Labels: map[string]string{"version": "v2"}, Health: Unhealthy}}
	c = mustNew(t, Config{Name: "subdown", Subset: SubsetConfig{Selector: map[string]string{"version": "v2"}, Fallback: FallbackAny}}, e2, Options{})
	if a, err := connect(t, c, f, 0, nil); err != nil || a != ap("10.0.0.1:80") {
		t.Errorf("subset all unhealthy, fallback any: %s %v", a, err)
	}
}

func TestLocalityFallOver(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	var e []Endpoint
	for i := range 4 {
		e = append(e, Endpoint{Addr: ap(fmt.Sprintf("10.0.1.%d:80", i+1)), Labels: map[string]string{ZoneLabel: "a"}})
	}
	for i := range 4 {
		e = append(e, Endpoint{Addr: ap(fmt.Sprintf("10.0.2.%d:80", i+1)), Labels: map[string]string{ZoneLabel: "b"}})
	}
	cfg := Config{Name: "loc", Locality: LocalityConfig{Enabled: true}, Outlier: OutlierConfig{ConsecutiveFailures: 1, MaxEjectionPercent: 50}}
	c := mustNew(t, cfg, e, Options{LocalZone: "a", Clock: clk.Now})
	zoneCount := func() (a, b int) {
		for range 200 {
			addr, err := connect(t, c, f, 0, nil)
			if err != nil {
				t.Fatal(err)
			}
			if addr.Addr().As4()[2] == 1 {
				a++
			} else {
				b++
			}
		}
		return
	}
	if a, b := zoneCount(); a != 200 || b != 0 {
		t.Fatalf("all local endpoints up: %d local, %d remote; want all local", a, b)
	}
	// One of four local endpoints ejected: 75% >= 70%, stay local.
	f.setDown(ap("10.0.1.1:80"), true)
	for i := 0; i < 10 && !ejected(c, ap("10.0.1.1:80")); i++ {
		connect(t, c, f, 0, nil)
	}
	if !ejected(c, ap("10.0.1.1:80")) {
		t.Fatal("setup: 10.0.1.1 not ejected")
	}
	if a, b := zoneCount(); a != 200 || b != 0 {
		t.Fatalf("75%% of the zone up: %d local, %d remote; want all local", a, b)
	}
	// Two ejected: 50% < 70%, fall over to every zone.
	f.setDown(ap("10.0.1.2:80"), true)
	for i := 0; i < 10 && !ejected(c, ap("10.0.1.2:80")); i++ {
		connect(t, c, f, 0, nil)
	}
	if !ejected(c, ap("10.0.1.2:80")) {
		t.Fatal("setup: 10.0.1.2 not ejected")
	}
	a, b := zoneCount()
	if b == 0 || a == 0 {
		t.Fatalf("50%% of the zone up: %d local, %d remote; want both zones used", a, b)
	}
	// The remaining 2 local + 4 remote share evenly: 1/3 local.
	if a < 50 || a > 85 {
		t.Errorf("after fall-over %d of 200 local, want about 67", a)
	}
	// Ejections expire: back to local only.
	f.setDown(ap("10.0.1.1:80"), false)
	f.setDown(ap("10.0.1.2:80"), false)
	clk.Advance(time.Minute)
	if a, b := zoneCount(); a != 200 || b != 0 {
		t.Fatalf("zone recovered: %d local, %d remote; want all local", a, b)
	}
	// Without the node's zone, locality is a no-op.
	c = mustNew(t, cfg, e, Options{})
	if a, b := zoneCount(); a == 0 || b == 0 {
		t.Errorf("no local zone: %d/%d, want both zones", a, b)
	}
}

func TestBalancersThroughCluster(t *testing.T) {
	f := newFakeNet(t)
	for _, b := range []string{RoundRobin, Random, LeastRequest, PeakEWMA, RingHash, Maglev} {
		t.Run(b, func(t *testing.T) {
			e := []Endpoint{{Addr: ap("10.0.0.1:80"), Weight: 1}, {Addr: ap("10.0.0.2:80"), Weight: 3}}
			c := mustNew(t, Config{Name: b, Balancer: b}, e, Options{})
			got := map[netip.AddrPort]int{}
			for k := range 4000 {
				a, err := connect(t, c, f, uint64(k)*0x9e3779b97f4a7c15, nil)
				if err != nil {
					t.Fatal(err)
				}
				got[a]++
			}
			heavy := got[ap("10.0.0.2:80")]
			// Least request and peak-EWMA balance load per weight: with
			// every connection ended at once all loads are equal, and the
			// heavier endpoint wins at least its even share.
			lo, hi := 2700, 3300
			if b == LeastRequest || b == PeakEWMA {
				lo, hi = 1800, 4000
			}
			if heavy < lo || heavy > hi {
				t.Errorf("weight-3 endpoint got %d of 4000, want %d..%d", heavy, lo, hi)
			}
			// Affinity: the hash balancers send one key to one endpoint.
			if b == RingHash || b == Maglev {
				first, _ := connect(t, c, f, 12345, nil)
				for range 20 {
					if a, _ := connect(t, c, f, 12345, nil); a != first {
						t.Fatalf("key 12345 went to %s then %s", first, a)
					}
				}
			}
		})
	}
}

func TestRebuildKeepsLiveState(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	cfg := Config{Name: "keep", Retry: RetryConfig{Disabled: true}, Outlier: OutlierConfig{ConsecutiveFailures: 1}}
	c1 := mustNew(t, cfg, eps("10.0.0.1:80", "10.0.0.2:80"), Options{Clock: clk.Now})
	f.setDown(ap("10.0.0.1:80"), true)
	for range 2 {
		connect(t, c1, f, 0, nil)
	}
	conn, l, err := c1.Connect(context.Background(), 0, f.dial)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if !ejected(c1, ap("10.0.0.1:80")) {
		t.Fatal("setup: not ejected")
	}
	if !c1.Matches(cfg, eps("10.0.0.1:80", "10.0.0.2:80"), "") {
		t.Error("Matches: same config and endpoints should match")
	}
	if c1.Matches(cfg, eps("10.0.0.1:80", "10.0.0.3:80"), "") {
		t.Error("Matches: different endpoints should not match")
	}
	c2 := mustNew(t, cfg, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{Prev: c1, Clock: clk.Now})
	if !ejected(c2, ap("10.0.0.1:80")) {
		t.Error("ejection lost across rebuild")
	}
	s1, s2 := c1.Stats(), c2.Stats()
	if s2.Connections != s1.Connections || s2.Active != 1 || s2.Endpoints[1].Active != 1 {
		t.Errorf("counters not carried: before %+v after %+v", s1, s2)
	}
	// The lease from the old cluster releases into the shared state.
	l.Done(nil)
	if a := c2.Stats().Active; a != 0 {
		t.Errorf("active = %d after the old lease ended", a)
	}
	// A different name starts fresh.
	cfg.Name = "other"
	c3 := mustNew(t, cfg, eps("10.0.0.1:80"), Options{Prev: c1, Clock: clk.Now})
	if c3.Stats().Connections != 0 || ejected(c3, ap("10.0.0.1:80")) {
		t.Error("state leaked into a cluster of another name")
	}
}

// TestLoopbackListeners runs the cluster against real TCP listeners on
// 127.0.0.1: stopping one makes connects to it fail for real (RST), which
// retries hide from the client and outlier detection ejects.
func TestLoopbackListeners(t *testing.T) {
	var lns []net.Listener
	var e []Endpoint
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen on loopback: %v", err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Write([]byte("hi"))
				c.Close()
			}
		}()
		lns = append(lns, ln)
		e = append(e, Endpoint{Addr: netip.MustParseAddrPort(ln.Addr().String())})
	}
	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	c := mustNew(t, Config{Name: "loopback", ConnectTimeout: Duration(time.Second)}, e, Options{})
	use := func() netip.AddrPort {
		conn, l, err := c.Connect(context.Background(), 0, dial)
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		buf := make([]byte, 2)
		_, rerr := conn.Read(buf)
		conn.Close()
		l.Done(nil)
		if rerr != nil || string(buf) != "hi" {
			t.Fatalf("read from %s: %q %v", l.Endpoint(), buf, rerr)
		}
		return l.Endpoint()
	}
	for range 6 {
		use()
	}
	stopped := e[0].Addr
	lns[0].Close()
	for range 30 {
		if a := use(); a == stopped {
			t.Fatal("connected to a stopped listener")
		}
	}
	s := c.Stats()
	if s.Retries == 0 || !s.Endpoints[0].Ejected || s.Endpoints[0].ConnectFailures != 5 {
		t.Errorf("after stopping %s: retries %d, endpoint %+v; want retries and an ejection after 5 failures", stopped, s.Retries, s.Endpoints[0])
	}
}
