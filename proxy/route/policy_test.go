package route

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
)

func TestTokenBucketBurstThenRate(t *testing.T) {
	b := NewTokenBucket(2, 3) // a token every 500ms, 3 at once
	for i := range 3 {
		if ok, _ := b.Allow(); !ok {
			t.Fatalf("request %d of the burst refused", i)
		}
	}
	ok, wait := b.Allow()
	if ok {
		t.Fatal("a fourth request at once was admitted past a burst of 3")
	}
	if wait <= 0 || wait > 500*time.Millisecond {
		t.Fatalf("wait %v, want in (0, 500ms]", wait)
	}
	// Pretend the time of one token passed: the bucket admits one more,
	// then refuses again.
	b.base = b.base.Add(-500 * time.Millisecond)
	if ok, _ := b.Allow(); !ok {
		t.Fatal("a token refilled after 500ms was not given")
	}
	if ok, _ := b.Allow(); ok {
		t.Fatal("two requests admitted on one refilled token")
	}
}

func TestTokenBucketConcurrentExact(t *testing.T) {
	b := NewTokenBucket(0.001, 50) // no refill within the test
	got := make(chan int, 8)
	for range 8 {
		go func() {
			n := 0
			for range 100 {
				if ok, _ := b.Allow(); ok {
					n++
				}
			}
			got <- n
		}()
	}
	sum := 0
	for range 8 {
		sum += <-got
	}
	if sum != 50 {
		t.Fatalf("admitted %d of 800 racing requests, want exactly the burst of 50", sum)
	}
}

func pct(v float64) *float64 { return &v }

func TestPolicyCompile(t *testing.T) {
	rule := func(rl *LocalRateLimit, f *HTTPFault) []HTTPRoute {
		return []HTTPRoute{{Name: "r", Rules: []HTTPRouteRule{{RateLimit: rl, Fault: f, Backends: []BackendRef{{Service: "a"}}}}}}
	}
	for _, tc := range []struct {
		name   string
		routes []HTTPRoute
		err    string
	}{
		{"zero rate", rule(&LocalRateLimit{}, nil), "rateLimit.requestsPerSecond 0 is not in"},
		{"negative burst", rule(&LocalRateLimit{RequestsPerSecond: 1, Burst: -1}, nil), "rateLimit.burst -1"},
		{"empty fault", rule(nil, &HTTPFault{}), "fault has neither delay nor abort"},
		{"no delay", rule(nil, &HTTPFault{Delay: &FaultDelay{}}), "fault.delay.fixedDelay 0s is not in"},
		{"percentage", rule(nil, &HTTPFault{Delay: &FaultDelay{FixedDelay: cluster.Duration(time.Second), Percentage: pct(101)}}), "fault.delay.percentage 101 is not in 0..100"},
		{"abort status", rule(nil, &HTTPFault{Abort: &FaultAbort{HTTPStatus: 99}}), "fault.abort.httpStatus 99 is not in 200..599"},
		{"abort nothing", rule(nil, &HTTPFault{Abort: &FaultAbort{}}), "fault.abort needs httpStatus or grpcStatus"},
		{"abort grpc", rule(nil, &HTTPFault{Abort: &FaultAbort{GRPCStatus: "FINE"}}), `fault.abort.grpcStatus "FINE" is not a gRPC error code`},
		{"abort grpc OK", rule(nil, &HTTPFault{Abort: &FaultAbort{GRPCStatus: "OK"}}), `fault.abort.grpcStatus "OK" is not a gRPC error code`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(l7Config(tc.routes), nil)
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), ".routes[0].rules[0]") {
				t.Fatalf("err %v, want one naming .routes[0].rules[0] and %q", err, tc.err)
			}
		})
	}

	routes := rule(&LocalRateLimit{RequestsPerSecond: 2.5}, &HTTPFault{
		Delay: &FaultDelay{FixedDelay: cluster.Duration(50 * time.Millisecond)},
		Abort: &FaultAbort{GRPCStatus: "unavailable", Percentage: pct(0)},
	})
	snap, err := Build(l7Config(routes), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP.Match(req{method: "GET", path: "/"})
	if a.RateLimit == nil || a.RateLimit.window != 3*a.RateLimit.interval {
		t.Fatalf("rate limit %+v, want a burst of ceil(2.5) = 3", a.RateLimit)
	}
	f := a.Fault
	if f.AbortStatus != 503 || f.AbortGRPC != 14 || f.Delay != 50*time.Millisecond {
		t.Fatalf("fault %+v: want abort 503/UNAVAILABLE (from the gRPC code), delay 50ms", f)
	}
	for range 1000 {
		if !f.Delayed() || f.Aborted() {
			t.Fatal("a 100 % delay skipped a request or a 0 % abort hit one")
		}
	}
}

