package h2

import (
	"bytes"
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// resilientWorld: service "svc" at svcAddr over addrs with cluster config
// cc and one catch-all rule with timeouts and retry.
func resilientWorld(t *testing.T, addrs []netip.AddrPort, proto route.Protocol, cc cluster.Config, to *route.HTTPRouteTimeouts, rt *route.HTTPRouteRetry) (*testProxy, *cluster.Cluster) {
	t.Helper()
	snap := mustBuild(t, route.Config{Services: []route.Service{{
		Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Protocol: proto, Endpoints: eps(addrs...), Cluster: cc,
		HTTPRoutes: []route.HTTPRoute{{Rules: []route.HTTPRouteRule{{
			Backends: []route.BackendRef{{Service: "svc"}}, Timeouts: to, Retry: rt,
		}}}},
	}}})
	return newTestProxy(t, snap, Options{}), snap.Lookup(svcAddr).Cluster
}

// counting is an h2c endpoint that counts its requests.
type counting struct {
	addr netip.AddrPort
	n    atomic.Int64
}

func countingH2C(t *testing.T, h http.HandlerFunc) *counting {
	c := &counting{}
	c.addr = startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.n.Add(1)
		h(w, r)
	}))
	return c
}

func answer(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code); w.Write([]byte("x")) }
}

