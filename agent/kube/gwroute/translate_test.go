package gwroute

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weir-mesh/weir/proxy/route"
)

func ptr[T any](v T) *T { return &v }

func backend(name string, port, weight int32) gwv1.HTTPBackendRef {
	return gwv1.HTTPBackendRef{BackendRef: gwv1.BackendRef{
		BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: ptr(gwv1.PortNumber(port))},
		Weight:                 ptr(weight),
	}}
}

// serviceParentRef is a GAMMA parentRef, optionally to one port.
func serviceParentRef(name string, port int32) gwv1.ParentReference {
	p := gwv1.ParentReference{Group: ptr(gwv1.Group("")), Kind: ptr(gwv1.Kind("Service")), Name: gwv1.ObjectName(name)}
	if port != 0 {
		p.Port = ptr(gwv1.PortNumber(port))
	}
	return p
}

func testService(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Ports: ports}}
}

func condition(ps ParentStatus, typ gwv1.RouteConditionType) metav1.Condition {
	for _, c := range ps.Conditions {
		if c.Type == string(typ) {
			return c
		}
	}
	return metav1.Condition{}
}

// Translation alone: matches, filters, weights and timeouts land in the
// model; a missing backend keeps its share as Unresolved with
// ResolvedRefs=False; refusals name what to change.
func TestTranslateHTTPRoute(t *testing.T) {
	svcs := map[string]*corev1.Service{
		"ns/front": testService("ns", "front", corev1.ServicePort{Name: "http", Port: 80}, corev1.ServicePort{Name: "db", Port: 5432}),
		"ns/v1":    testService("ns", "v1", corev1.ServicePort{Port: 8080}),
		"ns/v2":    testService("ns", "v2", corev1.ServicePort{Port: 8080}),
	}
	svcOf := func(ns, name string) *corev1.Service { return svcs[ns+"/"+name] }
	known := map[string]route.Protocol{"ns/front:80": route.HTTP, "ns/front:5432": route.TCP, "ns/v1:8080": route.Auto, "ns/v2:8080": route.Auto}

	hr := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "split", Generation: 3}}
	hr.Spec.ParentRefs = []gwv1.ParentReference{serviceParentRef("front", 0), {Name: "some-gateway"}}
	hr.Spec.Rules = []gwv1.HTTPRouteRule{
		{
			Matches: []gwv1.HTTPRouteMatch{{Headers: []gwv1.HTTPHeaderMatch{{Name: "x-user", Value: "canary"}}}},
			Filters: []gwv1.HTTPRouteFilter{{Type: gwv1.HTTPRouteFilterRequestHeaderModifier,
				RequestHeaderModifier: &gwv1.HTTPHeaderFilter{Set: []gwv1.HTTPHeader{{Name: "x-via", Value: "weir"}}}}},
			BackendRefs: []gwv1.HTTPBackendRef{backend("v2", 8080, 1)},
			Timeouts:    &gwv1.HTTPRouteTimeouts{Request: ptr(gwv1.Duration("2s"))},
		},
		{BackendRefs: []gwv1.HTTPBackendRef{backend("v1", 8080, 80), backend("v2", 8080, 20), backend("gone", 8080, 5)}},
	}
	tr := Translate([]*Route{FromHTTPRoute(hr)}, svcOf, known)

	got := tr.Attach["ns/front:80"]
	if len(got) != 1 || len(tr.Attach) != 1 {
		t.Fatalf("attached %v, want one route on ns/front:80 only (5432 declares tcp)", tr.Attach)
	}
	rules := got[0].Rules
	if h := rules[0].Matches[0].Headers[0]; h.Name != "x-user" || h.Value != "canary" {
		t.Errorf("header match %+v", h)
	}
	if f := rules[0].Filters[0]; f.RequestHeaderModifier == nil || f.RequestHeaderModifier.Set[0].Name != "x-via" {
		t.Errorf("filter %+v", f)
	}
	if rules[0].Timeouts.Request.D() != 2*time.Second {
		t.Errorf("timeout %v", rules[0].Timeouts.Request)
	}
	b := rules[1].Backends
	if b[0].Service != "ns/v1:8080" || *b[0].Weight != 80 || b[1].Service != "ns/v2:8080" || b[2].Unresolved != string(gwv1.RouteReasonBackendNotFound) {
		t.Errorf("backends %+v", b)
	}
	st := tr.Status["HTTPRoute/ns/split"]
	if len(st) != 1 {
		t.Fatalf("status entries %+v, want one (the Gateway parent is not ours)", st)
	}
	if c := condition(st[0], gwv1.RouteConditionAccepted); c.Status != metav1.ConditionTrue || c.ObservedGeneration != 3 {
		t.Errorf("Accepted %+v", c)
	}
	if c := condition(st[0], gwv1.RouteConditionResolvedRefs); c.Status != metav1.ConditionFalse || c.Reason != "BackendNotFound" || !strings.Contains(c.Message, "ns/gone does not exist") {
		t.Errorf("ResolvedRefs %+v", c)
	}

	// Mirrors are accepted, their backends resolved like backendRefs (a
	// missing one is unresolved and named in ResolvedRefs); refusals: a
	// cross-namespace backend, a missing parent.
	mirror := hr.DeepCopy()
	mirror.Name = "mirror"
	mirror.Spec.Rules[1].Filters = []gwv1.HTTPRouteFilter{{Type: gwv1.HTTPRouteFilterRequestMirror,
		RequestMirror: &gwv1.HTTPRequestMirrorFilter{BackendRef: backend("v2", 8080, 1).BackendObjectReference,
			Fraction: &gwv1.Fraction{Numerator: 1, Denominator: ptr(int32(4))}}}}
	mirror.Spec.Rules[0].Filters = append(mirror.Spec.Rules[0].Filters, gwv1.HTTPRouteFilter{Type: gwv1.HTTPRouteFilterRequestMirror,
		RequestMirror: &gwv1.HTTPRequestMirrorFilter{BackendRef: backend("ghost", 8080, 1).BackendObjectReference, Percent: ptr(int32(50))}})
	mirror.Spec.Rules[1].BackendRefs = mirror.Spec.Rules[1].BackendRefs[:2]
	other := hr.DeepCopy()
	other.Name = "other"
	other.Spec.Rules[1].BackendRefs[0].Namespace = ptr(gwv1.Namespace("elsewhere"))
	other.Spec.ParentRefs = append(other.Spec.ParentRefs, serviceParentRef("nope", 0))
	tr = Translate([]*Route{FromHTTPRoute(mirror), FromHTTPRoute(other)}, svcOf, known)
	ms := tr.Status["HTTPRoute/ns/mirror"][0]
	if c := condition(ms, gwv1.RouteConditionAccepted); c.Status != metav1.ConditionTrue {
		t.Errorf("mirror: Accepted %+v", c)
	}
	if c := condition(ms, gwv1.RouteConditionResolvedRefs); c.Status != metav1.ConditionFalse || c.Reason != "BackendNotFound" || !strings.Contains(c.Message, "ns/ghost does not exist") {
		t.Errorf("mirror: ResolvedRefs %+v, want the missing mirror backend named", c)
	}
	found := false
	for _, rt := range tr.Attach["ns/front:80"] {
		if rt.Name != "httproute/ns/mirror" {
			continue
		}
		found = true
		m0, m1 := rt.Rules[0].Filters[1].RequestMirror, rt.Rules[1].Filters[0].RequestMirror
		if m0 == nil || m0.BackendRef.Unresolved != "BackendNotFound" || *m0.Percent != 50 {
			t.Errorf("mirror to ghost: %+v, want unresolved, 50 %%", m0)
		}
		if m1 == nil || m1.BackendRef.Service != "ns/v2:8080" || m1.Fraction.Numerator != 1 || *m1.Fraction.Denominator != 4 {
			t.Errorf("mirror to v2: %+v, want ns/v2:8080 at 1/4", m1)
		}
		if b := rt.Rules[1].Backends; len(b) != 2 || b[0].Service != "ns/v1:8080" || b[1].Service != "ns/v2:8080" {
			t.Errorf("mirror route backends %+v: resolution mixed mirrors and backendRefs up", b)
		}
	}
	if !found {
		t.Error("the mirror route is not attached to ns/front:80")
	}
	o := tr.Status["HTTPRoute/ns/other"]
	if c := condition(o[0], gwv1.RouteConditionResolvedRefs); c.Reason != "RefNotPermitted" {
		t.Errorf("cross-namespace backend: ResolvedRefs %+v", c)
	}
	if c := condition(o[1], gwv1.RouteConditionAccepted); c.Reason != "NoMatchingParent" || !strings.Contains(c.Message, "ns/nope does not exist") {
		t.Errorf("missing parent: Accepted %+v", c)
	}
	if len(tr.Attach["ns/front:80"]) != 2 {
		t.Errorf("front:80 got %d routes, want the two accepted ones", len(tr.Attach["ns/front:80"]))
	}
	// The header modifier the engine refuses is refused here, not in Build.
	bad := hr.DeepCopy()
	bad.Spec.Rules[0].Filters[0].RequestHeaderModifier.Set[0].Name = "Host"
	tr = Translate([]*Route{FromHTTPRoute(bad)}, svcOf, known)
	if c := condition(tr.Status["HTTPRoute/ns/split"][0], gwv1.RouteConditionAccepted); c.Reason != "UnsupportedValue" || !strings.Contains(c.Message, "spec.rules[0].filters[0]") {
		t.Errorf("Host modifier: Accepted %+v", c)
	}
}

