package http_test

import (
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// BenchmarkHooks times what the shared layer adds to one request, the
// codecs' I/O left out: Resolve, Begin, End (and the access log's sampling
// decision and, at 1 %, its line), for a service with no routes and no
// access log (plain) and one with issue 10's policy (one rule with a
// retry policy, a timeout and a rate limit far above the load, the access
// log at 1 %, tracing off). The difference is the policy's CPU per
// request, to set against weir-bench's figure for a whole request.
func BenchmarkHooks(b *testing.B) {
	ep := []cluster.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.1:80")}}
	vip := netip.MustParseAddrPort("10.96.0.1:80")
	attempts := 1
	for _, bc := range []struct {
		name   string
		routes []route.HTTPRoute
		log    bool
	}{
		{"plain", nil, false},
		{"policy", []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{{
			Backends:  []route.BackendRef{{Service: "s"}},
			Retry:     &route.HTTPRouteRetry{Codes: []int{503}, Attempts: &attempts},
			Timeouts:  &route.HTTPRouteTimeouts{Request: cluster.Duration(10 * time.Second)},
			RateLimit: &route.LocalRateLimit{RequestsPerSecond: 1e9, Burst: 1e6},
		}}}}, true},
	} {
		snap, err := route.Build(route.Config{Services: []route.Service{{
			Name: "s", Addresses: []netip.AddrPort{vip}, Endpoints: ep, Protocol: route.HTTP, HTTPRoutes: bc.routes,
		}}}, nil)
		if err != nil {
			b.Fatal(err)
		}
		up := &l7.Upstream{Route: snap.Lookup(vip), Metrics: l7.NewMetrics(prometheus.NewRegistry())}
		if bc.log {
			up.AccessLog = l7.NewAccessLog(slog.New(slog.NewJSONHandler(io.Discard, nil)), 0.01)
		}
		v := &view{method: "GET", host: "s.test", path: "/api/items"}
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			var x l7.Exchange
			for b.Loop() {
				start := time.Now()
				d := up.Resolve(v)
				up.Begin(&x, l7.ProtoHTTP1, start, &d, v)
				up.End(&x, 200, -1)
				if al := up.AccessLog; al != nil && al.Want(false) {
					al.Write(&l7.Entry{Time: start, Method: "GET", Path: "/api/items", Status: 200, GRPC: -1, Route: l7.RouteName(d.Action)})
				}
			}
		})
	}
}
