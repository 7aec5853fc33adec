package http_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/otlptest"
	"github.com/weir-mesh/weir/proxy/route"
)

type view struct {
	method, host, path string
	headers            map[string]string
}

func (v view) Method() []byte { return []byte(v.method) }
func (v view) Host() []byte   { return []byte(v.host) }
func (v view) Path() []byte   { return []byte(v.path) }
func (v view) Query() []byte  { return nil }
func (v view) Header(n string) ([]byte, bool) {
	s, ok := v.headers[n]
	return []byte(s), ok
}

func pct(v float64) *float64 { return &v }

// policyUpstream builds the upstream of a connection to service front,
// whose rules: /limited (2 requests, then about none), /abort (always 418
// or gRPC PERMISSION_DENIED), /slow (delayed 30ms), else to service a.
func policyUpstream(t *testing.T) (*l7.Upstream, *prometheus.Registry) {
	t.Helper()
	ep := func(a string) []cluster.Endpoint { return []cluster.Endpoint{{Addr: netip.MustParseAddrPort(a)}} }
	prefix := func(p string) []route.HTTPRouteMatch {
		return []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: p}}}
	}
	to := []route.BackendRef{{Service: "a"}}
	cfg := route.Config{Services: []route.Service{
		{Name: "front", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:80")}, Endpoints: ep("10.0.0.1:80"), Protocol: route.HTTP,
			HTTPRoutes: []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{
				{Matches: prefix("/limited"), Backends: to, RateLimit: &route.LocalRateLimit{RequestsPerSecond: 0.01, Burst: 2}},
				{Matches: prefix("/abort"), Backends: to, Fault: &route.HTTPFault{Abort: &route.FaultAbort{HTTPStatus: 418, GRPCStatus: "PERMISSION_DENIED"}}},
				{Matches: prefix("/slow"), Backends: to, Fault: &route.HTTPFault{Delay: &route.FaultDelay{FixedDelay: cluster.Duration(30 * time.Millisecond), Percentage: pct(100)}}},
				{Backends: to},
			}}}},
		{Name: "a", Endpoints: ep("10.0.0.2:80")},
	}}
	snap, err := route.Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	return &l7.Upstream{Route: snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")), Metrics: l7.NewMetrics(reg)}, reg
}

func TestResolvePolicy(t *testing.T) {
	up, reg := policyUpstream(t)
	get := func(path string) l7.Decision { return up.Resolve(view{method: "GET", host: "front", path: path}) }
	for i := range 2 {
		if d := get("/limited"); d.Status != 0 || d.Cluster == nil {
			t.Fatalf("request %d within the burst: %+v", i, d)
		}
	}
	d := get("/limited")
	if d.Status != 429 || d.Reason != l7.ReasonRateLimited || d.GRPC != 8 || d.RetryAfter < 1 || d.Cluster != nil {
		t.Fatalf("past the burst: %+v, want 429 rate_limited, RESOURCE_EXHAUSTED, a retry-after", d)
	}
	// 0.01/s: the next token is ~100s away.
	if d.RetryAfter < 90 || d.RetryAfter > 100 {
		t.Fatalf("retry-after %d s, want about 100", d.RetryAfter)
	}
	d = get("/abort")
	if d.Status != 418 || d.GRPC != 7 || d.Reason != l7.ReasonFaultAbort || d.Cluster != nil {
		t.Fatalf("abort: %+v", d)
	}
	d = get("/slow")
	if d.Status != 0 || d.Delay != 30*time.Millisecond || d.Cluster == nil {
		t.Fatalf("delay: %+v", d)
	}
	for name, want := range map[string]float64{"r/0 rate_limited": 1, "r/1 fault_abort": 1, "r/2 fault_delay": 1} {
		f := strings.Fields(name)
		got, _ := series(t, reg, "weir_route_policy_total", map[string]string{"service": "front", "route": f[0], "policy": f[1]})
		if got != want {
			t.Errorf("weir_route_policy_total{%s} = %v, want %v", name, got, want)
		}
	}
}

func TestPause(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if l7.Pause(ctx, time.Hour) {
		t.Fatal("Pause outlived its context")
	}
	if !l7.Pause(context.Background(), time.Millisecond) || !l7.Pause(ctx, 0) {
		t.Fatal("Pause refused a delay it could wait out")
	}
}

// TestRouteMetricsExact ends a known mix of requests and reads back the
// exact per-route counts and histogram counts.
func TestRouteMetricsExact(t *testing.T) {
	up, reg := policyUpstream(t)
	mix := []struct {
		path         string
		proto        int
		status, grpc int
	}{
		{"/", l7.ProtoHTTP1, 200, -1}, {"/", l7.ProtoHTTP1, 200, -1}, {"/", l7.ProtoHTTP2, 503, -1},
		{"/", l7.ProtoGRPC, 200, 0}, {"/", l7.ProtoGRPC, 200, 14}, {"/", l7.ProtoGRPC, 200, 99},
		{"/abort", l7.ProtoHTTP1, 418, -1}, {"/slow", l7.ProtoHTTP1, 0, -1},
	}
	for _, m := range mix {
		v := view{method: "GET", host: "front", path: m.path}
		d := up.Resolve(v)
		var x l7.Exchange
		up.Begin(&x, m.proto, time.Now(), &d, v)
		up.End(&x, m.status, m.grpc)
	}
	want := map[string]float64{
		"r/3 a 200 ":  2,
		"r/3 a 503 ":  1,
		"r/3 a 200 0": 1, "r/3 a 200 14": 1,
		"r/3 a 200 2": 1, // 99 is out of range: UNKNOWN
		"r/1  418 ":   1,
		"r/2 a 0 ":    1,
	}
	for k, n := range want {
		f := strings.Split(k, " ")
		l := map[string]string{"service": "front", "route": f[0], "cluster": f[1], "code": f[2], "grpc_status": f[3]}
		got, all := series(t, reg, "weir_route_requests_total", l)
		if got != n {
			t.Errorf("weir_route_requests_total%v = %v, want %v", l, got, n)
		}
		if all != len(want) {
			t.Errorf("%d request series, want %d", all, len(want))
		}
	}
	hist := map[string]uint64{"r/3 a": 6, "r/1 ": 1, "r/2 a": 1}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, mf := range mfs {
		if mf.GetName() != "weir_route_request_duration_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			k := l["route"] + " " + l["cluster"]
			if got := m.GetHistogram().GetSampleCount(); got != hist[k] || l["service"] != "front" {
				t.Errorf("histogram %v count %d, want %d", l, got, hist[k])
			}
			if h := m.GetHistogram(); len(h.GetPositiveSpan()) == 0 && h.GetZeroCount() == 0 {
				t.Errorf("histogram %v has no native buckets", l)
			}
			seen++
		}
	}
	if seen != len(hist) {
		t.Errorf("%d histogram series, want %d", seen, len(hist))
	}
}

