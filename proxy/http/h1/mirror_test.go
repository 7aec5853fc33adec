package h1

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// mirrored is what a mirror backend saw of one copy.
type mirrored struct{ method, path, tag, body string }

// mirrorWorld: service svc over primary, whose one rule adds header
// x-tag and mirrors every request to service "m" over mirror.
func mirrorWorld(t *testing.T, primary, mirror netip.AddrPort) (*proxy, *prometheus.Registry) {
	t.Helper()
	cfg := route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{vip}, Endpoints: []cluster.Endpoint{{Addr: primary}}, Protocol: route.HTTP,
			HTTPRoutes: []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{{
				Filters: []route.HTTPRouteFilter{
					{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: &route.HeaderModifier{Set: []route.Header{{Name: "x-tag", Value: "mirrored"}}}},
					{Type: route.FilterRequestMirror, RequestMirror: &route.RequestMirror{BackendRef: route.BackendRef{Service: "m"}}},
				},
				Backends: []route.BackendRef{{Service: "svc"}},
			}}}}},
		{Name: "m", Endpoints: []cluster.Endpoint{{Addr: mirror}}, Cluster: cluster.Config{Outlier: cluster.OutlierConfig{Disabled: true}}},
	}}
	snap, err := route.Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	up := &l7.Upstream{Route: snap.Lookup(vip), Dst: vip, Dial: dialTCP, Metrics: l7.NewMetrics(reg), Log: slog.New(slog.DiscardHandler)}
	return startProxy(t, up, Options{}), reg
}

func policyCount(t *testing.T, reg *prometheus.Registry, what string) float64 {
	return counter(t, reg, "weir_route_policy_total", map[string]string{"service": "svc", "route": "r/0", "policy": what})
}

// A RequestMirror rule copies each request (head as sent upstream, body)
// to the mirror backend; the client's answer is the primary's and does
// not wait for the mirror, which here holds its answer until the client
// has had its own.
func TestMirrorCopiesRequests(t *testing.T) {
	primary := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); w.Write([]byte("primary")) })
	seen := make(chan mirrored, 10)
	release := make(chan struct{})
	mirror := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen <- mirrored{r.Method, r.URL.RequestURI(), r.Header.Get("x-tag"), string(b)}
		<-release
		w.WriteHeader(500) // dropped: never reaches the client
	})
	p, reg := mirrorWorld(t, primary.addr, mirror.addr)
	c := dialClient(t, p.addr)
	res, body := c.do(get("/a?q=1"))
	if res.StatusCode != 200 || body != "primary" {
		t.Fatalf("GET: %d %q, want the primary's 200", res.StatusCode, body)
	}
	res, body = c.do("POST /b HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 5\r\n\r\nhello")
	if res.StatusCode != 200 || body != "primary" {
		t.Fatalf("POST: %d %q, want the primary's 200", res.StatusCode, body)
	}
	close(release)
	want := []mirrored{{"GET", "/a?q=1", "mirrored", ""}, {"POST", "/b", "mirrored", "hello"}}
	got := map[mirrored]bool{<-seen: true, <-seen: true}
	for _, w := range want {
		if !got[w] {
			t.Errorf("mirror saw %v, want %v among them", got, w)
		}
	}
	if primary.requests.Load() != 2 {
		t.Errorf("primary got %d requests, want 2", primary.requests.Load())
	}
	eventually(t, "two mirrored copies counted, both failed (500)", func() bool {
		return policyCount(t, reg, "mirror") == 2 && policyCount(t, reg, "mirror_failed") == 2
	})
}

// A mirror backend that refuses connections changes nothing for the
// client; the failed copies are counted.
func TestMirrorDownPrimaryUnaffected(t *testing.T) {
	primary := newBackend(t, func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("primary")) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	p, reg := mirrorWorld(t, primary.addr, dead)
	c := dialClient(t, p.addr)
	for i := range 5 {
		if res, body := c.do(get("/x")); res.StatusCode != 200 || body != "primary" {
			t.Fatalf("request %d: %d %q with the mirror down", i, res.StatusCode, body)
		}
	}
	eventually(t, "five copies failed", func() bool { return policyCount(t, reg, "mirror_failed") == 5 })
}

// A body streamed past the read buffer is not copied: the copy is
// skipped and counted, the request itself goes through whole.
func TestMirrorSkipsStreamedBody(t *testing.T) {
	primary := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Write([]byte(strings.Repeat("n", int(n%7))))
	})
	mirror := newBackend(t, func(w http.ResponseWriter, r *http.Request) {})
	p, reg := mirrorWorld(t, primary.addr, mirror.addr)
	c := dialClient(t, p.addr)
	const size = 1 << 20
	c.send("POST /big HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 1048576\r\n\r\n")
	go c.c.Write([]byte(strings.Repeat("x", size)))
	if res, body := c.read("POST"); res.StatusCode != 200 || len(body) != size%7 {
		t.Fatalf("POST of 1 MiB: %d %q", res.StatusCode, body)
	}
	if got := policyCount(t, reg, "mirror_skipped"); got != 1 || mirror.requests.Load() != 0 {
		t.Errorf("mirror_skipped %v, mirror got %d requests; want 1 and 0", got, mirror.requests.Load())
	}
}
