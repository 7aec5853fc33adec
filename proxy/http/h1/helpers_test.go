package h1

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// vip is the service address clients dial in the tests; only the route
// snapshot knows it.
var vip = netip.MustParseAddrPort("10.96.0.1:80")

// backend is a real net/http server on loopback that counts the
// connections and requests it gets.
type backend struct {
	srv      *http.Server
	addr     netip.AddrPort
	conns    atomic.Int64
	closed   atomic.Int64
	requests atomic.Int64
}

func newBackend(t testing.TB, h http.HandlerFunc) *backend {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &backend{addr: netip.MustParseAddrPort(ln.Addr().String())}
	b.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			b.requests.Add(1)
			h(w, r)
		}),
		ConnState: func(_ net.Conn, st http.ConnState) {
			switch st {
			case http.StateNew:
				b.conns.Add(1)
			case http.StateClosed:
				b.closed.Add(1)
			}
		},
		ErrorLog: nil,
	}
	go b.srv.Serve(ln)
	t.Cleanup(func() { b.srv.Close() })
	return b
}

// dialTCP is the tests' l7.Upstream.Dial.
func dialTCP(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// upstreamFor builds an l7.Upstream for a service at vip over eps (and
// services "a", "b" over aEps, bEps when routes name them), with routes.
func upstreamFor(t testing.TB, eps []netip.AddrPort, routes []route.HTTPRoute, more ...route.Service) *l7.Upstream {
	t.Helper()
	var ceps []cluster.Endpoint
	for _, a := range eps {
		ceps = append(ceps, cluster.Endpoint{Addr: a})
	}
	cfg := route.Config{Services: append([]route.Service{{
		Name: "svc", Addresses: []netip.AddrPort{vip}, Endpoints: ceps,
		Protocol: route.HTTP, HTTPRoutes: routes,
	}}, more...)}
	snap, err := route.Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &l7.Upstream{
		Route:   snap.Lookup(vip),
		Dst:     vip,
		Dial:    dialTCP,
		Metrics: l7.NewMetrics(prometheus.NewRegistry()),
		Log:     slog.New(slog.DiscardHandler),
	}
}

// passthrough is an Upstream with no cluster: requests go to dst.
func passthrough(dst netip.AddrPort) *l7.Upstream {
	return &l7.Upstream{
		Route:   route.Route{Passthrough: true},
		Dst:     dst,
		Dial:    dialTCP,
		Metrics: l7.NewMetrics(prometheus.NewRegistry()),
		Log:     slog.New(slog.DiscardHandler),
	}
}

// proxy serves Serve on a loopback listener.
type proxy struct {
	addr   string
	pool   *Pool
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startProxy(t testing.TB, up *l7.Upstream, opt Options) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &proxy{addr: ln.Addr().String(), pool: NewPool(opt), cancel: cancel}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				Serve(ctx, c, up, p.pool)
			}()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		p.wg.Wait()
		p.pool.Close()
	})
	return p
}

// client is a raw connection to the proxy with a reader that parses
// responses with net/http's own parser.
type client struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialClient(t testing.TB, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, br: bufio.NewReader(c)}
}

func (c *client) send(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatal(err)
	}
}

// read reads one response to a request of method and its whole body.
func (c *client) read(method string) (*http.Response, string) {
	c.t.Helper()
	resp, err := http.ReadResponse(c.br, &http.Request{Method: method})
	if err != nil {
		c.t.Fatalf("reading a response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		c.t.Fatalf("reading a response body: %v", err)
	}
	return resp, string(b)
}

// do sends one request and reads its response.
func (c *client) do(req string) (*http.Response, string) {
	c.t.Helper()
	c.send(req)
	method, _, _ := strings.Cut(req, " ")
	return c.read(method)
}

// expectClosed asserts the proxy closes the connection (nothing more to
// read).
func (c *client) expectClosed() {
	c.t.Helper()
	c.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c.br)
	if err != nil {
		c.t.Fatalf("connection not closed: %v", err)
	}
	if len(b) > 0 {
		c.t.Fatalf("unexpected bytes after the response: %q", b)
	}
}

func get(path string) string {
	return "GET " + path + " HTTP/1.1\r\nHost: svc.test\r\n\r\n"
}

// rawServer is a hand-written upstream for what net/http cannot be made
// to do: it runs fn per accepted connection.
func rawServer(t testing.TB, fn func(c net.Conn)) (netip.AddrPort, *atomic.Int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int64
	var wg sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				fn(c)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return netip.MustParseAddrPort(ln.Addr().String()), &conns
}

// readHeadRaw reads a request head from br (tests' raw servers).
func readHeadRaw(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		line, err := br.ReadString('\n')
		sb.WriteString(line)
		if err != nil {
			return sb.String(), err
		}
		if line == "\r\n" {
			return sb.String(), nil
		}
	}
}

// eventually polls cond for up to 5s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