func TestFaultPercentage(t *testing.T) {
	th := newThreshold(25)
	n := 0
	for range 100_000 {
		if th.pick() {
			n++
		}
	}
	// 25 % of 100 000: the binomial standard deviation is ~137, so
	// 1 000 either side is over 7 sigma.
	if n < 24_000 || n > 26_000 {
		t.Fatalf("picked %d of 100000 at 25 %%", n)
	}
}

func TestHTTPStatusOfGRPC(t *testing.T) {
	for c := range 17 {
		s := HTTPStatusOfGRPC(c)
		if s < 200 || s > 599 {
			t.Fatalf("code %d maps to %d", c, s)
		}
	}
	if HTTPStatusOfGRPC(8) != 429 || HTTPStatusOfGRPC(14) != 503 {
		t.Fatal("RESOURCE_EXHAUSTED must map to 429 and UNAVAILABLE to 503")
	}
}

// TestBucketsSurviveRebuilds: an endpoint change or a reload rebuilds
// the routes; an unchanged limit keeps its bucket (and its spent tokens),
// a changed one starts afresh.
func TestBucketsSurviveRebuilds(t *testing.T) {
	rl := &LocalRateLimit{RequestsPerSecond: 0.001, Burst: 2}
	cfg := l7Config([]HTTPRoute{{Name: "r", Rules: []HTTPRouteRule{{RateLimit: rl, Backends: []BackendRef{{Service: "a"}}}}}})
	cfg.Services[0].RateLimit = &LocalRateLimit{RequestsPerSecond: 0.001, Burst: 1}
	vip := netip.MustParseAddrPort("10.96.0.1:80")
	buckets := func(s *Snapshot) (*TokenBucket, *TokenBucket) {
		r := s.Lookup(vip)
		return r.RateLimit, r.HTTP.Match(req{method: "GET", path: "/"}).RateLimit
	}
	s1, err := Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	svc1, rule1 := buckets(s1)
	svc1.Allow()
	rule1.Allow()
	rule1.Allow()

	cfg.Services[0].Endpoints = append(cfg.Services[0].Endpoints, cluster.Endpoint{Addr: netip.MustParseAddrPort("10.0.0.9:80")})
	s2, err := Build(cfg, s1)
	if err != nil {
		t.Fatal(err)
	}
	svc2, rule2 := buckets(s2)
	if svc2 != svc1 || rule2 != rule1 {
		t.Fatal("an endpoint change gave the limits new buckets: churn would reset them")
	}
	if ok, _ := rule2.Allow(); ok {
		t.Fatal("the spent burst came back after a rebuild")
	}

	cfg.Services[0].HTTPRoutes[0].Rules[0].RateLimit = &LocalRateLimit{RequestsPerSecond: 0.001, Burst: 3}
	s3, err := Build(cfg, s2)
	if err != nil {
		t.Fatal(err)
	}
	svc3, rule3 := buckets(s3)
	if svc3 != svc1 || rule3 == rule1 {
		t.Fatal("want the unchanged service limit kept and the changed rule limit new")
	}
}
