package h1

import (
	"log/slog"
	"net/http"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// resilient builds an Upstream for service "svc" at vip over eps with
// cluster config cc and one catch-all rule with timeouts and retry.
func resilient(t *testing.T, eps []netip.AddrPort, cc cluster.Config, to *route.HTTPRouteTimeouts, rt *route.HTTPRouteRetry) (*l7.Upstream, *prometheus.Registry, *cluster.Cluster) {
	t.Helper()
	var ceps []cluster.Endpoint
	for _, a := range eps {
		ceps = append(ceps, cluster.Endpoint{Addr: a})
	}
	cfg := route.Config{Services: []route.Service{{
		Name: "svc", Addresses: []netip.AddrPort{vip}, Endpoints: ceps, Cluster: cc, Protocol: route.HTTP,
		HTTPRoutes: []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{{
			Backends: []route.BackendRef{{Service: "svc"}}, Timeouts: to, Retry: rt,
		}}}},
	}}}
	snap, err := route.Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r := snap.Lookup(vip)
	return &l7.Upstream{Route: r, Dst: vip, Dial: dialTCP, Metrics: l7.NewMetrics(reg),
		Log: slog.New(slog.DiscardHandler)}, reg, r.Cluster
}

func ok200(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok")) }

func status(code int) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(code) }
}

func retry503() *route.HTTPRouteRetry { return &route.HTTPRouteRetry{Codes: []int{503}} }

func TestRetry503OnceOntoAnother(t *testing.T) {
	var n atomic.Int64
	flaky := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(503)
			return
		}
		ok200(w, r)
	})
	good := newBackend(t, ok200)
	up, reg, c := resilient(t, []netip.AddrPort{flaky.addr, good.addr}, cluster.Config{}, nil, retry503())
	p := startProxy(t, up, Options{})
	cl := dialClient(t, p.addr)
	for i := range 6 {
		if resp, body := cl.do(get("/x")); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if got := counter(t, reg, "weir_http_retries_total", map[string]string{"protocol": "http1"}); got != 1 {
		t.Errorf("weir_http_retries_total = %v, want 1", got)
	}
	if got := c.Stats().Retries; got != 1 {
		t.Errorf("cluster retries = %d, want 1", got)
	}
	if flaky.requests.Load()+good.requests.Load() != 7 {
		t.Errorf("backends got %d + %d requests, want 7", flaky.requests.Load(), good.requests.Load())
	}
}

func TestPOSTNotRetried(t *testing.T) {
	bad := newBackend(t, status(503))
	good := newBackend(t, ok200)
	up, reg, _ := resilient(t, []netip.AddrPort{bad.addr, good.addr}, cluster.Config{}, nil, retry503())
	p := startProxy(t, up, Options{})
	cl := dialClient(t, p.addr)
	codes := map[int]int{}
	for range 4 {
		resp, _ := cl.do("POST /x HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 2\r\n\r\nhi")
		codes[resp.StatusCode]++
	}
	if codes[503] != 2 || codes[200] != 2 {
		t.Errorf("POST answers %v, want two 503 and two 200", codes)
	}
	if got := counter(t, reg, "weir_http_retries_total", map[string]string{"protocol": "http1"}); got != 0 {
		t.Errorf("weir_http_retries_total = %v, want 0", got)
	}
}

func TestRetryBudgetHolds(t *testing.T) {
	bad := newBackend(t, status(503))
	good := newBackend(t, ok200)
	cc := cluster.Config{Retry: cluster.RetryConfig{BudgetPercent: 20, MinRetriesPerSecond: 1}, Outlier: cluster.OutlierConfig{Disabled: true}}
	up, reg, c := resilient(t, []netip.AddrPort{bad.addr, good.addr}, cc, nil, retry503())
	p := startProxy(t, up, Options{})
	cl := dialClient(t, p.addr)
	const requests = 300
	start := time.Now()
	codes := map[int]int{}
	for range requests {
		resp, _ := cl.do(get("/x"))
		codes[resp.StatusCode]++
	}
	retries := counter(t, reg, "weir_http_retries_total", map[string]string{"protocol": "http1"})
	// 20 % of the requests, plus the minimum rate of 1/s.
	allowed := 0.2*requests + 1 + time.Since(start).Seconds() + 1
	t.Logf("%d requests in %v: %v retries (allowed %.0f), answers %v, cluster %+v", requests, time.Since(start), retries, allowed, codes, c.Stats().RetryBudgetExhausted)
	if retries > allowed || retries < 0.15*requests {
		t.Errorf("%v retries for %d requests, want about 20 %% (at most %.0f)", retries, requests, allowed)
	}
	if int64(codes[200]) != good.requests.Load() || float64(codes[503]) != float64(bad.requests.Load())-retries {
		t.Errorf("answers %v, endpoints %d good %d bad: a 503 reached the client only when the budget refused its retry", codes, good.requests.Load(), bad.requests.Load())
	}
	if c.Stats().RetryBudgetExhausted == 0 {
		t.Error("the budget never said no")
	}
}

