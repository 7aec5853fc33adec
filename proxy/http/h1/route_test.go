package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

func weight(n uint32) *uint32 { return &n }

// counter reads a counter of reg by name and label values.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
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
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

func TestLocalReplies(t *testing.T) {
	b := newBackend(t, echoPath)
	routes := []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/ok"}}}, Backends: []route.BackendRef{{Service: "svc"}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/nobackend"}}}, Backends: []route.BackendRef{{Service: "svc", Weight: weight(0)}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/moved"}}}, Filters: []route.HTTPRouteFilter{{
			Type: route.FilterRequestRedirect, RequestRedirect: &route.Redirect{Hostname: "new.test", StatusCode: 301},
		}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/old"}}}, Filters: []route.HTTPRouteFilter{{
			Type: route.FilterRequestRedirect, RequestRedirect: &route.Redirect{
				Scheme: "https", Path: &route.PathModifier{Type: route.ReplacePrefixMatch, ReplacePrefixMatch: "/new"},
			},
		}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/empty"}}}, Backends: []route.BackendRef{{Service: "empty"}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/refused"}}}, Backends: []route.BackendRef{{Service: "refused"}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/garbage"}}}, Backends: []route.BackendRef{{Service: "garbage"}}},
		{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/silent"}}}, Backends: []route.BackendRef{{Service: "silent"}}},
	}}}
	// An address nothing listens on.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	refused := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	garbage, _ := rawServer(t, func(c net.Conn) {
		readHeadRaw(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!")
	})
	silent, _ := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	ep := func(a netip.AddrPort) []cluster.Endpoint { return []cluster.Endpoint{{Addr: a}} }
	up := upstreamFor(t, []netip.AddrPort{b.addr}, routes,
		route.Service{Name: "empty", Endpoints: []cluster.Endpoint{{Addr: netip.MustParseAddrPort("127.0.0.1:9"), Health: cluster.Unhealthy}}},
		route.Service{Name: "refused", Endpoints: ep(refused)},
		route.Service{Name: "garbage", Endpoints: ep(garbage)},
		route.Service{Name: "silent", Endpoints: ep(silent)},
	)
	reg := prometheus.NewRegistry()
	up.Metrics = l7.NewMetrics(reg)
	p := startProxy(t, up, Options{ResponseHeaderTimeout: 300 * time.Millisecond})
	c := dialClient(t, p.addr)
	for _, tc := range []struct {
		path     string
		status   int
		body     string
		location string
		reason   string
	}{
		{"/ok", 200, "path=/ok", "", ""},
		{"/nowhere", 404, "no_route\n", "", l7.ReasonNoRoute},
		{"/nobackend", 500, "no_backend\n", "", l7.ReasonNoBackend},
		{"/moved/x?q=1", 301, "", "http://new.test/moved/x?q=1", l7.ReasonRedirect},
		{"/old/page", 302, "", "https://svc.test/new/page", l7.ReasonRedirect},
		{"/empty", 503, "no_endpoint\n", "", l7.ReasonNoEndpoint},
		{"/refused", 502, "upstream_error\n", "", l7.ReasonUpstreamFail},
		{"/garbage", 502, "upstream_error\n", "", l7.ReasonUpstreamFail},
		{"/silent", 504, "upstream_timeout\n", "", l7.ReasonTimeout},
	} {
		resp, body := c.do(get(tc.path))
		if resp.StatusCode != tc.status || body != tc.body || resp.Header.Get("Location") != tc.location {
			t.Errorf("%s: %d %q location %q, want %d %q %q", tc.path, resp.StatusCode, body, resp.Header.Get("Location"), tc.status, tc.body, tc.location)
		}
		if resp.Close {
			t.Errorf("%s: a local reply closed the connection", tc.path)
		}
		if tc.reason != "" {
			if n := counter(t, reg, "weir_http_local_replies_total", map[string]string{"code": itoa(tc.status), "reason": tc.reason}); n < 1 {
				t.Errorf("%s: local reply not counted", tc.path)
			}
		}
	}
	if n := counter(t, reg, "weir_http_requests_total", map[string]string{"protocol": "http1", "code": "5xx"}); n != 5 {
		t.Errorf("5xx requests counted %v, want 5", n)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestRetriesAnotherEndpointOnConnectFailure(t *testing.T) {
	b := newBackend(t, echoPath)
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	up := upstreamFor(t, []netip.AddrPort{dead, b.addr}, nil)
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	for range 4 {
		if resp, _ := c.do(get("/")); resp.StatusCode != 200 {
			t.Fatalf("got %d, want 200 from the live endpoint", resp.StatusCode)
		}
	}
	if s := up.Route.Cluster.Stats(); s.Retries == 0 {
		t.Errorf("no retry counted")
	}
}

func TestStalePooledConnection(t *testing.T) {
	b := newBackend(t, echoPath)
	up := upstreamFor(t, []netip.AddrPort{b.addr}, nil)
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	c.do(get("/1"))
	// closeIdle has the server close its idle connection, and waits until
	// it did: on a loaded machine the connection may not be idle yet when
	// first asked.
	closeIdle := func() {
		t.Helper()
		before := b.closed.Load()
		for end := time.Now().Add(10 * time.Second); b.closed.Load() == before; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(end) {
				t.Fatal("the server did not close its idle connection within 10s")
			}
			b.srv.SetKeepAlivesEnabled(false) // closes idle connections
		}
		b.srv.SetKeepAlivesEnabled(true)
	}
	// A POST cannot be sent twice: the pool peeks and finds the
	// connection closed before sending anything on it.
	closeIdle()
	resp, body := c.do("POST /2 HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 2\r\n\r\nhi")
	if resp.StatusCode != 200 || body != "path=/2" {
		t.Fatalf("POST after the server closed the pooled connection: %d %q", resp.StatusCode, body)
	}
	// A GET skips the peek; the dead connection fails before any response
	// byte and the GET goes again on a fresh one.
	closeIdle()
	resp, body = c.do(get("/3"))
	if resp.StatusCode != 200 || body != "path=/3" {
		t.Fatalf("GET after the server closed the pooled connection: %d %q", resp.StatusCode, body)
	}
	if n := b.conns.Load(); n != 3 {
		t.Errorf("%d upstream connections, want 3", n)
	}
	if n := b.requests.Load(); n != 3 {
		t.Errorf("upstream saw %d requests, want 3", n)
	}
}

