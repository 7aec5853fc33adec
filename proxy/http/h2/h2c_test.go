package h2

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/proxy/route"
)

// seen is what an echo upstream reports of the request it got.
type seen struct {
	Endpoint string
	Method   string
	Host     string
	URI      string
	Header   http.Header
	Trailer  http.Header
	BodySum  string
	BodyLen  int
}

// echoServer is an h2c upstream that answers every request with what it
// saw, a header to drop and a trailer.
func echoServer(t testing.TB, name string) (netip.AddrPort, *atomic.Int32) {
	var n atomic.Int32
	addr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		h := sha256.New()
		size, _ := io.Copy(h, r.Body)
		w.Header().Set("X-Endpoint", name)
		w.Header().Set("X-Drop", "1")
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(seen{
			Endpoint: name, Method: r.Method, Host: r.Host, URI: r.RequestURI,
			Header: r.Header, Trailer: r.Trailer, BodySum: fmt.Sprintf("%x", h.Sum(nil)), BodyLen: int(size),
		})
		w.Header().Set(http.TrailerPrefix+"X-Upstream-Trailer", "t-"+name)
	}))
	return addr, &n
}

// frameServer is a raw HTTP/2 upstream that answers every stream with
// RST_STREAM REFUSED_STREAM ("refuse") or its connection with GOAWAY
// naming no stream ("goaway"): neither processes anything, so the proxy
// may retry elsewhere.
func frameServer(t testing.TB, mode string) (netip.AddrPort, *atomic.Int32) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var streams atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.ReadFull(c, make([]byte, len(http2.ClientPreface))); err != nil {
					return
				}
				fr := http2.NewFramer(c, c)
				fr.WriteSettings()
				for {
					f, err := fr.ReadFrame()
					if err != nil {
						return
					}
					switch f := f.(type) {
					case *http2.SettingsFrame:
						if !f.IsAck() {
							fr.WriteSettingsAck()
						}
					case *http2.HeadersFrame:
						streams.Add(1)
						if mode == "refuse" {
							fr.WriteRSTStream(f.StreamID, http2.ErrCodeRefusedStream)
						} else {
							fr.WriteGoAway(0, http2.ErrCodeNo, nil)
						}
					}
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(ln.Addr().String()), &streams
}

type h2cWorld struct {
	snap                 *route.Snapshot
	p                    *testProxy
	client               *http.Client
	dials                *atomic.Int32
	a, b, good           *atomic.Int32
	refused, goneStreams *atomic.Int32
}

func newH2CWorld(t *testing.T) *h2cWorld {
	aAddr, a := echoServer(t, "a")
	bAddr, b := echoServer(t, "b")
	goodAddr, good := echoServer(t, "good")
	refuser, refused := frameServer(t, "refuse")
	goner, gone := frameServer(t, "goaway")
	prefix := func(p string) []route.HTTPRouteMatch {
		return []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: p}}}
	}
	to := func(svc string) []route.BackendRef { return []route.BackendRef{{Service: svc}} }
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{
			Name: "front", Addresses: []netip.AddrPort{svcAddr}, Protocol: route.HTTP2,
			HTTPRoutes: []route.HTTPRoute{{Rules: []route.HTTPRouteRule{
				{Matches: prefix("/api"), Backends: to("web")},
				{Matches: prefix("/filters"), Backends: to("web"), Filters: []route.HTTPRouteFilter{
					{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: &route.HeaderModifier{
						Set:    []route.Header{{Name: "X-Set", Value: "set"}},
						Add:    []route.Header{{Name: "x-add", Value: "added"}},
						Remove: []string{"X-Remove"},
					}},
					{Type: route.FilterResponseHeaderModifier, ResponseHeaderModifier: &route.HeaderModifier{
						Set:    []route.Header{{Name: "X-Resp", Value: "yes"}},
						Remove: []string{"x-drop"},
					}},
				}},
				{Matches: prefix("/v1"), Backends: to("web"), Filters: []route.HTTPRouteFilter{
					{Type: route.FilterURLRewrite, URLRewrite: &route.URLRewrite{
						Hostname: "backend.internal",
						Path:     &route.PathModifier{Type: route.ReplacePrefixMatch, ReplacePrefixMatch: "/v2"},
					}},
				}},
				{Matches: prefix("/old"), Filters: []route.HTTPRouteFilter{
					{Type: route.FilterRequestRedirect, RequestRedirect: &route.Redirect{
						Scheme: "https", StatusCode: 301,
						Path: &route.PathModifier{Type: route.ReplacePrefixMatch, ReplacePrefixMatch: "/new"},
					}},
				}},
				{Matches: prefix("/nobackend")},
				{Matches: prefix("/refuse"), Backends: to("flaky")},
				{Matches: prefix("/goaway"), Backends: to("gone")},
			}}},
		},
		{Name: "web", Endpoints: eps(aAddr, bAddr)},
		{Name: "flaky", Endpoints: eps(refuser, goodAddr)},
		{Name: "gone", Endpoints: eps(goner, goodAddr)},
	}})
	p := newTestProxy(t, snap, Options{})
	client, dials := h2cClient(t, p.addr)
	return &h2cWorld{snap: snap, p: p, client: client, dials: dials, a: a, b: b, good: good, refused: refused, goneStreams: gone}
}