func doH2(t *testing.T, c *http.Client, method string) int {
	t.Helper()
	var body *strings.Reader
	if method == http.MethodPost {
		body = strings.NewReader("hi")
	}
	var req *http.Request
	var err error
	if body != nil {
		req, err = http.NewRequest(method, "http://svc.test/x", body)
	} else {
		req, err = http.NewRequest(method, "http://svc.test/x", nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	return res.StatusCode
}

func TestH2Retry503OnceOntoAnother(t *testing.T) {
	var once atomic.Int64
	flaky := countingH2C(t, func(w http.ResponseWriter, r *http.Request) {
		if once.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		w.Write([]byte("ok"))
	})
	good := countingH2C(t, answer(200))
	p, c := resilientWorld(t, []netip.AddrPort{flaky.addr, good.addr}, route.HTTP2, cluster.Config{}, nil, &route.HTTPRouteRetry{Codes: []int{503}})
	client, _ := h2cClient(t, p.addr)
	for i := range 6 {
		if got := doH2(t, client, http.MethodGet); got != 200 {
			t.Fatalf("request %d: %d", i, got)
		}
	}
	if got := counterValue(t, p, "weir_http_retries_total", "protocol", "http2"); got != 1 {
		t.Errorf("weir_http_retries_total = %v, want 1", got)
	}
	if c.Stats().Retries != 1 || flaky.n.Load()+good.n.Load() != 7 {
		t.Errorf("cluster retries %d, endpoints got %d + %d, want 1 and 7", c.Stats().Retries, flaky.n.Load(), good.n.Load())
	}
}

func TestH2POSTNotRetried(t *testing.T) {
	bad := countingH2C(t, answer(503))
	good := countingH2C(t, answer(200))
	p, _ := resilientWorld(t, []netip.AddrPort{bad.addr, good.addr}, route.HTTP2, cluster.Config{}, nil, &route.HTTPRouteRetry{Codes: []int{503}})
	client, _ := h2cClient(t, p.addr)
	codes := map[int]int{}
	for range 4 {
		codes[doH2(t, client, http.MethodPost)]++
	}
	if codes[503] != 2 || codes[200] != 2 || counterValue(t, p, "weir_http_retries_total") != 0 {
		t.Errorf("POST answers %v, %v retries; want two 503, two 200, no retry", codes, counterValue(t, p, "weir_http_retries_total"))
	}
}

func TestH2RetryBudgetHolds(t *testing.T) {
	bad := countingH2C(t, answer(503))
	good := countingH2C(t, answer(200))
	cc := cluster.Config{Retry: cluster.RetryConfig{BudgetPercent: 20, MinRetriesPerSecond: 1}, Outlier: cluster.OutlierConfig{Disabled: true}}
	p, c := resilientWorld(t, []netip.AddrPort{bad.addr, good.addr}, route.HTTP2, cc, nil, &route.HTTPRouteRetry{Codes: []int{503}})
	client, _ := h2cClient(t, p.addr)
	const requests = 300
	start := time.Now()
	codes := map[int]int{}
	for range requests {
		codes[doH2(t, client, http.MethodGet)]++
	}
	retries := counterValue(t, p, "weir_http_retries_total")
	allowed := 0.2*requests + 2 + time.Since(start).Seconds()
	t.Logf("%d requests in %v: %v retries (allowed %.0f), answers %v", requests, time.Since(start), retries, allowed, codes)
	if retries > allowed || retries < 0.15*requests || c.Stats().RetryBudgetExhausted == 0 {
		t.Errorf("%v retries for %d requests, want about 20 %% (at most %.0f)", retries, requests, allowed)
	}
	if int64(codes[200]) != good.n.Load() {
		t.Errorf("answers %v, good endpoint %d", codes, good.n.Load())
	}
}

func TestH2RouteTimeout504(t *testing.T) {
	var hits atomic.Int64
	slow := func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}
	a, b := startH2C(t, http.HandlerFunc(slow)), startH2C(t, http.HandlerFunc(slow))
	p, c := resilientWorld(t, []netip.AddrPort{a, b}, route.HTTP2, cluster.Config{},
		&route.HTTPRouteTimeouts{Request: cluster.Duration(150 * time.Millisecond)}, &route.HTTPRouteRetry{Codes: []int{503}, Attempts: new(3)})
	client, _ := h2cClient(t, p.addr)
	start := time.Now()
	if got := doH2(t, client, http.MethodGet); got != 504 || time.Since(start) > time.Second {
		t.Fatalf("got %d after %v, want 504 after 150ms", got, time.Since(start))
	}
	if hits.Load() != 1 {
		t.Errorf("endpoints got %d requests: an expired request was retried", hits.Load())
	}
	for _, e := range c.Stats().Endpoints {
		if e.Errors != 0 {
			t.Errorf("endpoint %s blamed for the request's own deadline", e.Name)
		}
	}
}

func TestH2EjectionOn5xx(t *testing.T) {
	bad := countingH2C(t, answer(500))
	good := countingH2C(t, answer(200))
	const ejection = 600 * time.Millisecond
	cc := cluster.Config{Outlier: cluster.OutlierConfig{ConsecutiveFailures: 3, BaseEjectionTime: cluster.Duration(ejection), MaxEjectionPercent: 50}}
	p, c := resilientWorld(t, []netip.AddrPort{bad.addr, good.addr}, route.HTTP2, cc, nil, nil)
	client, _ := h2cClient(t, p.addr)
	for bad.n.Load() < 3 {
		doH2(t, client, http.MethodGet)
	}
	ejectedAt := time.Now()
	waitFor(t, "the endpoint answering 500 ejected", func() bool { return c.Stats().Endpoints[0].Ejected })
	for time.Since(ejectedAt) < ejection-150*time.Millisecond {
		if got := doH2(t, client, http.MethodGet); got != 200 {
			t.Fatalf("got %d while the failing endpoint is ejected", got)
		}
	}
	if n := bad.n.Load(); n != 3 {
		t.Fatalf("ejected endpoint got %d requests, want 3", n)
	}
	time.Sleep(ejection)
	for range 4 {
		doH2(t, client, http.MethodGet)
	}
	if bad.n.Load() == 3 {
		t.Error("the endpoint got no traffic after its ejection ended")
	}
}

// flakyGRPC answers UNAVAILABLE to its first fail calls, or sleeps for
// delay, and records the deadline it was given.
type flakyGRPC struct {
	testpb.UnimplementedTestServiceServer
	calls    atomic.Int32
	fail     int32
	delay    time.Duration
	deadline atomic.Int64 // ns left when the call came
}

func (s *flakyGRPC) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.calls.Add(1)
	if dl, ok := ctx.Deadline(); ok {
		s.deadline.Store(int64(time.Until(dl)))
	}
	if n <= s.fail {
		return nil, status.Error(codes.Unavailable, "not yet")
	}
	if s.delay > 0 {
		select {
		case <-time.After(s.delay):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testpb.SimpleResponse{ServerId: "ok"}, nil
}

func startFlakyGRPC(t *testing.T, s *flakyGRPC) netip.AddrPort {
	t.Helper()
	_, addr := startGRPCServer(t, func(reg func(testpb.TestServiceServer)) { reg(s) })
	return addr
}

func TestGRPCUnavailableRetriedAndEjected(t *testing.T) {
	flaky := &flakyGRPC{fail: 1}
	good := &flakyGRPC{}
	p, c := resilientWorld(t, []netip.AddrPort{startFlakyGRPC(t, flaky), startFlakyGRPC(t, good)}, route.GRPC, cluster.Config{},
		nil, &route.HTTPRouteRetry{GRPCCodes: []string{"UNAVAILABLE"}})
	tc := testpb.NewTestServiceClient(grpcClient(t, p.addr))
	for i := range 4 {
		if _, err := tc.UnaryCall(t.Context(), &testpb.SimpleRequest{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if got := counterValue(t, p, "weir_http_retries_total", "protocol", "grpc"); got != 1 || flaky.calls.Load()+good.calls.Load() != 5 {
		t.Errorf("%v retries, calls %d + %d; want 1 and 5", got, flaky.calls.Load(), good.calls.Load())
	}
	if e := c.Stats().Endpoints[0]; e.Errors != 1 {
		t.Errorf("UNAVAILABLE not fed to outlier ejection: %+v", e)
	}
}

// grpcCall sends an empty unary call with grpc-timeout over raw HTTP/2
// and returns the grpc-status the proxy gave.
func grpcCall(t *testing.T, client *http.Client, timeout string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://svc.test/grpc.testing.TestService/UnaryCall", bytes.NewReader(make([]byte, 5)))
	req.Header.Set("Content-Type", "application/grpc")
	req.Header.Set("Te", "trailers")
	req.Header.Set("Grpc-Timeout", timeout)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)
	if s := res.Header.Get("Grpc-Status"); s != "" {
		return s
	}
	return res.Trailer.Get("Grpc-Status")
}

func TestGRPCDeadlineNotRetried(t *testing.T) {
	a, b := &flakyGRPC{delay: time.Second}, &flakyGRPC{delay: time.Second}
	p, c := resilientWorld(t, []netip.AddrPort{startFlakyGRPC(t, a), startFlakyGRPC(t, b)}, route.GRPC, cluster.Config{},
		nil, &route.HTTPRouteRetry{GRPCCodes: []string{"UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"}, Attempts: new(3)})
	client, _ := h2cClient(t, p.addr)
	start := time.Now()
	if got := grpcCall(t, client, "200m"); got != "4" || time.Since(start) > time.Second {
		t.Fatalf("grpc-status %q after %v, want 4 (DEADLINE_EXCEEDED) after 200ms", got, time.Since(start))
	}
	if n := a.calls.Load() + b.calls.Load(); n != 1 {
		t.Fatalf("%d calls upstream: an expired call was retried", n)
	}
	left := time.Duration(a.deadline.Load() + b.deadline.Load())
	if left <= 0 || left > 200*time.Millisecond {
		t.Errorf("the upstream was given %v, want the client's 200ms less the time spent", left)
	}
	// Expired on arrival: answered at once, nothing upstream.
	if got := grpcCall(t, client, "1n"); got != "4" || a.calls.Load()+b.calls.Load() != 1 {
		t.Errorf("expired call: grpc-status %q, %d calls upstream", got, a.calls.Load()+b.calls.Load())
	}
	for _, e := range c.Stats().Endpoints {
		if e.Errors != 0 {
			t.Errorf("endpoint %s blamed for the client's deadline", e.Name)
		}
	}
}

func TestGRPCTimeoutFormat(t *testing.T) {
	for _, tc := range []struct {
		d    time.Duration
		want string
	}{{time.Nanosecond, "1n"}, {150 * time.Millisecond, "150000u"}, {2 * time.Second, "2000000u"}, {3 * time.Hour, "10800000m"}, {0, "1n"}} {
		got := formatGRPCTimeout(tc.d)
		back, ok := parseGRPCTimeout([]string{got})
		if got != tc.want || !ok || back < tc.d {
			t.Errorf("%v: %q (%v), want %q", tc.d, got, back, tc.want)
		}
	}
	for _, bad := range []string{"", "1", "123456789S", "1x", "-1S"} {
		if _, ok := parseGRPCTimeout([]string{bad}); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}