// series returns the value of the counter with exactly these labels
// (0 when absent) and how many series the metric has.
func series(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) (float64, int) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, lp := range m.GetLabel() {
				if labels[lp.GetName()] != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue(), len(mf.GetMetric())
		}
		return 0, len(mf.GetMetric())
	}
	return 0, 0
}

// TestTracerOTLP exports a span to a real OTLP/gRPC receiver: the span
// is the child of the client's traceparent, and the traceparent sent
// upstream carries the client's trace id with the agent's span id.
func TestTracerOTLP(t *testing.T) {
	rcv, endpoint := otlptest.Listen(t)
	tr, err := l7.NewTracer(context.Background(), l7.TracerConfig{Endpoint: endpoint, SampleRatio: 0, BatchTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	up, _ := policyUpstream(t)
	up.Tracer = tr
	const client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	v := view{method: "GET", host: "front", path: "/x", headers: map[string]string{"traceparent": client}}
	d := up.Resolve(v)
	var x l7.Exchange
	up.Begin(&x, l7.ProtoHTTP1, time.Now(), &d, v)
	p := strings.Split(x.Traceparent, "-")
	if len(p) != 4 || p[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || p[2] == "00f067aa0ba902b7" || p[3] != "01" {
		t.Fatalf("upstream traceparent %q: want the client's trace id, a new span id, sampled", x.Traceparent)
	}
	up.End(&x, 200, -1)

	// No traceparent, ratio 0: a new trace, not sampled, not exported.
	v2 := view{method: "GET", host: "front", path: "/y"}
	var x2 l7.Exchange
	d2 := up.Resolve(v2)
	up.Begin(&x2, l7.ProtoHTTP1, time.Now(), &d2, v2)
	p2 := strings.Split(x2.Traceparent, "-")
	if len(p2) != 4 || len(p2[1]) != 32 || p2[1] == p[1] || p2[3] != "00" {
		t.Fatalf("new trace %q: want a fresh trace id, not sampled", x2.Traceparent)
	}
	up.End(&x2, 200, -1)

	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	spans := rcv.Spans()
	if len(spans) != 1 {
		t.Fatalf("%d spans exported, want 1: %+v", len(spans), spans)
	}
	s := spans[0]
	if s.TraceID != p[1] || s.SpanID != p[2] || s.ParentSpanID != "00f067aa0ba902b7" {
		t.Fatalf("span %+v: want trace %s, id %s, parent the client's span", s, p[1], p[2])
	}
	if s.Attrs["http.response.status_code"] != "200" || s.Attrs["weir.route"] != "r/3" || s.Attrs["url.path"] != "/x" || s.Resource["service.name"] != "weir-agent" {
		t.Fatalf("span attributes %v resource %v", s.Attrs, s.Resource)
	}
}

// TestServiceRateLimit: a service's own limit holds for every L7 request
// to it, with or without routes, before any rule's.
func TestServiceRateLimit(t *testing.T) {
	ep := []cluster.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80")}}
	for _, routes := range [][]route.HTTPRoute{nil, {{Name: "r", Rules: []route.HTTPRouteRule{{Backends: []route.BackendRef{{Service: "s"}}}}}}} {
		snap, err := route.Build(route.Config{Services: []route.Service{{
			Name: "s", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.2:80")}, Endpoints: ep,
			HTTPRoutes: routes, RateLimit: &route.LocalRateLimit{RequestsPerSecond: 0.01, Burst: 3},
		}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		reg := prometheus.NewRegistry()
		up := &l7.Upstream{Route: snap.Lookup(netip.MustParseAddrPort("10.96.0.2:80")), Metrics: l7.NewMetrics(reg)}
		var got []int
		for range 5 {
			got = append(got, up.Resolve(view{method: "GET", host: "s", path: "/"}).Status)
		}
		if fmt.Sprint(got) != "[0 0 0 429 429]" {
			t.Fatalf("routes %v: statuses %v, want 3 forwarded then 2 refused", routes != nil, got)
		}
		if n, _ := series(t, reg, "weir_route_policy_total", map[string]string{"service": "s", "route": "", "policy": "rate_limited"}); n != 2 {
			t.Errorf("service-level refusals counted %v, want 2", n)
		}
	}
	_, err := route.Build(route.Config{Services: []route.Service{{Name: "s", Endpoints: ep, RateLimit: &route.LocalRateLimit{}}}}, nil)
	if err == nil || !strings.Contains(err.Error(), "services[0] (s).rateLimit.requestsPerSecond 0 is not in") {
		t.Fatalf("a zero service rate: %v", err)
	}
}
