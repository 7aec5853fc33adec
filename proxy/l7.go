package proxy

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/h1"
	"github.com/weir-mesh/weir/proxy/http/h2"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/proxy/route"
	"github.com/weir-mesh/weir/proxy/rpc"
	"github.com/weir-mesh/weir/proxy/rpc/bolt"
	"github.com/weir-mesh/weir/proxy/rpc/dubbo"
	"github.com/weir-mesh/weir/proxy/rpc/redis"
	"github.com/weir-mesh/weir/proxy/rpc/rocketmq"
	"github.com/weir-mesh/weir/proxy/sniff"
)

// Sniffing decides, per outbound connection to a service, whether and how
// long the engine peeks at the client's first bytes to pick the L4 or the
// L7 half. The zero value never sniffs: every connection is relayed at L4.
type Sniffing struct {
	// Timeout bounds the wait for a silent client on an undeclared port;
	// 0 never sniffs.
	Timeout time.Duration
	// ServerFirst marks destination ports whose server speaks first: they
	// go to L4 at once.
	ServerFirst map[uint16]bool
	// PortTimeouts override Timeout per destination port.
	PortTimeouts map[uint16]time.Duration
}

// declaredWait is how long a connection to a service that declared an
// HTTP or TLS protocol may stay silent before its first bytes: such a
// client speaks first by definition, so there is no deadline to fall back
// to L4 in practice, only a bound on idle, never-used connections.
const declaredWait = time.Hour

// timeoutFor is the sniffing deadline for a destination port with no
// declared protocol; 0 means relay at L4 without sniffing.
func (s *Sniffing) timeoutFor(port uint16) time.Duration {
	if s.ServerFirst[port] {
		return 0
	}
	if d, ok := s.PortTimeouts[port]; ok {
		return d
	}
	return s.Timeout
}

// pools are one workload's upstream L7 connections, made on first use.
type pools struct {
	once  sync.Once
	h1    *h1.Pool
	h2    *h2.Pool
	redis *rpc.Pool
	dubbo *rpc.Pool
	bolt  *rpc.Pool
	rmq   *rpc.Pool
}

func (p *pools) get(h2opt h2.Options, m *rpc.Metrics) *pools {
	p.once.Do(func() {
		p.h1 = h1.NewPool(h1.Options{})
		p.h2 = h2.NewPool(h2opt)
		// A stalled server turns into error replies instead of holding
		// the client's pipeline forever.
		p.redis = rpc.NewPool(redis.Protocol, rpc.PoolOptions{ResponseTimeout: 30 * time.Second, Metrics: m})
		p.dubbo = rpc.NewPool(dubbo.Protocol, rpc.PoolOptions{ResponseTimeout: 60 * time.Second, Metrics: m})
		p.bolt = rpc.NewPool(bolt.Protocol, rpc.PoolOptions{ResponseTimeout: 60 * time.Second, Metrics: m})
		// Long-polling pulls and pops wait at the broker (30 s by default
		// in RocketMQ's clients): the bound stays above them.
		p.rmq = rpc.NewPool(rocketmq.Protocol, rpc.PoolOptions{ResponseTimeout: 90 * time.Second, Metrics: m})
	})
	return p
}

// Close releases the workload's pooled upstream connections. Call it when
// the pod is released, after its listeners are closed.
func (w *Workload) Close() {
	if w == nil {
		return
	}
	p := &w.pools
	p.once.Do(func() {}) // nothing made: nothing to close, and no more
	if p.h1 != nil {
		p.h1.Close()
	}
	if p.h2 != nil {
		p.h2.Close()
	}
	for _, rp := range []*rpc.Pool{p.redis, p.dubbo, p.bolt, p.rmq} {
		if rp != nil {
			rp.Close()
		}
	}
}

