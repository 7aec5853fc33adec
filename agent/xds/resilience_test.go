package xds

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// resilienceRoute converts one route with the action's timeout and retry
// settings and returns its rule and warnings.
func resilienceRoute(t *testing.T, a *routev3.RouteAction, vh *routev3.RetryPolicy) (route.HTTPRouteRule, string) {
	t.Helper()
	a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: "a"}
	rc := routeConfig("r", &routev3.VirtualHost{Name: "v", Domains: []string{"*"}, RetryPolicy: vh, Routes: []*routev3.Route{{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}, Action: &routev3.Route_Route{Route: a},
	}}})
	e, n := convertRouteConfig(rc)
	if n.err() != "" {
		t.Fatalf("converting: %s", n.err())
	}
	rule := e.routes[0].Rules[0]
	// What is converted must also build in weir's router.
	svcs := []route.Service{{Name: "a"}, {Name: "front", Addresses: []netip.AddrPort{mustAddrPort("10.96.0.1:80")}, HTTPRoutes: e.routes}}
	if _, err := route.Build(route.Config{Services: svcs}, nil); err != nil {
		t.Fatalf("converted route does not build: %v", err)
	}
	return rule, strings.Join(n.warnings, "\n")
}

func dur(d time.Duration) *durationpb.Duration { return durationpb.New(d) }

// Istio's default policy for every HTTP route: its conditions map onto
// codes, gRPC codes and attempts; what weir does beyond it is named.
func TestConvertRetryIstioDefault(t *testing.T) {
	rule, w := resilienceRoute(t, &routev3.RouteAction{
		Timeout: dur(0),
		RetryPolicy: &routev3.RetryPolicy{
			RetryOn:                       "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
			NumRetries:                    wrapperspb.UInt32(2),
			RetriableStatusCodes:          []uint32{503},
			RetryHostPredicate:            []*routev3.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}},
			HostSelectionRetryMaxAttempts: 5,
		},
		MaxStreamDuration: &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: dur(0), GrpcTimeoutHeaderMax: dur(0)},
	}, nil)
	if rule.Timeouts != nil {
		t.Errorf("timeout 0s (none) became %+v", rule.Timeouts)
	}
	r := rule.Retry
	if r == nil || !slices.Equal(r.Codes, []int{503}) || !slices.Equal(r.GRPCCodes, []string{"UNAVAILABLE", "CANCELLED"}) || *r.Attempts != 2 || r.Backoff != 0 {
		t.Fatalf("retry %+v", r)
	}
	for _, s := range []string{"reset or timed out", "idempotent"} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings do not say %q:\n%s", s, w)
		}
	}
	for _, s := range []string{"previous_hosts", "host_selection", "max_stream_duration", "ignored (not supported)"} {
		if strings.Contains(w, s) {
			t.Errorf("warning about %q, which weir honours:\n%s", s, w)
		}
	}
}

func TestConvertTimeoutsAndRetry(t *testing.T) {
	rule, w := resilienceRoute(t, &routev3.RouteAction{
		Timeout: dur(3 * time.Second),
		RetryPolicy: &routev3.RetryPolicy{
			RetryOn:              "5xx,gateway-error,deadline-exceeded,retriable-status-codes,retriable-4xx",
			NumRetries:           wrapperspb.UInt32(20),
			PerTryTimeout:        dur(500 * time.Millisecond),
			RetriableStatusCodes: []uint32{409, 503},
			RetryBackOff:         &routev3.RetryPolicy_RetryBackOff{BaseInterval: dur(25 * time.Millisecond), MaxInterval: dur(time.Second)},
			RetryPriority:        &routev3.RetryPolicy_RetryPriority{Name: "envoy.retry_priorities.previous_priorities"},
		},
		IdleTimeout: dur(time.Minute),
	}, nil)
	if rule.Timeouts == nil || rule.Timeouts.Request != cluster.Duration(3*time.Second) || rule.Timeouts.BackendRequest != cluster.Duration(500*time.Millisecond) {
		t.Errorf("timeouts %+v", rule.Timeouts)
	}
	r := rule.Retry
	if r == nil || len(r.Codes) != 100 || r.Codes[0] != 500 || r.Codes[99] != 599 || !slices.Equal(r.GRPCCodes, []string{"DEADLINE_EXCEEDED"}) ||
		*r.Attempts != maxRetryAttempts || r.Backoff != cluster.Duration(25*time.Millisecond) {
		t.Fatalf("retry %+v", r)
	}
	for _, s := range []string{
		`retry_on "retriable-4xx" ignored`,
		"retriable_status_codes 409 ignored",
		"num_retries 20 lowered to 10",
		"no exponential growth",
		"retry_priority",
		"idle_timeout ignored",
	} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings do not say %q:\n%s", s, w)
		}
	}
	if strings.Contains(w, "reset or timed out") {
		t.Errorf("5xx covers resets, yet a warning says weir does more:\n%s", w)
	}
}

// No timeout is Envoy's 15 s; a per-try timeout longer than the route's is
// cut to it; a virtual host's policy applies to a route without one.
func TestConvertTimeoutDefaultsAndVirtualHostRetry(t *testing.T) {
	rule, w := resilienceRoute(t, &routev3.RouteAction{}, nil)
	if rule.Timeouts == nil || rule.Timeouts.Request != cluster.Duration(envoyDefaultRouteTimeout) || rule.Retry != nil {
		t.Errorf("no timeout set: %+v, retry %+v (want Envoy's 15s, no retry)", rule.Timeouts, rule.Retry)
	}
	if w != "" {
		t.Errorf("warnings for a plain route: %s", w)
	}
	rule, w = resilienceRoute(t, &routev3.RouteAction{Timeout: dur(time.Second)},
		&routev3.RetryPolicy{RetryOn: "reset,gateway-error", PerTryTimeout: dur(2 * time.Second)})
	if rule.Retry == nil || !slices.Equal(rule.Retry.Codes, []int{502, 503, 504}) || *rule.Retry.Attempts != 1 {
		t.Fatalf("virtual host retry %+v", rule.Retry)
	}
	if rule.Timeouts.BackendRequest != cluster.Duration(time.Second) || !strings.Contains(w, "virtual_hosts[0].retry_policy.per_try_timeout 2s lowered to the route timeout 1s") {
		t.Errorf("per-try timeout %v, warnings:\n%s", rule.Timeouts.BackendRequest, w)
	}
	// A route's own policy wins over the virtual host's; 0 retries is none.
	rule, _ = resilienceRoute(t, &routev3.RouteAction{RetryPolicy: &routev3.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(0)}},
		&routev3.RetryPolicy{RetryOn: "gateway-error"})
	if rule.Retry == nil || *rule.Retry.Attempts != 0 || len(rule.Retry.Codes) != 100 {
		t.Errorf("route policy over virtual host's: %+v", rule.Retry)
	}
}