// oneShotServer answers the first request on each connection, then closes
// the connection when the next request arrives without answering: a server
// that timed out the idle connection just as we reused it.
func oneShotServer(t *testing.T) (netip.AddrPort, func() int64) {
	addr, conns := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := readHeadRaw(br); err != nil {
			return
		}
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		br.ReadByte()
		c.(*net.TCPConn).SetLinger(0)
	})
	return addr, conns.Load
}

func TestRetriesIdempotentOnDeadReusedConnection(t *testing.T) {
	addr, conns := oneShotServer(t)
	// One endpoint: the retry must go to a fresh connection to it, not
	// fail for want of another endpoint.
	up := upstreamFor(t, []netip.AddrPort{addr}, nil)
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	for i := range 3 {
		if resp, body := c.do(get("/")); resp.StatusCode != 200 || body != "ok" {
			t.Fatalf("GET %d: %d %q", i, resp.StatusCode, body)
		}
	}
	if n := conns(); n != 3 {
		t.Errorf("%d upstream connections, want 3 (each reuse failed and was retried fresh)", n)
	}
	// A POST that reached the upstream is not sent twice.
	resp, _ := c.do("POST / HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 2\r\n\r\nhi")
	if resp.StatusCode != 502 {
		t.Errorf("POST on a connection that died after the request: %d, want 502", resp.StatusCode)
	}
}