func TestRouteTimeout504(t *testing.T) {
	var hits atomic.Int64
	slowFn := func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	}
	a, b := newBackend(t, slowFn), newBackend(t, slowFn)
	up, _, c := resilient(t, []netip.AddrPort{a.addr, b.addr}, cluster.Config{},
		&route.HTTPRouteTimeouts{Request: cluster.Duration(150 * time.Millisecond)},
		&route.HTTPRouteRetry{Codes: []int{503}, Attempts: new(3)})
	p := startProxy(t, up, Options{})
	cl := dialClient(t, p.addr)
	start := time.Now()
	resp, _ := cl.do(get("/x"))
	if resp.StatusCode != 504 || time.Since(start) > time.Second {
		t.Fatalf("got %d after %v, want 504 after 150ms", resp.StatusCode, time.Since(start))
	}
	if hits.Load() != 1 {
		t.Errorf("the endpoints got %d requests: an expired request was retried", hits.Load())
	}
	for _, e := range c.Stats().Endpoints {
		if e.Errors != 0 {
			t.Errorf("endpoint %s blamed for the request's own deadline", e.Name)
		}
	}
}

func TestPerTryTimeoutRetried(t *testing.T) {
	slow := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(2 * time.Second):
		case <-r.Context().Done():
		}
	})
	good := newBackend(t, ok200)
	up, _, _ := resilient(t, []netip.AddrPort{slow.addr, good.addr}, cluster.Config{},
		&route.HTTPRouteTimeouts{Request: cluster.Duration(time.Second), BackendRequest: cluster.Duration(100 * time.Millisecond)},
		&route.HTTPRouteRetry{})
	p := startProxy(t, up, Options{})
	cl := dialClient(t, p.addr)
	for i := 0; slow.requests.Load() == 0; i++ {
		if resp, _ := cl.do(get("/x")); resp.StatusCode != 200 || i > 4 {
			t.Fatalf("got %d, slow endpoint %d requests; want 200 after a per-try timeout", resp.StatusCode, slow.requests.Load())
		}
	}
}

func TestEjectionOn5xx(t *testing.T) {
	bad := newBackend(t, status(500))
	good := newBackend(t, ok200)
	const ejection = 600 * time.Millisecond
	cc := cluster.Config{Outlier: cluster.OutlierConfig{ConsecutiveFailures: 3, BaseEjectionTime: cluster.Duration(ejection), MaxEjectionPercent: 50}}
	up, _, c := resilient(t, []netip.AddrPort{bad.addr, good.addr}, cc, nil, nil)
	p := startProxy(t, up, Options{})
	cl := dialClient(t, p.addr)
	for bad.requests.Load() < 3 {
		cl.do(get("/x"))
	}
	ejectedAt := time.Now()
	if !c.Stats().Endpoints[0].Ejected {
		t.Fatalf("endpoint answering 500 not ejected: %+v", c.Stats().Endpoints[0])
	}
	for time.Since(ejectedAt) < ejection-150*time.Millisecond {
		if resp, _ := cl.do(get("/x")); resp.StatusCode != 200 {
			t.Fatalf("got %d while the failing endpoint is ejected", resp.StatusCode)
		}
	}
	if n := bad.requests.Load(); n != 3 {
		t.Fatalf("ejected endpoint got %d requests, want 3", n)
	}
	time.Sleep(ejection)
	for range 4 {
		cl.do(get("/x"))
	}
	if bad.requests.Load() == 3 {
		t.Error("the endpoint got no traffic after its ejection ended")
	}
}

// A local reply's 5xx does not count against any endpoint.
func TestLocalRepliesDoNotEject(t *testing.T) {
	if l7.Verdict(503, -1, nil) == nil || l7.Verdict(200, 14, nil) == nil || l7.Verdict(200, 0, nil) != nil || l7.Verdict(404, -1, nil) != nil {
		t.Fatal("Verdict")
	}
}
