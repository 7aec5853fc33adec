package h2

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// svcAddr is the virtual address clients "dial": the proxy's route is
// looked up for it, as the engine does for an original destination.
var svcAddr = netip.MustParseAddrPort("10.96.0.1:80")

// testProxy is the proxy of one pod: a loopback listener whose accepted
// connections are served with Serve over the route of svcAddr.
type testProxy struct {
	addr     string
	pool     *Pool
	metrics  *l7.Metrics
	reg      *prometheus.Registry
	draining chan struct{}
	accepted atomic.Int32
	served   atomic.Int32 // connections whose Serve returned
	// accessLog and tracer, when set, go to the connections accepted
	// after.
	accessLog atomic.Pointer[l7.AccessLog]
	tracer    atomic.Pointer[l7.Tracer]
	wg        sync.WaitGroup
}

func tcpDial(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", a.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func mustBuild(t testing.TB, cfg route.Config) *route.Snapshot {
	t.Helper()
	snap, err := route.Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func newTestProxy(t testing.TB, snap *route.Snapshot, opt Options) *testProxy {
	t.Helper()
	return newTestProxyDst(t, snap, opt, svcAddr)
}

// newTestProxyDst is newTestProxy for connections whose original
// destination is dst (where passthrough goes).
func newTestProxyDst(t testing.TB, snap *route.Snapshot, opt Options, dst netip.AddrPort) *testProxy {
	t.Helper()
	return newTestProxyServe(t, snap, opt, dst, Serve)
}

// newTestProxyServe is newTestProxyDst serving each connection with serve
// (Serve or ServeHTTP1).
func newTestProxyServe(t testing.TB, snap *route.Snapshot, opt Options, dst netip.AddrPort,
	serve func(context.Context, net.Conn, *l7.Upstream, *Pool)) *testProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p := &testProxy{
		addr:     ln.Addr().String(),
		pool:     NewPool(withEngine(opt)),
		metrics:  l7.NewMetrics(reg),
		reg:      reg,
		draining: make(chan struct{}),
	}
	ctx, cancel := context.WithCancel(context.Background())
	rt := snap.Lookup(dst)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.accepted.Add(1)
			up := &l7.Upstream{
				Route: rt, Dst: dst, Dial: tcpDial, Key: 1,
				Draining: p.draining, Metrics: p.metrics,
				Log:       slog.New(slog.DiscardHandler),
				AccessLog: p.accessLog.Load(), Pod: "client-1", Tracer: p.tracer.Load(),
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				serve(ctx, c, up, p.pool)
				p.served.Add(1)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		cancel()
		p.wg.Wait()
		p.pool.Close()
	})
	return p
}

// h2cClient is an x/net HTTP/2 client speaking prior-knowledge h2c to
// addr over one connection.
func h2cClient(t testing.TB, addr string) (*http.Client, *atomic.Int32) {
	var dials atomic.Int32
	tr := &http2.Transport{
		AllowHTTP: true,
		DialTLSContext: func(ctx context.Context, network, _ string, _ *tls.Config) (net.Conn, error) {
			dials.Add(1)
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}, &dials
}

// startH2C serves h with prior-knowledge h2c on a loopback port.
func startH2C(t testing.TB, h http.Handler) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	srv := &http.Server{Handler: h, Protocols: &p, ErrorLog: nil}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return netip.MustParseAddrPort(ln.Addr().String())
}

func readAll(t testing.TB, res *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func eps(addrs ...netip.AddrPort) []cluster.Endpoint {
	var out []cluster.Endpoint
	for _, a := range addrs {
		out = append(out, cluster.Endpoint{Addr: a})
	}
	return out
}

// waitFor polls cond for up to 5s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// counterValue sums the counter series of name whose labels include the
// given name, value pairs.
func counterValue(t testing.TB, p *testProxy, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// leasesReleased checks that every request gave its lease back, and that
// none was blamed on its endpoint (no test here breaks an upstream).
func leasesReleased(t testing.TB, snap *route.Snapshot) {
	t.Helper()
	waitFor(t, "every lease released", func() bool {
		for _, c := range snap.Clusters() {
			if c.Stats().Active != 0 {
				return false
			}
		}
		return true
	})
	for _, c := range snap.Clusters() {
		for _, e := range c.Stats().Endpoints {
			if e.Active != 0 || e.Errors != 0 {
				t.Errorf("cluster %s endpoint %s: %d active, %d errors", c.Name(), e.Name, e.Active, e.Errors)
			}
		}
	}
}
