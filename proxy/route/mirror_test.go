package route

import (
	"net/netip"
	"strings"
	"testing"
)

func TestMirrorCompile(t *testing.T) {
	i32 := func(v int32) *int32 { return &v }
	rule := func(ms ...*RequestMirror) []HTTPRoute {
		var fs []HTTPRouteFilter
		for _, m := range ms {
			fs = append(fs, HTTPRouteFilter{Type: FilterRequestMirror, RequestMirror: m})
		}
		return []HTTPRoute{{Name: "r", Rules: []HTTPRouteRule{{Filters: fs, Backends: []BackendRef{{Service: "a"}}}}}}
	}
	for _, tc := range []struct {
		name   string
		routes []HTTPRoute
		err    string
	}{
		{"missing", rule(nil), "requestMirror is missing"},
		{"unknown service", rule(&RequestMirror{BackendRef: BackendRef{Service: "nope"}}), `requestMirror.backendRef.service "nope" is not a service`},
		{"percent", rule(&RequestMirror{BackendRef: BackendRef{Service: "b"}, Percent: i32(101)}), "requestMirror.percent 101 is not in 0-100"},
		{"both", rule(&RequestMirror{BackendRef: BackendRef{Service: "b"}, Percent: i32(1), Fraction: &Fraction{Numerator: 1}}), "has both percent and fraction"},
		{"fraction", rule(&RequestMirror{BackendRef: BackendRef{Service: "b"}, Fraction: &Fraction{Numerator: 3, Denominator: i32(2)}}), "fraction 3/2 is not a share"},
		{"zero denominator", rule(&RequestMirror{BackendRef: BackendRef{Service: "b"}, Fraction: &Fraction{Numerator: 0, Denominator: i32(0)}}), "fraction 0/0 is not a share"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Build(l7Config(tc.routes), nil)
			if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), ".routes[0].rules[0].filters[0]") {
				t.Fatalf("err %v, want one naming .routes[0].rules[0].filters[0] and %q", err, tc.err)
			}
		})
	}

	snap, err := Build(l7Config(rule(
		&RequestMirror{BackendRef: BackendRef{Service: "b"}},
		&RequestMirror{BackendRef: BackendRef{Service: "c"}, Fraction: &Fraction{Numerator: 1, Denominator: i32(4)}},
		&RequestMirror{BackendRef: BackendRef{Service: "gone", Unresolved: "BackendNotFound"}},
		&RequestMirror{BackendRef: BackendRef{Service: "c"}, Percent: i32(0)},
	)), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP.Match(req{method: "GET", path: "/"})
	if len(a.Mirrors) != 3 || a.Mirrors[0].Service != "b" || a.Mirrors[1].Service != "c" || a.Mirrors[0].Cluster == nil {
		t.Fatalf("mirrors %+v: want b, c and c (the unresolved one left out)", a.Mirrors)
	}
	all, quarter, none := 0, 0, 0
	for range 40_000 {
		if a.Mirrors[0].Sampled() {
			all++
		}
		if a.Mirrors[1].Sampled() {
			quarter++
		}
		if a.Mirrors[2].Sampled() {
			none++
		}
	}
	// 1/4 of 40 000: sigma ~87, so 1 000 either side is over 11 sigma.
	if all != 40_000 || none != 0 || quarter < 9_000 || quarter > 11_000 {
		t.Fatalf("sampled %d (100 %%), %d (1/4), %d (0 %%) of 40000", all, quarter, none)
	}
}
