package route

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/proxy/cluster"
)

type req struct {
	method, host, path, query string
	headers                   map[string]string
}

func (r req) Method() []byte { return []byte(r.method) }
func (r req) Host() []byte   { return []byte(r.host) }
func (r req) Path() []byte   { return []byte(r.path) }
func (r req) Query() []byte  { return []byte(r.query) }
func (r req) Header(n string) ([]byte, bool) {
	v, ok := r.headers[n]
	return []byte(v), ok
}

func w(n uint32) *uint32 { return &n }

func l7Config(routes []HTTPRoute) Config {
	ep := func(a string) []cluster.Endpoint { return []cluster.Endpoint{{Addr: netip.MustParseAddrPort(a)}} }
	return Config{Services: []Service{
		{Name: "front", Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.1:80")}, Endpoints: ep("10.0.0.1:80"), Protocol: HTTP, HTTPRoutes: routes},
		{Name: "a", Endpoints: ep("10.0.0.2:80")},
		{Name: "b", Endpoints: ep("10.0.0.3:80")},
		{Name: "c", Endpoints: ep("10.0.0.4:80")},
	}}
}

func TestHTTPRoutePrecedence(t *testing.T) {
	routes := []HTTPRoute{{
		Name:      "r",
		Hostnames: []string{"shop.example.test", "*.api.test"},
		Rules: []HTTPRouteRule{
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Value: "/api"}}}, Backends: []BackendRef{{Service: "a"}}},
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Value: "/api/v2"}}}, Backends: []BackendRef{{Service: "b"}}},
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Type: PathExact, Value: "/api/v2/exact"}}}, Backends: []BackendRef{{Service: "c"}}},
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Value: "/api"}, Method: "post"}}, Backends: []BackendRef{{Service: "c"}}},
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Type: PathRegex, Value: "/img/[0-9]+"}}}, Backends: []BackendRef{{Service: "b"}}},
			{Matches: []HTTPRouteMatch{{Headers: []HeaderMatch{{Name: "X-Canary", Value: "yes"}}}}, Backends: []BackendRef{{Service: "c"}}},
			{Matches: []HTTPRouteMatch{{QueryParams: []QueryParamMatch{{Name: "v", Type: MatchRegex, Value: "2|3"}}}}, Backends: []BackendRef{{Service: "b"}}},
			{Backends: []BackendRef{{Service: "a"}}},
		},
	}}
	snap, err := Build(l7Config(routes), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP
	for _, tc := range []struct {
		r    req
		want string // service, or "" for no match
	}{
		{req{method: "GET", host: "shop.example.test", path: "/api"}, "a"},
		{req{method: "GET", host: "SHOP.example.test:8080", path: "/api/x"}, "a"},
		{req{method: "GET", host: "shop.example.test", path: "/apix"}, "a"}, // catch-all, not the /api prefix
		{req{method: "GET", host: "shop.example.test", path: "/api/v2/y"}, "b"},
		{req{method: "GET", host: "shop.example.test", path: "/api/v2/exact"}, "c"},
		{req{method: "POST", host: "shop.example.test", path: "/api/z"}, "c"},
		{req{method: "GET", host: "x.api.test", path: "/img/42"}, "b"},
		{req{method: "GET", host: "x.api.test", path: "/img/4a"}, "a"},
		{req{method: "GET", host: "x.api.test", path: "/", headers: map[string]string{"x-canary": "yes"}}, "c"},
		{req{method: "GET", host: "x.api.test", path: "/", query: "a=1&v=3"}, "b"},
		{req{method: "GET", host: "api.test", path: "/api"}, ""},
		{req{method: "GET", host: "other.test", path: "/api"}, ""},
	} {
		a := h.Match(tc.r)
		got := ""
		if a != nil {
			got = a.Backend().Name()
		}
		if got != tc.want {
			t.Errorf("%+v went to %q, want %q", tc.r, got, tc.want)
		}
	}
}

