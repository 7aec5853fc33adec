package h2

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/otlptest"
	"github.com/weir-mesh/weir/proxy/route"
)

// TestPolicyH2C checks the shared layer's hooks in this codec: a rule's
// rate limit (429 with Retry-After), a fault abort (its status, nothing
// upstream), a fault delay, and the traceparent sent upstream with the
// agent's span id, exported to a real OTLP receiver.
func TestPolicyH2C(t *testing.T) {
	var mu sync.Mutex
	var seen []string // the traceparent of each request the server got
	addr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.Header.Get("Traceparent"))
		mu.Unlock()
		io.WriteString(w, "ok")
	}))
	prefix := func(p string) []route.HTTPRouteMatch {
		return []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: p}}}
	}
	to := []route.BackendRef{{Service: "svc"}}
	snap := mustBuild(t, route.Config{Services: []route.Service{{
		Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(addr), Protocol: route.HTTP2,
		HTTPRoutes: []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{
			{Matches: prefix("/limited"), Backends: to, RateLimit: &route.LocalRateLimit{RequestsPerSecond: 0.001, Burst: 1}},
			{Matches: prefix("/abort"), Backends: to, Fault: &route.HTTPFault{Abort: &route.FaultAbort{HTTPStatus: 418}}},
			{Matches: prefix("/delay"), Backends: to, Fault: &route.HTTPFault{Delay: &route.FaultDelay{FixedDelay: cluster.Duration(200 * time.Millisecond)}}},
			{Backends: to},
		}}},
	}}})
	rcv, endpoint := otlptest.Listen(t)
	tr, err := l7.NewTracer(context.Background(), l7.TracerConfig{Endpoint: endpoint, SampleRatio: 1, BatchTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p := newTestProxy(t, snap, Options{})
	p.tracer.Store(tr)
	client, _ := h2cClient(t, p.addr)

	do := func(path string, hdr ...string) (*http.Response, string) {
		req, _ := http.NewRequest("GET", "http://svc.test"+path, nil)
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		return res, readAll(t, res)
	}
	if res, _ := do("/limited"); res.StatusCode != 200 {
		t.Fatalf("first request within the burst: %d", res.StatusCode)
	}
	res, body := do("/limited")
	if res.StatusCode != 429 || res.Header.Get("Retry-After") == "" || !strings.Contains(body, l7.ReasonRateLimited) {
		t.Fatalf("past the burst: %d %v %q, want 429 with Retry-After", res.StatusCode, res.Header, body)
	}
	mu.Lock()
	before := len(seen)
	mu.Unlock()
	if res, body := do("/abort"); res.StatusCode != 418 || !strings.Contains(body, l7.ReasonFaultAbort) {
		t.Fatalf("abort: %d %q, want 418 fault_abort", res.StatusCode, body)
	}
	start := time.Now()
	if res, _ := do("/delay"); res.StatusCode != 200 || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("delay: %d after %v, want 200 after 200ms", res.StatusCode, time.Since(start))
	}
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	do("/traced", "Traceparent", "00-"+tid+"-"+sid+"-01")
	mu.Lock()
	got := append([]string(nil), seen...)
	mu.Unlock()
	if len(got) != before+2 {
		t.Fatalf("the server got %d requests after the abort, want 2 (delay, traced): the abort went upstream?", len(got)-before)
	}
	up := strings.Split(got[len(got)-1], "-")
	if len(up) != 4 || up[1] != tid || up[2] == sid {
		t.Fatalf("upstream traceparent %q: want trace %s with the agent's span id", got[len(got)-1], tid)
	}
	// The span ends just after the answer is written: wait for the batch
	// exporter to send it, or it may end after Shutdown and never be sent.
	rcv.WaitFor(5*time.Second, func(spans []otlptest.Span) bool {
		for _, s := range spans {
			if s.TraceID == tid {
				return true
			}
		}
		return false
	})
	if err := tr.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s, ok := rcv.Trace(tid); !ok || s.SpanID != up[2] || s.ParentSpanID != sid || s.Attrs["network.protocol.name"] != "http2" {
		t.Fatalf("no exported span for trace %s with id %s and parent %s: %+v", tid, up[2], sid, rcv.Spans())
	}
	if n := counterValue(t, p, "weir_route_policy_total", "service", "svc", "route", "r/0", "policy", "rate_limited"); n != 1 {
		t.Errorf("rate_limited counted %v, want 1", n)
	}
}

// TestPolicyGRPC: a gRPC client gets RESOURCE_EXHAUSTED past a rule's
// rate limit and the abort's gRPC code from a fault.
func TestPolicyGRPC(t *testing.T) {
	gs, addr := startGRPC(t, "a")
	method := func(m string) []route.HTTPRouteMatch {
		return []route.HTTPRouteMatch{{Path: &route.PathMatch{Type: route.PathExact, Value: "/grpc.testing.TestService/" + m}}}
	}
	to := []route.BackendRef{{Service: "svc"}}
	snap := mustBuild(t, route.Config{Services: []route.Service{{
		Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(addr), Protocol: route.GRPC,
		HTTPRoutes: []route.HTTPRoute{{Name: "g", Rules: []route.HTTPRouteRule{
			{Matches: method("UnaryCall"), Backends: to, RateLimit: &route.LocalRateLimit{RequestsPerSecond: 0.001, Burst: 2}},
			{Matches: method("EmptyCall"), Backends: to, Fault: &route.HTTPFault{Abort: &route.FaultAbort{GRPCStatus: "UNAUTHENTICATED"}}},
		}}},
	}}})
	p := newTestProxy(t, snap, Options{})
	c := testpb.NewTestServiceClient(grpcClient(t, p.addr))
	var got []codes.Code
	for range 3 {
		_, err := c.UnaryCall(t.Context(), &testpb.SimpleRequest{})
		got = append(got, status.Code(err))
	}
	if got[0] != codes.OK || got[1] != codes.OK || got[2] != codes.ResourceExhausted {
		t.Fatalf("3 calls against a burst of 2: %v, want OK OK RESOURCE_EXHAUSTED", got)
	}
	if _, err := c.EmptyCall(t.Context(), &testpb.Empty{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("aborted EmptyCall: %v, want UNAUTHENTICATED", err)
	}
	if n := gs.calls.Load(); n != 2 {
		t.Errorf("the server got %d calls, want 2 (the refused and aborted ones never go upstream)", n)
	}
	if n := counterValue(t, p, "weir_route_requests_total", "service", "svc", "route", "g/0", "cluster", "", "code", "429", "grpc_status", "8"); n != 1 {
		t.Errorf("weir_route_requests_total for the refused call = %v, want 1", n)
	}
}