func (w *h2cWorld) do(t *testing.T, req *http.Request) (*http.Response, seen) {
	t.Helper()
	res, err := w.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body := readAll(t, res)
	var s seen
	if strings.HasPrefix(res.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal([]byte(body), &s); err != nil {
			t.Fatalf("%s: %v", body, err)
		}
	}
	return res, s
}

func get(t *testing.T, url string) *http.Request {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestH2C(t *testing.T) {
	w := newH2CWorld(t)

	t.Run("requests over one connection are balanced", func(t *testing.T) {
		got := map[string]int{}
		for i := range 20 {
			res, s := w.do(t, get(t, fmt.Sprintf("http://shop.test/api/%d?x=%d", i, i)))
			if res.StatusCode != 200 {
				t.Fatalf("status %d", res.StatusCode)
			}
			if s.URI != fmt.Sprintf("/api/%d?x=%d", i, i) || s.Host != "shop.test" || s.Method != "GET" {
				t.Fatalf("upstream saw %+v", s)
			}
			if res.Trailer.Get("X-Upstream-Trailer") != "t-"+s.Endpoint {
				t.Fatalf("trailers %v", res.Trailer)
			}
			got[res.Header.Get("X-Endpoint")]++
		}
		if got["a"] == 0 || got["b"] == 0 {
			t.Errorf("20 requests landed %v, want both endpoints", got)
		}
		if n := w.dials.Load(); n != 1 {
			t.Errorf("client dialled %d times, want 1", n)
		}
	})

	t.Run("nothing added, connection-specific fields dropped", func(t *testing.T) {
		req := get(t, "http://shop.test/api/plain")
		req.Header["User-Agent"] = nil // the client sends none
		req.Header.Set("X-Custom", "kept")
		req.Header.Set("Te", "trailers")
		_, s := w.do(t, req)
		for _, k := range []string{"User-Agent", "X-Forwarded-For", "X-Forwarded-Proto", "Via"} {
			if v, ok := s.Header[k]; ok {
				t.Errorf("upstream saw %s: %v", k, v)
			}
		}
		if s.Header.Get("X-Custom") != "kept" || s.Header.Get("Te") != "trailers" {
			t.Errorf("upstream saw %v", s.Header)
		}
	})

	t.Run("header filters", func(t *testing.T) {
		req := get(t, "http://shop.test/filters")
		req.Header.Set("X-Set", "original")
		req.Header.Set("X-Add", "first")
		req.Header.Set("X-Remove", "gone")
		res, s := w.do(t, req)
		if got := s.Header["X-Set"]; len(got) != 1 || got[0] != "set" {
			t.Errorf("X-Set upstream %v", got)
		}
		if got := s.Header["X-Add"]; len(got) != 2 || got[0] != "first" || got[1] != "added" {
			t.Errorf("X-Add upstream %v", got)
		}
		if _, ok := s.Header["X-Remove"]; ok {
			t.Errorf("X-Remove reached the upstream")
		}
		if res.Header.Get("X-Resp") != "yes" || res.Header.Get("X-Drop") != "" || res.Header.Get("X-Endpoint") == "" {
			t.Errorf("response header %v", res.Header)
		}
	})

	t.Run("rewrite", func(t *testing.T) {
		_, s := w.do(t, get(t, "http://shop.test/v1/items?id=7"))
		if s.Host != "backend.internal" || s.URI != "/v2/items?id=7" {
			t.Errorf("upstream saw host %q uri %q", s.Host, s.URI)
		}
	})

	t.Run("redirect", func(t *testing.T) {
		c := *w.client
		c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		req := get(t, "http://shop.test/old/page?q=1")
		req.Host = "shop.test:8080" // the client's pool is keyed by URL: stay on its one connection
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != 301 || res.Header.Get("Location") != "https://shop.test/new/page?q=1" {
			t.Errorf("got %d Location %q", res.StatusCode, res.Header.Get("Location"))
		}
	})

	t.Run("local replies", func(t *testing.T) {
		for path, want := range map[string]string{"/nowhere": "404 no_route\n", "/nobackend": "500 no_backend\n"} {
			res, err := w.client.Do(get(t, "http://shop.test"+path))
			if err != nil {
				t.Fatal(err)
			}
			if got := fmt.Sprintf("%d %s", res.StatusCode, readAll(t, res)); got != want {
				t.Errorf("%s: %q, want %q", path, got, want)
			}
		}
	})

	t.Run("bodies and trailers both ways", func(t *testing.T) {
		body := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB: past every window
		pr, pw := io.Pipe()
		go func() {
			for b := body; len(b) > 0; b = b[min(len(b), 100_000):] {
				pw.Write(b[:min(len(b), 100_000)])
			}
			pw.Close()
		}()
		req, _ := http.NewRequest("POST", "http://shop.test/api/upload", pr)
		req.Trailer = http.Header{"X-Client-Trailer": nil}
		req.Trailer.Set("X-Client-Trailer", "ct")
		res, s := w.do(t, req)
		if res.StatusCode != 200 || s.BodyLen != len(body) || s.BodySum != fmt.Sprintf("%x", sha256.Sum256(body)) {
			t.Errorf("upstream got %d bytes (%s)", s.BodyLen, s.BodySum)
		}
		if s.Trailer.Get("X-Client-Trailer") != "ct" {
			t.Errorf("upstream trailers %v", s.Trailer)
		}
	})

	t.Run("refused streams are retried elsewhere", func(t *testing.T) {
		before := w.good.Load()
		for i := range 6 {
			req, _ := http.NewRequest("POST", "http://shop.test/refuse", strings.NewReader(fmt.Sprintf("body %d", i)))
			res, s := w.do(t, req)
			if res.StatusCode != 200 || s.Endpoint != "good" || s.BodyLen != len(fmt.Sprintf("body %d", i)) {
				t.Fatalf("request %d: %d from %q, %d bytes", i, res.StatusCode, s.Endpoint, s.BodyLen)
			}
		}
		if w.refused.Load() == 0 || w.good.Load()-before != 6 {
			t.Errorf("refuser saw %d streams, good %d requests", w.refused.Load(), w.good.Load()-before)
		}
		// A body still arriving when the stream is refused: the attempt
		// blocked on it is abandoned, and the retry replays what came.
		for i := range 4 {
			refused := w.refused.Load()
			pr, pw := io.Pipe()
			go func() {
				pw.Write([]byte("part1,"))
				waitFor(t, "a refusal", func() bool { return w.refused.Load() > refused || w.good.Load() > before+6+int32(i) })
				pw.Write([]byte("part2"))
				pw.Close()
			}()
			req, _ := http.NewRequest("POST", "http://shop.test/refuse", pr)
			res, s := w.do(t, req)
			if res.StatusCode != 200 || s.BodySum != fmt.Sprintf("%x", sha256.Sum256([]byte("part1,part2"))) {
				t.Fatalf("streamed request %d: %d, %d bytes", i, res.StatusCode, s.BodyLen)
			}
		}
	})

	t.Run("streams above a GOAWAY are retried elsewhere", func(t *testing.T) {
		before := w.good.Load()
		for i := range 6 {
			res, s := w.do(t, get(t, "http://shop.test/goaway"))
			if res.StatusCode != 200 || s.Endpoint != "good" {
				t.Fatalf("request %d: %d from %q", i, res.StatusCode, s.Endpoint)
			}
		}
		if w.goneStreams.Load() == 0 || w.good.Load()-before != 6 {
			t.Errorf("GOAWAY server saw %d streams, good %d requests", w.goneStreams.Load(), w.good.Load()-before)
		}
	})

	if n := w.dials.Load(); n != 1 {
		t.Errorf("client dialled %d times, want 1", n)
	}
	leasesReleased(t, w.snap)
}

func TestPassthrough(t *testing.T) {
	dst, n := echoServer(t, "dst")
	// An empty snapshot passes unknown destinations through.
	p := newTestProxyDst(t, mustBuild(t, route.Config{}), Options{}, dst)
	client, _ := h2cClient(t, p.addr)
	for range 3 {
		res, err := client.Get("http://dst.test/x")
		if err != nil {
			t.Fatal(err)
		}
		if readAll(t, res); res.Header.Get("X-Endpoint") != "dst" {
			t.Fatalf("answer from %q", res.Header.Get("X-Endpoint"))
		}
	}
	if n.Load() != 3 {
		t.Errorf("destination saw %d requests, want 3", n.Load())
	}
}

func TestConnectFailureRetried(t *testing.T) {
	// A port nothing listens on: the connect fails and the request moves
	// to the other endpoint.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	live, n := echoServer(t, "live")
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(dead, live)},
	}})
	p := newTestProxy(t, snap, Options{})
	client, _ := h2cClient(t, p.addr)
	for range 4 {
		res, err := client.Get("http://svc.test/")
		if err != nil {
			t.Fatal(err)
		}
		if readAll(t, res); res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	if n.Load() != 4 {
		t.Errorf("live endpoint saw %d requests, want 4", n.Load())
	}

	// Every endpoint down: 502.
	snap = mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(dead)},
	}})
	p = newTestProxy(t, snap, Options{})
	client, _ = h2cClient(t, p.addr)
	res, err := client.Get("http://svc.test/")
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); res.StatusCode != 502 || body != "upstream_error\n" {
		t.Errorf("got %d %q, want 502 upstream_error", res.StatusCode, body)
	}
}

// TestUpstreamBreaks: an upstream that resets its stream after the
// answer began. A plain client's stream is reset too; a gRPC client gets
// UNAVAILABLE in the trailers. Either way the endpoint is blamed.
func TestUpstreamBreaks(t *testing.T) {
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc") {
			w.Header().Set("Content-Type", "application/grpc")
			w.Write([]byte{0, 0, 0, 0, 0}) // one empty message
		} else {
			io.WriteString(w, "partial")
		}
		w.(http.Flusher).Flush()
		panic(http.ErrAbortHandler) // RST_STREAM
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{})

	client, _ := h2cClient(t, p.addr)
	res, err := client.Get("http://svc.test/")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Errorf("read %q and a clean end, want a reset stream", body)
	}

	cc := grpcClient(t, p.addr)
	err = cc.Invoke(t.Context(), "/grpc.testing.TestService/UnaryCall", &testpb.SimpleRequest{}, &testpb.SimpleResponse{})
	if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "upstream_error" {
		t.Errorf("gRPC call: %v, want Unavailable upstream_error", err)
	}
	waitFor(t, "both failures blamed on the endpoint", func() bool {
		return snap.Clusters()[0].Stats().Endpoints[0].Errors == 2
	})
}
