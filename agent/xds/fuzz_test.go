package xds

import (
	"net/netip"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weir-mesh/weir/proxy/route"
)

// FuzzConvertRouteConfig: a control plane's RouteConfiguration, whatever
// its bytes, converts without a panic, and one that conversion accepts
// (no error, so it is ACKed) compiles in weir's router: an accepted
// resource must never fail the snapshot build of the whole response.
func FuzzConvertRouteConfig(f *testing.F) {
	seeds := []*routev3.RouteConfiguration{
		routeConfig("r", &routev3.VirtualHost{Name: "v", Domains: []string{"shop.example", "*"}, Routes: []*routev3.Route{prefixRoute("/", "a")}}),
		routeConfig("retry", &routev3.VirtualHost{Name: "v", Domains: []string{"*"}, RetryPolicy: &routev3.RetryPolicy{RetryOn: "5xx"}, Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/x"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "a"},
				Timeout:          durationpb.New(2 * time.Second),
				RetryPolicy: &routev3.RetryPolicy{RetryOn: "gateway-error,unavailable,retriable-status-codes", NumRetries: wrapperspb.UInt32(3),
					PerTryTimeout: durationpb.New(time.Second), RetriableStatusCodes: []uint32{503}},
			}},
		}}}),
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var rc routev3.RouteConfiguration
		if proto.Unmarshal(b, &rc) != nil {
			return
		}
		e, n := convertRouteConfig(&rc)
		if n.err() != "" {
			return
		}
		names := map[string]bool{}
		svcs := []route.Service{{Name: "front", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:80")}, HTTPRoutes: e.routes}}
		for _, r := range e.routes {
			for _, rule := range r.Rules {
				for _, be := range rule.Backends {
					if !names[be.Service] && be.Service != "front" {
						names[be.Service] = true
						svcs = append(svcs, route.Service{Name: be.Service})
					}
				}
			}
		}
		if _, err := route.Build(route.Config{Services: svcs}, nil); err != nil {
			t.Fatalf("an accepted route configuration does not build: %v", err)
		}
	})
}