// A GRPCRoute's method matches become paths /service/method.
func TestTranslateGRPCMethodMatch(t *testing.T) {
	for _, tc := range []struct {
		typ                gwv1.GRPCMethodMatchType
		svc, method        string
		wantType, wantPath string
	}{
		{gwv1.GRPCMethodMatchExact, "pkg.Echo", "Say", route.PathExact, "/pkg.Echo/Say"},
		{gwv1.GRPCMethodMatchExact, "pkg.Echo", "", route.PathPrefix, "/pkg.Echo"},
		{gwv1.GRPCMethodMatchExact, "", "Say", route.PathRegex, `/(?:[^/]+)/(?:Say)`},
		{gwv1.GRPCMethodMatchExact, "a.B", "", route.PathPrefix, "/a.B"},
		{gwv1.GRPCMethodMatchRegularExpression, `pkg\..*`, "S.*", route.PathRegex, `/(?:pkg\..*)/(?:S.*)`},
	} {
		m := gwv1.GRPCRouteMatch{Method: &gwv1.GRPCMethodMatch{Type: ptr(tc.typ)}}
		if tc.svc != "" {
			m.Method.Service = ptr(tc.svc)
		}
		if tc.method != "" {
			m.Method.Method = ptr(tc.method)
		}
		got := grpcMatch(m)
		if got.Path == nil || got.Path.Type != tc.wantType || got.Path.Value != tc.wantPath {
			t.Errorf("%+v: path %+v, want %s %s", tc, got.Path, tc.wantType, tc.wantPath)
		}
	}
}
