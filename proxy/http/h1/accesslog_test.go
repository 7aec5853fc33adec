package h1

import (
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/http/internal/accesslogtest"
	"github.com/weir-mesh/weir/proxy/route"
)

func TestAccessLog(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(503)
			return
		}
		w.Header().Set("Content-Length", "5")
		w.Write([]byte("hello"))
	})
	routes := []route.HTTPRoute{{Name: "api", Rules: []route.HTTPRouteRule{{
		Matches:  []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/api"}}},
		Backends: []route.BackendRef{{Service: "svc"}},
	}, {
		Matches:  []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/fail"}}},
		Backends: []route.BackendRef{{Service: "svc"}},
	}}}}

	t.Run("fields", func(t *testing.T) {
		up := upstreamFor(t, []netip.AddrPort{b.addr}, routes)
		al, sink := accesslogtest.New(1)
		up.AccessLog, up.Pod = al, "client-1"
		p := startProxy(t, up, Options{})
		c := dialClient(t, p.addr)
		res, _ := c.do("POST /api/items?token=secret HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 3\r\n" +
			"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\nabc")
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
		c.do(get("/nowhere"))
		eventually(t, "two lines", func() bool { return len(sink.Lines()) == 2 })
		lines := sink.Lines()
		if d := accesslogtest.Check(lines[0], map[string]any{
			"level": "INFO", "msg": "access", "pod": "client-1", "direction": "outbound", "protocol": "http1",
			"method": "POST", "authority": "svc.test", "path": "/api/items", "status": 200.0,
			"upstream": b.addr.String(), "bytes_in": 3.0, "bytes_out": 5.0, "retries": 0.0,
			"route": "api/0", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
		}); d != nil {
			t.Errorf("line %v: %v", lines[0], d)
		}
		if d := accesslogtest.Check(lines[1], map[string]any{
			"level": "INFO", "msg": "access", "pod": "client-1", "direction": "outbound", "protocol": "http1",
			"method": "GET", "authority": "svc.test", "path": "/nowhere", "status": 404.0,
			"upstream": "", "reason": "no_route", "bytes_in": 0.0, "retries": 0.0,
		}); d != nil {
			t.Errorf("line %v: %v", lines[1], d)
		}
	})

	t.Run("sample 0 logs errors only", func(t *testing.T) {
		up := upstreamFor(t, []netip.AddrPort{b.addr}, routes)
		al, sink := accesslogtest.New(0)
		up.AccessLog = al
		p := startProxy(t, up, Options{})
		c := dialClient(t, p.addr)
		for range 5 {
			c.do(get("/api"))
		}
		c.do(get("/fail"))
		c.do(get("/api"))
		eventually(t, "the error line", func() bool { return len(sink.Lines()) >= 1 })
		time.Sleep(50 * time.Millisecond)
		lines := sink.Lines()
		if len(lines) != 1 || lines[0]["status"] != 503.0 || lines[0]["path"] != "/fail" || lines[0]["route"] != "api/1" {
			t.Errorf("lines %v, want the 503 only", lines)
		}
	})

	t.Run("disabled", func(t *testing.T) {
		up := upstreamFor(t, []netip.AddrPort{b.addr}, routes)
		p := startProxy(t, up, Options{})
		c := dialClient(t, p.addr)
		c.do(get("/fail"))
		c.do(get("/nowhere"))
		// Nothing to observe but that a nil access log is safe on every
		// path: success, upstream 5xx, local reply.
		c.do(get("/api"))
	})
}

// A request the access log does not sample adds no allocation on the
// zero-allocation path.
func TestAccessLogUnsampledAllocatesNothing(t *testing.T) {
	up := cannedServer(t, benchResp)
	pt := passthrough(up)
	al, sink := accesslogtest.New(0)
	pt.AccessLog = al
	p := startProxy(t, pt, Options{})
	rc := newRawClient(t, p.addr, benchGet)
	rc.roundTrip(t)
	if n := testing.AllocsPerRun(2000, func() { rc.roundTrip(t) }); n != 0 {
		t.Errorf("%v allocations per request, want 0", n)
	}
	if l := sink.Lines(); len(l) != 0 {
		t.Errorf("%d lines logged at rate 0 for 200s", len(l))
	}
}

// An endpoint that refuses connections: the request goes to the other one
// and the line counts the retry; with no endpoint at all the line is the
// local 503.
func TestAccessLogRetryAndNoEndpoint(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()

	up := upstreamFor(t, []netip.AddrPort{dead, b.addr}, nil)
	al, sink := accesslogtest.New(1)
	up.AccessLog = al
	c := dialClient(t, startProxy(t, up, Options{}).addr)
	for range 2 {
		if res, _ := c.do(get("/x")); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	eventually(t, "two lines", func() bool { return len(sink.Lines()) == 2 })
	retried := 0
	for _, l := range sink.Lines() {
		if l["upstream"] != b.addr.String() {
			t.Errorf("line %v: want upstream %s", l, b.addr)
		}
		switch l["retries"] {
		case 1.0:
			retried++
		case 0.0:
		default:
			t.Errorf("line %v: want 0 or 1 retry", l)
		}
	}
	// Round robin sends one of the two to the dead endpoint first, or
	// both when it starts there and the failure did not eject it.
	if retried == 0 {
		t.Errorf("lines %v: want a retried request", sink.Lines())
	}

	none := upstreamFor(t, nil, nil)
	al, sink = accesslogtest.New(0)
	none.AccessLog = al
	c = dialClient(t, startProxy(t, none, Options{}).addr)
	if res, _ := c.do(get("/x")); res.StatusCode != 503 {
		t.Fatalf("status %d", res.StatusCode)
	}
	eventually(t, "the 503 line", func() bool { return len(sink.Lines()) == 1 })
	if d := accesslogtest.Check(sink.Lines()[0], map[string]any{
		"level": "INFO", "msg": "access", "pod": "", "direction": "outbound", "protocol": "http1",
		"method": "GET", "authority": "svc.test", "path": "/x", "status": 503.0,
		"upstream": "", "reason": "no_endpoint", "bytes_in": 0.0, "retries": 0.0,
	}); d != nil {
		t.Errorf("line %v: %v", sink.Lines()[0], d)
	}
}
