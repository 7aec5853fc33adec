package h1

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// cannedServer is an upstream that allocates nothing per request: it reads
// request heads (and Content-Length bodies) and answers each with resp.
func cannedServer(tb testing.TB, resp string) netip.AddrPort {
	addr, _ := rawServer(tb, func(c net.Conn) {
		buf := make([]byte, 64<<10)
		out := []byte(resp)
		r, w := 0, 0
		for {
			end := bytes.Index(buf[r:w], []byte("\r\n\r\n"))
			if end < 0 {
				if r > 0 {
					w = copy(buf, buf[r:w])
					r = 0
				}
				n, err := c.Read(buf[w:])
				if err != nil {
					return
				}
				w += n
				continue
			}
			head := buf[r : r+end+4]
			need := r + len(head) + contentLength(head)
			for w < need {
				n, err := c.Read(buf[w:])
				if err != nil {
					return
				}
				w += n
			}
			r = need
			if _, err := c.Write(out); err != nil {
				return
			}
		}
	})
	return addr
}

// contentLength finds a Content-Length in a head (test traffic only).
func contentLength(head []byte) int {
	i := bytes.Index(head, []byte("Content-Length: "))
	if i < 0 {
		return 0
	}
	n := 0
	for _, c := range head[i+16:] {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// rawClient sends one fixed request and reads its whole response without
// allocating.
type rawClient struct {
	c   net.Conn
	req []byte
	buf []byte
}

func newRawClient(tb testing.TB, addr, req string) *rawClient {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return &rawClient{c: c, req: []byte(req), buf: make([]byte, 64<<10)}
}

func (rc *rawClient) roundTrip(tb testing.TB) {
	if _, err := rc.c.Write(rc.req); err != nil {
		tb.Fatal(err)
	}
	w := 0
	for {
		n, err := rc.c.Read(rc.buf[w:])
		if err != nil {
			tb.Fatal(err)
		}
		w += n
		end := bytes.Index(rc.buf[:w], []byte("\r\n\r\n"))
		if end < 0 {
			continue
		}
		if !bytes.HasPrefix(rc.buf, []byte("HTTP/1.1 200 ")) {
			tb.Fatalf("response %q", rc.buf[:w])
		}
		if w >= end+4+contentLength(rc.buf[:end+4]) {
			return
		}
	}
}

const (
	benchResp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
	benchGet  = "GET /api/items?id=42 HTTP/1.1\r\nHost: svc.test\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n\r\n"
)

func benchPost(n int) string {
	return "POST /api/items HTTP/1.1\r\nHost: svc.test\r\nUser-Agent: bench/1.0\r\nContent-Type: application/octet-stream\r\nContent-Length: " +
		strconv.Itoa(n) + "\r\n\r\n" + string(bytes.Repeat([]byte("x"), n))
}

// The warm keep-alive request allocates nothing in the whole Serve loop
// (client, proxy and upstream all over loopback, all counted): parse,
// route, pooled upstream connection, head rewrite, framing, metrics.
func TestServeAllocatesNothingPerRequest(t *testing.T) {
	up := cannedServer(t, benchResp)
	for _, tc := range []struct {
		name string
		req  string
	}{
		{"GET", benchGet},
		{"POST 1KiB", benchPost(1024)},
	} {
		t.Run("passthrough/"+tc.name, func(t *testing.T) {
			p := startProxy(t, passthrough(up), Options{})
			rc := newRawClient(t, p.addr, tc.req)
			rc.roundTrip(t)
			if n := testing.AllocsPerRun(2000, func() { rc.roundTrip(t) }); n != 0 {
				t.Errorf("%v allocations per request, want 0", n)
			}
		})
	}
	// Through a cluster with HTTP routes, header modifiers and two
	// endpoints: nothing either (the pick goes into a lease the
	// connection keeps).
	t.Run("cluster/GET", func(t *testing.T) {
		up2 := cannedServer(t, benchResp)
		routes := []route.HTTPRoute{{Rules: []route.HTTPRouteRule{{
			Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/api"}}},
			Filters: []route.HTTPRouteFilter{{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: &route.HeaderModifier{
				Set: []route.Header{{Name: "X-Route", Value: "api"}}, Remove: []string{"user-agent"},
			}}},
			Backends: []route.BackendRef{{Service: "svc"}},
		}}}}
		p := startProxy(t, upstreamFor(t, []netip.AddrPort{up, up2}, routes), Options{})
		rc := newRawClient(t, p.addr, benchGet)
		rc.roundTrip(t)
		n := testing.AllocsPerRun(2000, func() { rc.roundTrip(t) })
		t.Logf("%v allocations per request through the cluster", n)
		if n != 0 {
			t.Errorf("%v allocations per request through the cluster, want 0", n)
		}
	})
}

// The codec's own steps allocate nothing: parse a request, route view,
// build the upstream head with header modifiers, parse a chunked response
// head, build the client's head, validate a chunked body.
func TestCodecStepsAllocateNothing(t *testing.T) {
	lim := Limits{}.withDefaults()
	reqRaw := []byte("POST /api/items?id=42 HTTP/1.1\r\nHost: svc.test\r\nUser-Agent: bench\r\nX-Drop: 1\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\n\r\n")
	respRaw := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n")
	body := []byte("5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n")
	mod := &route.HeaderModifier{Set: []route.Header{{Name: "X-Set", Value: "1"}}, Add: []route.Header{{Name: "X-Add", Value: "2"}}, Remove: []string{"x-drop"}}
	action := &route.Action{RequestHeaders: mod, ResponseHeaders: mod}
	var q reqHead
	var rs respHead
	var c chunked
	wb := make([]byte, 0, 4096)
	step := func() {
		if err := q.parse(reqRaw, &lim); err != nil {
			t.Fatal(err)
		}
		if _, ok := q.Header("user-agent"); !ok || len(q.Path()) == 0 {
			t.Fatal("view")
		}
		wb = appendRequestHead(wb[:0], &q, action)
		if err := rs.parse(respRaw, false, &lim); err != nil {
			t.Fatal(err)
		}
		wb = appendResponseHead(wb[:0], &rs, mod, connNone, false)
		c.reset()
		if _, done, err := c.consume(body, &lim); err != nil || !done {
			t.Fatal("chunked", err)
		}
	}
	step()
	if n := testing.AllocsPerRun(1000, step); n != 0 {
		t.Errorf("%v allocations per request, want 0", n)
	}
}

// BenchmarkProxy compares a full proxied request over loopback (one
// keep-alive client connection, the same zero-allocation upstream) through
// Serve and through net/http/httputil.ReverseProxy on a net/http server.
func BenchmarkProxy(b *testing.B) {
	up := cannedServer(b, benchResp)
	for _, bc := range []struct {
		name, req string
	}{
		{"GET", benchGet},
		{"POST1KiB", benchPost(1024)},
	} {
		b.Run("weir/"+bc.name, func(b *testing.B) {
			p := startProxy(b, passthrough(up), Options{})
			benchRoundTrips(b, p.addr, bc.req)
		})
		b.Run("weir-cluster/"+bc.name, func(b *testing.B) {
			p := startProxy(b, upstreamFor(b, []netip.AddrPort{up}, nil), Options{})
			benchRoundTrips(b, p.addr, bc.req)
		})
		// Issue 10's policy and telemetry on the same path: one route
		// rule with a retry policy, a request timeout and a rate limit
		// far above the load, per-route metrics, the access log sampled
		// at 1 %, tracing off.
		b.Run("weir-policy/"+bc.name, func(b *testing.B) {
			attempts := 1
			up := upstreamFor(b, []netip.AddrPort{up}, []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{{
				Backends:  []route.BackendRef{{Service: "svc"}},
				Retry:     &route.HTTPRouteRetry{Codes: []int{503}, Attempts: &attempts},
				Timeouts:  &route.HTTPRouteTimeouts{Request: cluster.Duration(10 * time.Second)},
				RateLimit: &route.LocalRateLimit{RequestsPerSecond: 1e9, Burst: 1e6},
			}}}})
			up.AccessLog = l7.NewAccessLog(slog.New(slog.NewJSONHandler(io.Discard, nil)), 0.01)
			p := startProxy(b, up, Options{})
			benchRoundTrips(b, p.addr, bc.req)
		})
		b.Run("httputil/"+bc.name, func(b *testing.B) {
			target, _ := url.Parse("http://" + up.String())
			tr := &http.Transport{MaxIdleConnsPerHost: 16}
			b.Cleanup(tr.CloseIdleConnections)
			rp := &httputil.ReverseProxy{
				Rewrite:   func(r *httputil.ProxyRequest) { r.SetURL(target); r.Out.Host = r.In.Host },
				Transport: tr,
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			srv := &http.Server{Handler: rp}
			go srv.Serve(ln)
			b.Cleanup(func() { srv.Close() })
			benchRoundTrips(b, ln.Addr().String(), bc.req)
		})
	}
}

// benchRoundTrips times req's round trips on one keep-alive connection to
// addr, after one unrecorded.
func benchRoundTrips(b *testing.B, addr, req string) {
	rc := newRawClient(b, addr, req)
	rc.roundTrip(b)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		rc.roundTrip(b)
	}
}
