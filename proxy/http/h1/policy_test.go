package h1

import (
	"context"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/otlptest"
	"github.com/weir-mesh/weir/proxy/route"
)

// TestPolicy checks the shared layer's hooks in this codec: a rule's rate
// limit (429 with Retry-After, the connection kept), a fault abort (its
// status, nothing upstream), a fault delay, and the client's traceparent
// replaced upstream by the agent's span, exported to an OTLP receiver.
func TestPolicy(t *testing.T) {
	var mu sync.Mutex
	var seen []string // each request's traceparent at the backend
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, strings.Join(r.Header.Values("Traceparent"), ","))
		mu.Unlock()
	})
	prefix := func(p string) []route.HTTPRouteMatch {
		return []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: p}}}
	}
	to := []route.BackendRef{{Service: "svc"}}
	up := upstreamFor(t, []netip.AddrPort{b.addr}, []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{
		{Matches: prefix("/limited"), Backends: to, RateLimit: &route.LocalRateLimit{RequestsPerSecond: 0.5, Burst: 1}},
		{Matches: prefix("/abort"), Backends: to, Fault: &route.HTTPFault{Abort: &route.FaultAbort{HTTPStatus: 429}}},
		{Matches: prefix("/delay"), Backends: to, Fault: &route.HTTPFault{Delay: &route.FaultDelay{FixedDelay: cluster.Duration(200 * time.Millisecond)}}},
		{Backends: to},
	}}})
	reg := prometheus.NewRegistry()
	up.Metrics = l7.NewMetrics(reg)
	rcv, endpoint := otlptest.Listen(t)
	tr, err := l7.NewTracer(context.Background(), l7.TracerConfig{Endpoint: endpoint, SampleRatio: 1, BatchTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	up.Tracer = tr
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)

	if resp, _ := c.do(get("/limited")); resp.StatusCode != 200 {
		t.Fatalf("first request within the burst: %d", resp.StatusCode)
	}
	resp, body := c.do(get("/limited"))
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != "2" || body != "rate_limited\n" || resp.Close {
		t.Fatalf("past the burst: %d %v %q close=%v, want 429, Retry-After 2 (0.5/s), the connection kept", resp.StatusCode, resp.Header, body, resp.Close)
	}
	before := b.requests.Load()
	if resp, body := c.do(get("/abort")); resp.StatusCode != 429 || body != "fault_abort\n" || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("abort: %d %q %v, want 429 fault_abort and no Retry-After", resp.StatusCode, body, resp.Header)
	}
	if b.requests.Load() != before {
		t.Fatal("an aborted request reached the backend")
	}
	start := time.Now()
	if resp, _ := c.do(get("/delay")); resp.StatusCode != 200 || time.Since(start) < 200*time.Millisecond {
		t.Fatalf("delay: %d after %v, want 200 after 200ms", resp.StatusCode, time.Since(start))
	}
	const tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	c.do("GET /traced HTTP/1.1\r\nHost: svc.test\r\nTraceparent: 00-" + tid + "-" + sid + "-01\r\n\r\n")
	mu.Lock()
	last := seen[len(seen)-1]
	mu.Unlock()
	upTP := strings.Split(last, "-")
	if len(upTP) != 4 || upTP[1] != tid || upTP[2] == sid || strings.Contains(last, ",") {
		t.Fatalf("upstream traceparent %q: want one, trace %s with the agent's span id", last, tid)
	}
	// The proxy ends the request's span (End) just after the answer is
	// written: wait for the batch exporter (50 ms) to send it, or it may
	// end after Shutdown and never be sent.
	rcv.WaitFor(5*time.Second, func(spans []otlptest.Span) bool {
		for _, s := range spans {
			if s.TraceID == tid {
				return true
			}
		}
		return false
	})
	if err := up.Tracer.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	if s, ok := rcv.Trace(tid); !ok || s.SpanID != upTP[2] || s.ParentSpanID != sid || s.Attrs["network.protocol.name"] != "http1" {
		t.Fatalf("no exported span for trace %s with id %s and parent %s: %+v", tid, upTP[2], sid, rcv.Spans())
	}
	for labels, want := range map[[2]string]float64{{"r/0", "rate_limited"}: 1, {"r/1", "fault_abort"}: 1, {"r/2", "fault_delay"}: 1} {
		if n := counter(t, reg, "weir_route_policy_total", map[string]string{"service": "svc", "route": labels[0], "policy": labels[1]}); n != want {
			t.Errorf("weir_route_policy_total{%v} = %v, want %v", labels, n, want)
		}
	}
	if n := counter(t, reg, "weir_route_requests_total", map[string]string{"route": "r/0", "cluster": "", "code": "429"}); n != 1 {
		t.Errorf("the refused request counted %v times on its route, want 1", n)
	}
}