func TestFilters(t *testing.T) {
	var seen *http.Request
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		seen = r.Clone(r.Context())
		w.Header().Set("X-Resp-Set", "old")
		w.Header().Set("X-Resp-Remove", "1")
		w.Header().Set("X-Resp-Keep", "1")
		io.WriteString(w, "ok")
	})
	routes := []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{{
		Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/api"}}},
		Filters: []route.HTTPRouteFilter{
			{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: &route.HeaderModifier{
				// Framing and hop fields and CR/LF values are refused by
				// route.Build (TestHeaderModifierRefusesProtectedAndInjection).
				Set:    []route.Header{{Name: "X-Set", Value: "new"}},
				Add:    []route.Header{{Name: "X-Add", Value: "2"}, {Name: "X-Gone", Value: "no"}},
				Remove: []string{"x-remove", "X-Gone"},
			}},
			{Type: route.FilterResponseHeaderModifier, ResponseHeaderModifier: &route.HeaderModifier{
				Set:    []route.Header{{Name: "X-Resp-Set", Value: "new"}},
				Add:    []route.Header{{Name: "X-Resp-Add", Value: "1"}},
				Remove: []string{"X-Resp-Remove"},
			}},
			{Type: route.FilterURLRewrite, URLRewrite: &route.URLRewrite{
				Hostname: "internal.test",
				Path:     &route.PathModifier{Type: route.ReplacePrefixMatch, ReplacePrefixMatch: "/v2"},
			}},
		},
		Backends: []route.BackendRef{{Service: "svc"}},
	}}}}
	up := upstreamFor(t, []netip.AddrPort{b.addr}, routes)
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	resp, body := c.do("POST /api/users?q=1 HTTP/1.1\r\nHost: svc.test\r\nX-Set: old\r\nX-Add: 1\r\nX-Remove: 1\r\nX-Evil: 1\r\nContent-Length: 2\r\n\r\nhi")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if seen.Host != "internal.test" || seen.URL.RequestURI() != "/v2/users?q=1" {
		t.Errorf("rewrite: host %q uri %q", seen.Host, seen.URL.RequestURI())
	}
	h := seen.Header
	if h.Get("X-Set") != "new" || len(h.Values("X-Set")) != 1 {
		t.Errorf("set: %v", h.Values("X-Set"))
	}
	if got := h.Values("X-Add"); len(got) != 2 || got[0] != "1" || got[1] != "2" {
		t.Errorf("add: %v", got)
	}
	if h.Get("X-Remove") != "" || h.Get("X-Gone") != "" || h.Get("Injected") != "" || h.Get("X-Evil") != "1" {
		t.Errorf("remove or injection: %v", h)
	}
	if seen.ContentLength != 2 {
		t.Errorf("a filter changed Content-Length: %d %v %v", seen.ContentLength, seen.Header, seen.TransferEncoding)
	}
	if resp.Header.Get("X-Resp-Set") != "new" || resp.Header.Get("X-Resp-Add") != "1" || resp.Header.Get("X-Resp-Remove") != "" || resp.Header.Get("X-Resp-Keep") != "1" {
		t.Errorf("response filters: %v", resp.Header)
	}
}

func TestAbsoluteFormTarget(t *testing.T) {
	var host, uri string
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { host, uri = r.Host, r.RequestURI })
	routes := []route.HTTPRoute{{Hostnames: []string{"abs.test"}, Rules: []route.HTTPRouteRule{{Backends: []route.BackendRef{{Service: "svc"}}}}}}
	p := startProxy(t, upstreamFor(t, []netip.AddrPort{b.addr}, routes), Options{})
	c := dialClient(t, p.addr)
	resp, _ := c.do("GET http://abs.test:8080/p?x=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
	if resp.StatusCode != 200 || host != "abs.test:8080" || uri != "/p?x=1" {
		t.Errorf("%d host %q uri %q: routed by the target's authority and sent in origin form", resp.StatusCode, host, uri)
	}
}
