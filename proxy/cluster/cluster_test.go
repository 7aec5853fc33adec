package cluster

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestRoundRobinSpreadsEvenly(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "rr"}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
	got := map[netip.AddrPort]int{}
	for range 30 {
		a, err := connect(t, c, f, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		got[a]++
	}
	for _, e := range c.eps {
		if got[e.Addr] != 10 {
			t.Errorf("%s got %d of 30 connections, want 10 (%v)", e.Addr, got[e.Addr], got)
		}
	}
}

func TestConnectRetriesAnotherEndpoint(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "retry"}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{})
	f.setDown(ap("10.0.0.1:80"), true)
	f.setDown(ap("10.0.0.2:80"), true)
	for range 6 {
		f.reset()
		a, err := connect(t, c, f, 0, nil)
		if err != nil {
			t.Fatalf("connect with one endpoint up: %v (dialed %v)", err, f.dialed())
		}
		if a != ap("10.0.0.3:80") {
			t.Fatalf("connected to %s, want the only endpoint up", a)
		}
		d := f.dialed()
		seen := map[netip.AddrPort]bool{}
		for _, x := range d {
			if seen[x] {
				t.Fatalf("retried the same endpoint %s: %v", x, d)
			}
			seen[x] = true
		}
	}
	s := c.Stats()
	if s.Retries == 0 || s.Connections != 6 {
		t.Errorf("stats: retries %d connections %d, want retries > 0 and 6 connections", s.Retries, s.Connections)
	}
}

func TestConnectAllDown(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "down", Outlier: OutlierConfig{Disabled: true}}, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"), Options{})
	for _, e := range c.eps {
		f.setDown(e.Addr, true)
	}
	f.reset()
	_, err := connect(t, c, f, 0, nil)
	if !errors.Is(err, ErrConnectFailed) || !errors.Is(err, errRefused) {
		t.Fatalf("err = %v, want ErrConnectFailed wrapping the dial error", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Attempts != 3 || ce.Cluster != "down" {
		t.Fatalf("err = %#v, want 3 attempts (1 + retry.maxRetries 2) on cluster down", ce)
	}
	if n := len(f.dialed()); n != 3 {
		t.Errorf("dialed %d endpoints, want 3", n)
	}
	if s := c.Stats(); s.ConnectFailures != 1 || s.Active != 0 || s.Pending != 0 {
		t.Errorf("stats after failure: %+v", s)
	}
}

func TestNoEndpoint(t *testing.T) {
	f := newFakeNet(t)
	for name, e := range map[string][]Endpoint{
		"empty":     nil,
		"unhealthy": {{Addr: ap("10.0.0.1:80"), Health: Unhealthy}},
	} {
		c := mustNew(t, Config{Name: name}, e, Options{})
		_, err := connect(t, c, f, 0, nil)
		if !errors.Is(err, ErrNoEndpoint) {
			t.Errorf("%s: err = %v, want ErrNoEndpoint", name, err)
		}
		if c.Stats().NoEndpoint != 1 {
			t.Errorf("%s: noEndpoint counter = %d", name, c.Stats().NoEndpoint)
		}
	}
}

func TestDrainingUsedOnlyWithoutHealthy(t *testing.T) {
	f := newFakeNet(t)
	e := []Endpoint{{Addr: ap("10.0.0.1:80")}, {Addr: ap("10.0.0.2:80"), Health: Draining}}
	c := mustNew(t, Config{Name: "drain"}, e, Options{})
	for range 10 {
		a, err := connect(t, c, f, 0, nil)
		if err != nil || a != ap("10.0.0.1:80") {
			t.Fatalf("got %s, %v; want the healthy endpoint", a, err)
		}
	}
	f.setDown(ap("10.0.0.1:80"), true)
	a, err := connect(t, c, f, 0, nil)
	if err != nil || a != ap("10.0.0.2:80") {
		t.Fatalf("healthy one down: got %s, %v; want the draining endpoint", a, err)
	}
}

func TestCircuitBreakerMaxConnections(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "cb", CircuitBreaker: CircuitBreakerConfig{MaxConnections: 2}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	var leases []*Lease
	for range 2 {
		conn, l, err := c.Connect(context.Background(), 0, f.dial)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		leases = append(leases, l)
	}
	f.reset()
	_, _, err := c.Connect(context.Background(), 0, f.dial)
	if !errors.Is(err, ErrCircuitOpen) {
		t.Fatalf("third connection: err = %v, want ErrCircuitOpen", err)
	}
	if len(f.dialed()) != 0 {
		t.Errorf("refused connection still dialed %v", f.dialed())
	}
	if c.Stats().CircuitOpen != 1 {
		t.Errorf("circuitOpen = %d, want 1", c.Stats().CircuitOpen)
	}
	leases[0].Done(nil)
	leases[0].Done(nil) // twice: no double release
	conn, l, err := c.Connect(context.Background(), 0, f.dial)
	if err != nil {
		t.Fatalf("after one lease is done: %v", err)
	}
	conn.Close()
	l.Done(nil)
	leases[1].Done(nil)
	if a := c.Stats().Active; a != 0 {
		t.Errorf("active = %d after all leases done", a)
	}
}

func TestCircuitBreakerMaxPending(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "pending", CircuitBreaker: CircuitBreakerConfig{MaxPendingConnects: 1}}, eps("10.0.0.1:80"), Options{})
	entered := make(chan struct{})
	release := make(chan struct{})
	slow := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		close(entered)
		<-release
		return f.dial(ctx, a)
	}
	done := make(chan error)
	go func() {
		conn, l, err := c.Connect(context.Background(), 0, slow)
		if err == nil {
			conn.Close()
			l.Done(nil)
		}
		done <- err
	}()
	<-entered
	_, _, err := c.Connect(context.Background(), 0, f.dial)
	if !errors.Is(err, ErrCircuitOpen) {
		t.Errorf("second concurrent connect: err = %v, want ErrCircuitOpen", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("first connect: %v", err)
	}
}