func TestHTTPRouteWeights(t *testing.T) {
	snap, err := Build(l7Config([]HTTPRoute{{Rules: []HTTPRouteRule{{Backends: []BackendRef{{Service: "a", Weight: w(90)}, {Service: "b", Weight: w(10)}, {Service: "c", Weight: w(0)}}}}}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	a := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP.Match(req{method: "GET", path: "/"})
	got := map[string]int{}
	for range 10000 {
		got[a.Backend().Name()]++
	}
	if got["a"] < 8700 || got["a"] > 9300 || got["c"] != 0 {
		t.Errorf("90/10/0 split over 10000 requests: %v", got)
	}
}

// An unresolved backend keeps its share, answered 500 (Backend nil); the
// rest still reach their cluster; a rule of only unresolved backends
// answers 500 every time.
func TestHTTPRouteUnresolvedBackendShare(t *testing.T) {
	snap, err := Build(l7Config([]HTTPRoute{{Rules: []HTTPRouteRule{
		{Matches: []HTTPRouteMatch{{Path: &PathMatch{Value: "/half"}}}, Backends: []BackendRef{{Service: "a", Weight: w(50)}, {Service: "gone", Weight: w(50), Unresolved: "BackendNotFound"}}},
		{Backends: []BackendRef{{Service: "gone", Unresolved: "BackendNotFound"}}},
	}}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP
	half := h.Match(req{method: "GET", path: "/half"})
	nils := 0
	for range 10000 {
		switch c := half.Backend(); {
		case c == nil:
			nils++
		case c.Name() != "a":
			t.Fatalf("went to %s", c.Name())
		}
	}
	if nils < 4700 || nils > 5300 {
		t.Errorf("50/50 with one unresolved backend: %d of 10000 got no backend (500), want about half", nils)
	}
	if c := h.Match(req{method: "GET", path: "/x"}).Backend(); c != nil {
		t.Errorf("a rule of only unresolved backends picked %s", c.Name())
	}
}

// CheckHTTPRoutes finds what Build would refuse, without services.
func TestCheckHTTPRoutes(t *testing.T) {
	ok := []HTTPRoute{{Rules: []HTTPRouteRule{{Backends: []BackendRef{{Service: "not-looked-up"}}}}}}
	if err := CheckHTTPRoutes(ok); err != nil {
		t.Errorf("a valid route refused: %v", err)
	}
	bad := []HTTPRoute{{Rules: []HTTPRouteRule{{Filters: []HTTPRouteFilter{{Type: FilterRequestHeaderModifier,
		RequestHeaderModifier: &HeaderModifier{Set: []Header{{Name: "Host", Value: "x"}}}}}}}}}
	if err := CheckHTTPRoutes(bad); err == nil || !strings.Contains(err.Error(), "rules[0].filters[0].requestHeaderModifier") {
		t.Errorf("a Host header modifier: %v", err)
	}
}

func TestHTTPRouteErrorsNameFields(t *testing.T) {
	_, err := Build(l7Config([]HTTPRoute{{Hostnames: []string{"a*.b"}, Rules: []HTTPRouteRule{
		{Matches: []HTTPRouteMatch{{Path: &PathMatch{Type: PathRegex, Value: "("}}}, Backends: []BackendRef{{Service: "nope"}}},
		{Filters: []HTTPRouteFilter{{Type: FilterURLRewrite, URLRewrite: &URLRewrite{Path: &PathModifier{Type: ReplacePrefixMatch, ReplacePrefixMatch: "/x"}}}}},
	}}}), nil)
	if err == nil {
		t.Fatal("bad routes accepted")
	}
	for _, want := range []string{"hostnames[0]", "rules[0].matches[0].path.value", `"nope" is not a service`, "rules[1].filters[0].urlRewrite.path"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s: %v", want, err)
		}
	}
}

func TestRewritePath(t *testing.T) {
	for _, tc := range []struct {
		p                  *PathModifier
		path, prefix, want string
	}{
		{&PathModifier{Type: ReplaceFullPath, ReplaceFullPath: "/new"}, "/old/x", "/old", "/new"},
		{&PathModifier{Type: ReplacePrefixMatch, ReplacePrefixMatch: "/v2"}, "/v1/users", "/v1", "/v2/users"},
		{&PathModifier{Type: ReplacePrefixMatch, ReplacePrefixMatch: "/"}, "/v1/users", "/v1/", "/users"},
		{&PathModifier{Type: ReplacePrefixMatch, ReplacePrefixMatch: "/"}, "/v1", "/v1", "/"},
	} {
		if got := RewritePath(tc.p, tc.path, tc.prefix); got != tc.want {
			t.Errorf("RewritePath(%+v, %q, %q) = %q, want %q", tc.p, tc.path, tc.prefix, got, tc.want)
		}
	}
}

func TestTLSRouteBySNI(t *testing.T) {
	cfg := l7Config(nil)
	cfg.Services[0].Protocol = TLS
	cfg.Services[0].TLSRoutes = []TLSRoute{
		{Hostnames: []string{"*.example.test"}, Backends: []BackendRef{{Service: "a"}}},
		{Hostnames: []string{"pay.example.test"}, Backends: []BackendRef{{Service: "b"}}},
		{Hostnames: []string{"*.deep.example.test"}, Backends: []BackendRef{{Service: "c"}}},
	}
	snap, err := Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tr := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).TLS
	for sni, want := range map[string]string{"pay.example.test": "b", "shop.example.test": "a", "x.deep.example.test": "c", "example.test": "", "other.test": ""} {
		got := ""
		if a := tr.Match(sni); a != nil {
			got = a.Backend().Name()
		}
		if got != want {
			t.Errorf("SNI %s went to %q, want %q", sni, got, want)
		}
	}
}

func TestHTTPRouteHostnameFirst(t *testing.T) {
	snap, err := Build(l7Config([]HTTPRoute{
		{Name: "any", Rules: []HTTPRouteRule{
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Type: PathExact, Value: "/b/x"}}}, Backends: []BackendRef{{Service: "b"}}},
			{Backends: []BackendRef{{Service: "c"}}},
		}},
		{Name: "wild", Hostnames: []string{"*.test"}, Rules: []HTTPRouteRule{{Backends: []BackendRef{{Service: "c"}}}}},
		{Name: "host", Hostnames: []string{"a.test"}, Rules: []HTTPRouteRule{
			{Matches: []HTTPRouteMatch{{Path: &PathMatch{Value: "/only"}}}, Backends: []BackendRef{{Service: "a"}}},
		}},
	}), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP
	for _, tc := range []struct{ host, path, want string }{
		{"A.TEST", "/only/1", "a"},  // exact hostname beats the more specific path elsewhere
		{"a.test", "/b/x", ""},      // only the a.test group is tried: 404
		{"x.test", "/b/x", "c"},     // the wildcard group
		{"other.io", "/b/x", "b"},   // no hostname route names it: the catch-all group
		{"other.io:8080", "/", "c"}, // port stripped
	} {
		got := ""
		if a := h.Match(req{method: "GET", host: tc.host, path: tc.path}); a != nil {
			got = a.Backend().Name()
		}
		if got != tc.want {
			t.Errorf("%s%s went to %q, want %q", tc.host, tc.path, got, tc.want)
		}
	}
}

func TestHeaderModifierRefusesProtectedAndInjection(t *testing.T) {
	_, err := Build(l7Config([]HTTPRoute{{Rules: []HTTPRouteRule{{
		Filters: []HTTPRouteFilter{{Type: FilterRequestHeaderModifier, RequestHeaderModifier: &HeaderModifier{
			Set:    []Header{{Name: "Content-Length", Value: "1"}, {Name: "x-ok", Value: "a\r\nX-Evil: 1"}},
			Add:    []Header{{Name: "bad name", Value: "v"}},
			Remove: []string{"Transfer-Encoding"},
		}}},
		Backends: []BackendRef{{Service: "a"}},
	}}}}), nil)
	if err == nil {
		t.Fatal("protected headers and CRLF values accepted")
	}
	for _, want := range []string{`set[0] name "Content-Length"`, "set[1] value holds CR, LF or NUL", `add[0] name "bad name"`, `remove[0] name "Transfer-Encoding"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %s: %v", want, err)
		}
	}
}

func TestHTTPRouteResilience(t *testing.T) {
	n := 2
	snap, err := Build(l7Config([]HTTPRoute{{Rules: []HTTPRouteRule{
		{Matches: []HTTPRouteMatch{{Path: &PathMatch{Value: "/r"}}}, Backends: []BackendRef{{Service: "a"}},
			Timeouts: &HTTPRouteTimeouts{Request: cluster.Duration(2e9), BackendRequest: cluster.Duration(5e8)},
			Retry:    &HTTPRouteRetry{Codes: []int{503}, GRPCCodes: []string{"unavailable", "4"}, Attempts: &n, Backoff: cluster.Duration(1e7)}},
		{Backends: []BackendRef{{Service: "b"}}},
	}}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	h := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).HTTP
	a := h.Match(req{method: "GET", path: "/r"})
	if a.Timeout != 2e9 || a.TryTimeout != 5e8 || a.Retry == nil || a.Retry.Attempts != 2 || a.Retry.Backoff != 1e7 {
		t.Fatalf("action %+v", a)
	}
	if !a.Retry.RetryStatus(503) || a.Retry.RetryStatus(500) || !a.Retry.RetryGRPC(14) || !a.Retry.RetryGRPC(4) || a.Retry.RetryGRPC(13) {
		t.Fatalf("retry policy %+v", a.Retry)
	}
	// The zero value: no timeout, no policy (and the nil policy answers no).
	d := h.Match(req{method: "GET", path: "/x"})
	if d.Timeout != 0 || d.TryTimeout != 0 || d.Retry != nil || d.Retry.RetryStatus(503) || d.Retry.RetryGRPC(14) {
		t.Fatalf("default action %+v", d)
	}

	neg := -1
	_, err = Build(l7Config([]HTTPRoute{{Rules: []HTTPRouteRule{{Backends: []BackendRef{{Service: "a"}},
		Timeouts: &HTTPRouteTimeouts{Request: cluster.Duration(1e9), BackendRequest: cluster.Duration(2e9)},
		Retry:    &HTTPRouteRetry{Codes: []int{404}, GRPCCodes: []string{"SLOW"}, Attempts: &neg, Backoff: cluster.Duration(-1)}}}}}), nil)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"rules[0].timeouts.backendRequest 2s is longer than request 1s", "rules[0].retry.codes[0] 404",
		`rules[0].retry.grpcCodes[0] "SLOW"`, "rules[0].retry.attempts -1", "rules[0].retry.backoff -1ns"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}
