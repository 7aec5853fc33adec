package h2

import (
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// mirrored is what a mirror backend saw of one copy.
type mirrored struct{ method, path, tag, body string }

// mirrorWorld: service svc over primary, whose one rule adds header
// x-tag and mirrors every request to service "m" over mirror. The frame
// engine only: the x/net engine does not mirror.
func mirrorWorld(t *testing.T, primary, mirror netip.AddrPort) *testProxy {
	t.Helper()
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Protocol: route.HTTP2, Endpoints: eps(primary),
			HTTPRoutes: []route.HTTPRoute{{Name: "r", Rules: []route.HTTPRouteRule{{
				Filters: []route.HTTPRouteFilter{
					{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: &route.HeaderModifier{Set: []route.Header{{Name: "x-tag", Value: "mirrored"}}}},
					{Type: route.FilterRequestMirror, RequestMirror: &route.RequestMirror{BackendRef: route.BackendRef{Service: "m"}}},
				},
				Backends: []route.BackendRef{{Service: "svc"}},
			}}}}},
		{Name: "m", Endpoints: eps(mirror), Protocol: route.HTTP2, Cluster: cluster.Config{Outlier: cluster.OutlierConfig{Disabled: true}}},
	}})
	return newTestProxy(t, snap, Options{Engine: EngineFrames})
}

func doH2Body(t *testing.T, c *http.Client, method, path, body string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://svc.test"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == "" {
		req.Body = http.NoBody
	}
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return res.StatusCode, readAll(t, res)
}

// A RequestMirror rule copies each request (head as sent upstream, body)
// to the mirror backend over h2c; the client's answer is the primary's
// and does not wait for the mirror, which holds its answer until the
// client has had its own.
func TestH2MirrorCopiesRequests(t *testing.T) {
	primary := countingH2C(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body); w.Write([]byte("primary")) })
	seen := make(chan mirrored, 10)
	release := make(chan struct{})
	mirror := countingH2C(t, func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		seen <- mirrored{r.Method, r.URL.RequestURI(), r.Header.Get("x-tag"), string(b)}
		<-release
		w.WriteHeader(500) // dropped: never reaches the client
	})
	p := mirrorWorld(t, primary.addr, mirror.addr)
	client, _ := h2cClient(t, p.addr)
	if code, body := doH2Body(t, client, "GET", "/a?q=1", ""); code != 200 || body != "primary" {
		t.Fatalf("GET: %d %q, want the primary's 200", code, body)
	}
	if code, body := doH2Body(t, client, "POST", "/b", "hello"); code != 200 || body != "primary" {
		t.Fatalf("POST: %d %q, want the primary's 200", code, body)
	}
	close(release)
	got := map[mirrored]bool{<-seen: true, <-seen: true}
	for _, w := range []mirrored{{"GET", "/a?q=1", "mirrored", ""}, {"POST", "/b", "mirrored", "hello"}} {
		if !got[w] {
			t.Errorf("mirror saw %v, want %v among them", got, w)
		}
	}
	if primary.n.Load() != 2 {
		t.Errorf("primary got %d requests, want 2", primary.n.Load())
	}
	waitFor(t, "two copies counted, both failed (500)", func() bool {
		return counterValue(t, p, "weir_route_policy_total", "policy", "mirror") == 2 &&
			counterValue(t, p, "weir_route_policy_total", "policy", "mirror_failed") == 2
	})
}

// A mirror backend that refuses connections changes nothing for the
// client; the failed copies are counted. A body past MaxReplayBytes is
// not copied (skipped, counted) and still reaches the primary whole.
func TestH2MirrorDownPrimaryUnaffected(t *testing.T) {
	primary := countingH2C(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		w.Write([]byte(strings.Repeat("n", int(n%7))))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := netip.MustParseAddrPort(ln.Addr().String())
	ln.Close()
	p := mirrorWorld(t, primary.addr, dead)
	client, _ := h2cClient(t, p.addr)
	for i := range 5 {
		if code, body := doH2Body(t, client, "GET", "/x", ""); code != 200 || body != "" {
			t.Fatalf("request %d: %d %q with the mirror down", i, code, body)
		}
	}
	waitFor(t, "five copies failed", func() bool {
		return counterValue(t, p, "weir_route_policy_total", "policy", "mirror_failed") == 5
	})
	const size = 1 << 20
	if code, body := doH2Body(t, client, "POST", "/big", strings.Repeat("x", size)); code != 200 || len(body) != size%7 {
		t.Fatalf("POST of 1 MiB: %d %q", code, body)
	}
	if got := counterValue(t, p, "weir_route_policy_total", "policy", "mirror_skipped"); got != 1 {
		t.Errorf("mirror_skipped = %v, want 1 (the 1 MiB body)", got)
	}
}
