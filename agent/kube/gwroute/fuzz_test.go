package gwroute

import (
	"encoding/json"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// FuzzTranslateKeepsBuildWorking feeds arbitrary HTTPRoute and GRPCRoute
// specs (as JSON, as a user could write them past the CRD's validation)
// through translation and builds the result: whatever a route holds, the
// snapshot must build, since one user's bad route may only refuse itself.
func FuzzTranslateKeepsBuildWorking(f *testing.F) {
	f.Add([]byte(`{"rules":[{"matches":[{"path":{"type":"PathPrefix","value":"/api"}}],"backendRefs":[{"name":"v1","port":80,"weight":80},{"name":"v2","port":80,"weight":20}]}]}`), false)
	f.Add([]byte(`{"rules":[{"filters":[{"type":"RequestHeaderModifier","requestHeaderModifier":{"set":[{"name":"Host","value":"x"}]}}],"backendRefs":[{"name":"gone","port":80}]}]}`), false)
	f.Add([]byte(`{"rules":[{"matches":[{"path":{"type":"RegularExpression","value":"("}}],"filters":[{"type":"URLRewrite","urlRewrite":{"path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/x"}}}]}]}`), false)
	f.Add([]byte(`{"rules":[{"filters":[{"type":"RequestRedirect","requestRedirect":{"statusCode":307}}],"backendRefs":[{"name":"v1","port":80,"weight":2000000}]}]}`), false)
	f.Add([]byte(`{"rules":[{"matches":[{"method":{"type":"RegularExpression","service":"a(","method":"B"}}],"backendRefs":[{"name":"v1","port":80}]}]}`), true)
	f.Add([]byte(`{"rules":[{"timeouts":{"request":"1s","backendRequest":"2s"},"retry":{"codes":[404],"attempts":20}}]}`), false)
	f.Add([]byte(`{"rules":[{"filters":[{"type":"RequestMirror","requestMirror":{"backendRef":{"name":"v2","port":80},"fraction":{"numerator":1,"denominator":3}}},{"type":"RequestMirror","requestMirror":{"backendRef":{"name":"gone","port":80},"percent":120}}],"backendRefs":[{"name":"v1","port":80}]}]}`), false)
	f.Add([]byte(`{"rules":[{"filters":[{"type":"RequestMirror","requestMirror":{"backendRef":{"name":"v2","port":80}}},{"type":"RequestMirror"}],"backendRefs":[{"name":"v1","port":80}]}]}`), true)
	svcs := map[string]*corev1.Service{
		"ns/front": {Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}},
		"ns/v1":    {Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}},
		"ns/v2":    {Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}}},
	}
	for k, s := range svcs {
		s.Namespace, s.Name = "ns", k[len("ns/"):]
	}
	svcOf := func(ns, name string) *corev1.Service { return svcs[ns+"/"+name] }
	base := []route.Service{
		{Name: "ns/front:80", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:80")}, Protocol: route.HTTP},
		{Name: "ns/v1:80", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.2:80")}, Endpoints: []cluster.Endpoint{{Addr: netip.MustParseAddrPort("10.0.0.2:8080")}}},
		{Name: "ns/v2:80", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.3:80")}},
	}
	known := map[string]route.Protocol{}
	for _, s := range base {
		known[s.Name] = s.Protocol
	}
	parents := []gwv1.ParentReference{serviceParentRef("front", 0)}
	f.Fuzz(func(t *testing.T, spec []byte, grpc bool) {
		var r *Route
		if grpc {
			var s gwv1.GRPCRouteSpec
			if json.Unmarshal(spec, &s) != nil {
				return
			}
			s.ParentRefs = parents
			r = FromGRPCRoute(&gwv1.GRPCRoute{Spec: s})
		} else {
			var s gwv1.HTTPRouteSpec
			if json.Unmarshal(spec, &s) != nil {
				return
			}
			s.ParentRefs = parents
			r = FromHTTPRoute(&gwv1.HTTPRoute{Spec: s})
		}
		r.namespace = "ns"
		tr := Translate([]*Route{r}, svcOf, known)
		cfg := route.Config{Services: append([]route.Service(nil), base...)}
		cfg.Services[0].HTTPRoutes = tr.Attach["ns/front:80"]
		if _, err := route.Build(cfg, nil); err != nil {
			t.Fatalf("a translated route broke the snapshot (unsupported=%q): %v", r.unsupported, err)
		}
		if len(tr.Status) != 1 {
			t.Fatalf("status entries %v, want one for the Service parent", tr.Status)
		}
	})
}