// serveService handles an outbound connection to a service address: it
// sniffs (or trusts the declared protocol) and hands the connection to
// the HTTP/1, HTTP/2 or TLS-by-SNI path, or relays it at L4. It reports
// false when the caller should relay it at L4 itself with c untouched.
func (e *Engine) serveService(c *net.TCPConn, ca *accelOnce, l Listener, w *Workload, dst netip.AddrPort, r route.Route) bool {
	if e.relaysAtL4(r, dst.Port()) {
		return false
	}
	var wait time.Duration
	switch r.Protocol {
	case route.Dubbo, route.Bolt:
		// Framed by its own codec from the first byte: bytes that are not
		// the protocol close the connection there.
		p := w.pools.get(e.HTTP2, e.RPCMetrics)
		pool := p.dubbo
		if r.Protocol == route.Bolt {
			pool = p.bolt
		}
		e.serveRPC(c, c, w, r, pool, nil)
		return true
	case route.RocketMQ:
		// Declared only: its framing has no magic to sniff. Route replies
		// name the address the client dialled in place of the brokers'.
		e.serveRPC(c, c, w, r, w.pools.get(e.HTTP2, e.RPCMetrics).rmq, rocketmq.RouteRewriter(dst.String()))
		return true
	case route.HTTP, route.HTTP2, route.GRPC, route.TLS, route.Redis:
		wait = declaredWait
	default:
		wait = e.Sniffing.timeoutFor(dst.Port())
	}
	res, sc, err := sniff.Detect(c, sniff.Options{Timeout: wait, Metrics: e.SniffMetrics, NoSplice: ca.of(e, c)})
	if err != nil {
		e.Log.Debug("sniff failed", "pod", w.Name, "dst", dst, "err", err)
		return true
	}
	switch res.Protocol {
	case sniff.HTTP1:
		if r.Protocol == route.TLS {
			break
		}
		e.serveHTTP1(sc, c, w, dst, r)
		return true
	case sniff.HTTP2:
		if r.Protocol == route.TLS {
			break
		}
		h2.Serve(e.ctx, sc, e.httpUpstream(c, w, dst, r), w.pools.get(e.HTTP2, e.RPCMetrics).h2)
		return true
	case sniff.Redis:
		if r.Protocol != route.Redis {
			break // sniffed, not declared: L4 (see route.Redis)
		}
		e.serveRPC(sc, c, w, r, w.pools.get(e.HTTP2, e.RPCMetrics).redis, nil)
		return true
	case sniff.Dubbo:
		// Undeclared Dubbo is balanced per request too: its calls carry
		// no connection state.
		e.serveRPC(sc, c, w, r, w.pools.get(e.HTTP2, e.RPCMetrics).dubbo, nil)
		return true
	case sniff.TLS:
		if r.TLS != nil {
			if a := r.TLS.Match(res.SNI); a != nil {
				r = route.Route{Cluster: a.Backend(), Service: r.Service}
			} else {
				// An SNI no route names goes where the client was going.
				r = route.Route{Passthrough: true, Service: r.Service}
			}
		}
	}
	e.relayL4(sc.TCP(), ca, sc.Buffered(), l, w, dst, r)
	return true
}

// relaysAtL4 reports whether a connection to a service on route r and
// destination port is relayed as bytes without a look at them: declared
// tcp, or undeclared on a port not sniffed. The event loops keep such
// connections; serveService takes the others.
func (e *Engine) relaysAtL4(r route.Route, port uint16) bool {
	switch r.Protocol {
	case route.TCP:
		return true
	case route.Dubbo, route.Bolt, route.RocketMQ, route.HTTP, route.HTTP2, route.GRPC, route.TLS, route.Redis:
		return false
	}
	return e.Sniffing.timeoutFor(port) <= 0
}

// httpUpstream is what the HTTP codecs need of a connection to dst.
func (e *Engine) httpUpstream(accepted *net.TCPConn, w *Workload, dst netip.AddrPort, r route.Route) *l7.Upstream {
	return &l7.Upstream{
		Route: r, Dst: dst, Key: sourceKey(accepted), Draining: e.draining,
		Metrics: e.HTTPMetrics, Log: e.Log, AccessLog: e.AccessLog, Pod: w.Name, Tracer: e.Tracer,
		Dial: e.podDialer(w),
	}
}

// serveHTTP1 serves HTTP/1.1 requests on c (the accepted connection, or
// a sniffer's replaying one): to HTTP/2-only endpoints through the h2
// bridge, else by the HTTP/1 proxy, whose idle connections a successor
// can take over during a drain (handover.go).
func (e *Engine) serveHTTP1(c net.Conn, accepted *net.TCPConn, w *Workload, dst netip.AddrPort, r route.Route) {
	up := e.httpUpstream(accepted, w, dst, r)
	p := w.pools.get(e.HTTP2, e.RPCMetrics)
	if r.UpstreamProtocol == route.HTTP2 {
		// The service's endpoints serve only HTTP/2.
		h2.ServeHTTP1(e.ctx, c, up, p.h2)
		return
	}
	up.HandOff = e.handOffIdleFn
	h1.Serve(e.ctx, c, up, p.h1)
}

// serveRPC hands a connection to the RPC framework: every request is
// balanced on its own over pool's shared upstream connections, and routed
// by the service's rpcRoutes when it has some.
// c is what to serve (a sniffer's replaying connection, or the accepted
// one, which gives the client's address); answer, when set, rewrites
// responses (rpc.Upstream.Answer).
func (e *Engine) serveRPC(c net.Conn, accepted *net.TCPConn, w *Workload, r route.Route, pool *rpc.Pool, answer func(req, resp rpc.Frame) []byte) {
	up := &rpc.Upstream{
		Cluster: r.Cluster, Key: sourceKey(accepted), Draining: e.draining, Log: e.Log,
		Dial: e.podDialer(w), Service: r.Service, Metrics: e.RPCMetrics, Answer: answer,
		Policy: r.RPCPolicy,
	}
	if rt := r.RPC; rt != nil {
		up.Route = func(f rpc.Frame) (*cluster.Cluster, *rpc.Policy) {
			if a := rt.Match(f); a != nil {
				return a.Backend(), a.RPC
			}
			return r.Cluster, r.RPCPolicy
		}
	}
	rpc.Serve(e.ctx, c, up, pool)
}

// podDialer makes L7 upstream connections from w's network namespace with
// the bypass mark, so servers see the pod's own address.
func (e *Engine) podDialer(w *Workload) cluster.Dialer {
	return func(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
		return w.Netns.Dial(ctx, addr, netip.Addr{}, e.upstreamOptions())
	}
}

// upstreamOptions are the socket options of every outbound upstream socket.
func (e *Engine) upstreamOptions() netns.SocketOptions {
	return netns.SocketOptions{Mark: e.Mark}
}