func TestConnectTimeout(t *testing.T) {
	f := newFakeNet(t)
	c := mustNew(t, Config{Name: "slow", ConnectTimeout: Duration(20 * time.Millisecond), Retry: RetryConfig{Disabled: true}}, eps("10.0.0.1:80"), Options{})
	hang := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	_, _, err := c.Connect(context.Background(), 0, hang)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrConnectFailed) {
		t.Fatalf("err = %v, want a connect failure from the deadline", err)
	}
	_ = f
}

func TestCallerCancelDoesNotBlameEndpoint(t *testing.T) {
	c := mustNew(t, Config{Name: "cancel", Outlier: OutlierConfig{ConsecutiveFailures: 1}}, eps("10.0.0.1:80", "10.0.0.2:80"), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	hang := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	_, _, err := c.Connect(ctx, 0, hang)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	for _, e := range c.Stats().Endpoints {
		if e.ConnectFailures != 0 || e.Ejected {
			t.Errorf("%s blamed for the caller's cancel: %+v", e.Addr, e)
		}
	}
}

func TestValidateNamesFields(t *testing.T) {
	cases := []struct {
		cfg  Config
		want string
	}{
		{Config{Balancer: "fastest"}, `balancer "fastest"`},
		{Config{Outlier: OutlierConfig{ConsecutiveFailures: -1}}, "outlier.consecutiveFailures must be > 0"},
		{Config{ConnectTimeout: Duration(-time.Second)}, "connectTimeout must be > 0"},
		{Config{Outlier: OutlierConfig{MaxEjectionPercent: 101}}, "outlier.maxEjectionPercent must be between 1 and 100"},
		{Config{Retry: RetryConfig{MaxRetries: 11}}, "retry.maxRetries must be <= 10"},
		{Config{Maglev: MaglevConfig{TableSize: 1000}}, "maglev.tableSize must be a prime"},
		{Config{Subset: SubsetConfig{Fallback: "all"}}, `subset.fallback "all"`},
		{Config{Locality: LocalityConfig{MinHealthyPercent: 150}}, "locality.minHealthyPercent"},
		{Config{CircuitBreaker: CircuitBreakerConfig{MaxConnections: -5}}, "circuitBreaker.maxConnections must be > 0"},
	}
	for _, tc := range cases {
		err := tc.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want it to mention %q", tc.cfg, err, tc.want)
		}
		if _, err := New(tc.cfg, nil, Options{}); err == nil {
			t.Errorf("New accepted an invalid config %+v", tc.cfg)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("zero config: %v", err)
	}
}

func TestEndpointValidation(t *testing.T) {
	cases := []struct {
		eps  []Endpoint
		want string
	}{
		{[]Endpoint{{}}, "endpoints[0].addr is missing"},
		{[]Endpoint{{Addr: ap("10.0.0.1:0")}}, "endpoints[0].addr 10.0.0.1:0 has no port"},
		{eps("10.0.0.1:80", "10.0.0.1:80"), "endpoints[1].addr 10.0.0.1:80 repeats endpoints[0]"},
		{[]Endpoint{{Addr: ap("10.0.0.1:80"), Health: 9}}, "endpoints[0].health"},
	}
	for _, tc := range cases {
		_, err := New(Config{Name: "x"}, tc.eps, Options{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%v) = %v, want %q", tc.eps, err, tc.want)
		}
	}
}
