package h2

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/route"
)

// h2OnlyBackend is an upstream that serves prior-knowledge h2c only (an
// HTTP/1.1 request is refused by its server): it answers "<name> <proto>
// <method> <path> <body length>". A request for /hold signals arrived and
// waits for release first.
func h2OnlyBackend(t *testing.T, name string, arrived, release chan struct{}) netip.AddrPort {
	t.Helper()
	return startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			http.Error(w, "HTTP/2 only", http.StatusHTTPVersionNotSupported)
			return
		}
		if r.URL.Path == "/hold" {
			arrived <- struct{}{}
			<-release
		}
		b, _ := io.ReadAll(r.Body)
		if r.URL.Path == "/trailers" {
			w.Header().Set("Trailer", "X-Sum")
			fmt.Fprintf(w, "%s %s %s %s %d\n", name, r.Proto, r.Method, r.URL.RequestURI(), len(b))
			w.Header().Set("X-Sum", "42")
			return
		}
		fmt.Fprintf(w, "%s %s %s %s %d\n", name, r.Proto, r.Method, r.URL.RequestURI(), len(b))
	}))
}

// An HTTP/1.1 client of a service whose endpoints speak only HTTP/2: every
// request of one keep-alive connection is balanced on its own and reaches
// an endpoint as an HTTP/2 stream; bodies (sized and chunked), the
// absolute form and trailers come through.
func TestServeHTTP1ToHTTP2Upstream(t *testing.T) {
	snap, p, c, br := http1Proxy(t, h2OnlyBackend(t, "a", nil, nil), h2OnlyBackend(t, "b", nil, nil))
	roundTrip := func(req, method string) (*http.Response, string) {
		t.Helper()
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		res, err := http.ReadResponse(br, &http.Request{Method: method})
		if err != nil {
			t.Fatalf("reading the answer to %q: %v", req, err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		return res, string(body)
	}

	seen := map[string]int{}
	for i := range 20 {
		res, body := roundTrip(fmt.Sprintf("GET /x?i=%d HTTP/1.1\r\nHost: svc.test\r\n\r\n", i), "GET")
		name, rest, _ := strings.Cut(body, " ")
		if res.StatusCode != 200 || rest != fmt.Sprintf("HTTP/2.0 GET /x?i=%d 0\n", i) || res.Close {
			t.Fatalf("request %d: %d %q (close %v)", i, res.StatusCode, body, res.Close)
		}
		seen[name]++
	}
	if seen["a"] == 0 || seen["b"] == 0 {
		t.Errorf("20 requests on one HTTP/1.1 connection reached %v; want both endpoints", seen)
	}

	res, body := roundTrip("POST /post HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello", "POST")
	if res.StatusCode != 200 || !strings.HasSuffix(body, " HTTP/2.0 POST /post 5\n") {
		t.Errorf("sized body: %d %q", res.StatusCode, body)
	}
	res, body = roundTrip("POST /chunked HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n", "POST")
	if res.StatusCode != 200 || !strings.HasSuffix(body, " HTTP/2.0 POST /chunked 7\n") {
		t.Errorf("chunked body: %d %q", res.StatusCode, body)
	}
	res, body = roundTrip("GET http://svc.test/abs?q=1 HTTP/1.1\r\nHost: svc.test\r\n\r\n", "GET")
	if res.StatusCode != 200 || !strings.HasSuffix(body, " HTTP/2.0 GET /abs?q=1 0\n") {
		t.Errorf("absolute form: %d %q", res.StatusCode, body)
	}
	res, body = roundTrip("GET /trailers HTTP/1.1\r\nHost: svc.test\r\nTE: trailers\r\n\r\n", "GET")
	if res.StatusCode != 200 || !strings.HasSuffix(body, " HTTP/2.0 GET /trailers 0\n") || res.Trailer.Get("X-Sum") != "42" {
		t.Errorf("trailers: %d %q trailer %v", res.StatusCode, body, res.Trailer)
	}
	// Counted once the handler is done, which may be just after the
	// client has the whole answer.
	waitFor(t, "24 requests counted as http1 2xx", func() bool {
		return counterValue(t, p, "weir_http_requests_total", "protocol", "http1", "code", "2xx") == 24
	})
	leasesReleased(t, snap)
}

// http1Proxy serves HTTP/1.1 clients of a service over backends with
// upstreamProtocol http2, and connects one client.
func http1Proxy(t *testing.T, backends ...netip.AddrPort) (*route.Snapshot, *testProxy, net.Conn, *bufio.Reader) {
	t.Helper()
	snap := mustBuild(t, route.Config{Services: []route.Service{{
		Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(backends...),
		UpstreamProtocol: route.HTTP2,
	}}})
	p := newTestProxyServe(t, snap, Options{}, svcAddr, ServeHTTP1)
	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	return snap, p, c, bufio.NewReader(c)
}

// CONNECT is refused without breaking the connection's framing; a drain
// answers the request in flight with Connection: close, then the
// connection closes.
func TestServeHTTP1ToHTTP2Drain(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	_, p, c, br := http1Proxy(t, h2OnlyBackend(t, "a", arrived, release))
	io.WriteString(c, "CONNECT svc.test:443 HTTP/1.1\r\nHost: svc.test:443\r\n\r\n")
	res, err := http.ReadResponse(br, &http.Request{Method: "CONNECT"})
	if err != nil || res.StatusCode != http.StatusNotImplemented {
		t.Fatalf("CONNECT: %v %v, want 501", res, err)
	}
	io.Copy(io.Discard, res.Body)
	io.WriteString(c, "GET /hold HTTP/1.1\r\nHost: svc.test\r\n\r\n")
	<-arrived
	close(p.draining)
	close(release)
	res, err = http.ReadResponse(br, &http.Request{Method: "GET"})
	if err != nil || res.StatusCode != 200 || !res.Close {
		t.Fatalf("the request in flight during a drain: %v %v, want 200 with Connection: close", res, err)
	}
	io.Copy(io.Discard, res.Body)
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("after the drained answer: %v, want EOF", err)
	}
	waitFor(t, "ServeHTTP1 to return", func() bool { return p.served.Load() == 1 })
}
