package h2

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// Options tunes a Pool and the connections served with it. The zero value
// is usable: every zero field takes the default named in its comment.
type Options struct {
	// MaxConcurrentStreams is the SETTINGS_MAX_CONCURRENT_STREAMS offered
	// to clients; default 1000.
	MaxConcurrentStreams uint32
	// MaxHeaderListSize bounds one header block (SETTINGS_MAX_HEADER_LIST_SIZE
	// both ways: a client's larger request is answered 431, an upstream's
	// larger response fails the request); default 64 KiB.
	MaxHeaderListSize uint32
	// IdleTimeout closes an upstream connection with no stream for this
	// long; default 90s.
	IdleTimeout time.Duration
	// ClientIdleTimeout closes a client connection with no stream for this
	// long (with a GOAWAY); default 0, never: the application decides, as it
	// would without the mesh.
	ClientIdleTimeout time.Duration
	// PingInterval checks an upstream connection with a PING after this
	// long without a frame, and closes it if PingTimeout passes without
	// the answer; defaults 30s and 15s.
	PingInterval, PingTimeout time.Duration
	// ConnectTimeout bounds the connect to a passthrough destination
	// (cluster endpoints use their cluster's connect timeout); default 5s.
	ConnectTimeout time.Duration
	// MaxReplayBytes is how much of a request body is kept so a request
	// the upstream refused unprocessed (REFUSED_STREAM, GOAWAY) can be sent
	// again elsewhere; a request that sent more is not retried. Default
	// 64 KiB.
	MaxReplayBytes int
	// DrainPingTimeout is how long each PING of a graceful drain (the
	// barrier PING, then the one after the GOAWAY with the highest stream
	// id) waits for the client's answer before the drain moves on, the
	// server's frames held meanwhile for the first; default 1s.
	DrainPingTimeout time.Duration
	// Engine chooses the implementation: EngineFrames (the default),
	// weir's frame-level proxy, or EngineXNet, x/net/http2's server and
	// transport (the first implementation, kept as a fallback).
	Engine string
}

// HTTP/2 engines (Options.Engine).
const (
	// EngineFrames relays frames: one reader goroutine per connection on
	// each side, a write loop that sends everything queued in one write,
	// streams mapped between a client connection and multiplexed upstream
	// connections, flow control window by window.
	EngineFrames = "frames"
	// EngineXNet serves clients with x/net/http2's Server and forwards
	// with its Transport: a goroutine per stream on each side, a write
	// and a flush per frame; several times the CPU per request.
	EngineXNet = "xnet"
)

// Validate reports a setting that cannot work.
func (o Options) Validate() error {
	switch o.Engine {
	case "", EngineFrames, EngineXNet:
	default:
		return fmt.Errorf("h2: engine %q: want %q or %q", o.Engine, EngineFrames, EngineXNet)
	}
	return nil
}

func (o Options) withDefaults() Options {
	set := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	if o.MaxConcurrentStreams == 0 {
		o.MaxConcurrentStreams = 1000
	}
	if o.MaxHeaderListSize == 0 {
		o.MaxHeaderListSize = 64 << 10
	}
	if o.MaxReplayBytes == 0 {
		o.MaxReplayBytes = 64 << 10
	}
	set(&o.IdleTimeout, 90*time.Second)
	set(&o.PingInterval, 30*time.Second)
	set(&o.PingTimeout, 15*time.Second)
	set(&o.ConnectTimeout, 5*time.Second)
	set(&o.DrainPingTimeout, time.Second)
	if o.Engine == "" {
		o.Engine = EngineFrames
	}
	return o
}

// Pool holds one pod's upstream HTTP/2 connections, per endpoint. Each
// connection multiplexes many streams: a request takes a stream on an open
// connection to its endpoint that has room under the peer's
// SETTINGS_MAX_CONCURRENT_STREAMS, and a new connection is dialled only
// when none has. A connection that received GOAWAY, failed or sat idle
// leaves the pool. Upstream sockets are made by the Upstream's Dial, so a
// Pool must serve one pod (one network namespace) only. Safe for
// concurrent use.
type Pool struct {
	opt Options
	t   *http2.Transport
	fp  framePool

	mu     sync.Mutex
	eps    map[netip.AddrPort]*endpointConns
	closed bool
}

// endpointConns are the open connections to one address; dialing is
// non-nil (and closed when done) while one connection is being dialled, so
// a burst of requests to a new endpoint makes one connection, not one each.
type endpointConns struct {
	conns   []*http2.ClientConn
	dialing chan struct{}
}

// errPoolClosed fails requests that arrive after Close.
var errPoolClosed = errors.New("h2: upstream pool closed")

// NewPool makes an empty pool.
func NewPool(opt Options) *Pool {
	opt = opt.withDefaults()
	p := &Pool{opt: opt, eps: map[netip.AddrPort]*endpointConns{}}
	p.fp = framePool{opt: &p.opt, eps: map[netip.AddrPort]*fendpoint{}}
	p.t = &http2.Transport{
		ConnPool:           (*connPool)(p),
		AllowHTTP:          true,
		DisableCompression: true, // never add Accept-Encoding: the client decides
		MaxHeaderListSize:  opt.MaxHeaderListSize,
		IdleConnTimeout:    opt.IdleTimeout,
		ReadIdleTimeout:    opt.PingInterval,
		PingTimeout:        opt.PingTimeout,
		// The pool dials every connection itself; the transport must never.
		DialTLSContext: func(context.Context, string, string, *tls.Config) (net.Conn, error) {
			return nil, errors.New("h2: the transport must not dial")
		},
	}
	return p
}

// Close closes every upstream connection, interrupting their streams, and
// fails later requests. Call it when the pod goes away.
func (p *Pool) Close() {
	p.mu.Lock()
	p.closed = true
	var all []*http2.ClientConn
	for _, e := range p.eps {
		all = append(all, e.conns...)
	}
	p.eps = map[netip.AddrPort]*endpointConns{}
	p.mu.Unlock()
	for _, cc := range all {
		cc.Close()
	}
	p.fp.close()
}

// conn returns a connection to addr with a stream reserved for one
// request, dialling one with dial when no open connection has room.
func (p *Pool) conn(ctx context.Context, addr netip.AddrPort, dial func(context.Context) (*net.TCPConn, error)) (*http2.ClientConn, error) {
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, errPoolClosed
		}
		e := p.eps[addr]
		if e == nil {
			e = &endpointConns{}
			p.eps[addr] = e
		}
		for _, cc := range e.conns {
			if cc.ReserveNewRequest() {
				p.mu.Unlock()
				return cc, nil
			}
		}
		if ch := e.dialing; ch != nil {
			p.mu.Unlock()
			select {
			case <-ch:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			p.mu.Lock()
			continue
		}
		ch := make(chan struct{})
		e.dialing = ch
		p.mu.Unlock()

		cc, err := p.dial(ctx, dial)

		p.mu.Lock()
		e.dialing = nil
		close(ch)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.closed || p.eps[addr] != e {
			// Closed while dialling: the connection has no pool to join.
			p.mu.Unlock()
			cc.Close()
			return nil, errPoolClosed
		}
		e.conns = append(e.conns, cc)
	}
}

func (p *Pool) dial(ctx context.Context, dial func(context.Context) (*net.TCPConn, error)) (*http2.ClientConn, error) {
	c, err := dial(ctx)
	if err != nil {
		return nil, err
	}
	cc, err := p.t.NewClientConn(c)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("h2: start upstream connection to %s: %w", c.RemoteAddr(), err)
	}
	return cc, nil
}

// forget removes cc from the pool (it received GOAWAY, broke, or idled
// out).
func (p *Pool) forget(cc *http2.ClientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for addr, e := range p.eps {
		if i := slices.Index(e.conns, cc); i >= 0 {
			e.conns = slices.Delete(e.conns, i, i+1)
			if len(e.conns) == 0 && e.dialing == nil {
				delete(p.eps, addr)
			}
			return
		}
	}
}

// connPool is the face of the Pool the http2.Transport sees: the
// transport asks it for a connection for every attempt of a request, so
// its own retry of a stream the upstream refused unprocessed comes back
// here, where the attempt moves to another endpoint.
type connPool Pool

var _ http2.ClientConnPool = (*connPool)(nil)

// GetClientConn picks the endpoint of the request's next attempt (see
// attempt.next) and returns a connection to it with a stream reserved.
func (cp *connPool) GetClientConn(req *http.Request, _ string) (*http2.ClientConn, error) {
	a, ok := req.Context().Value(attemptKey{}).(*attempt)
	if !ok {
		return nil, errors.New("h2: request without an attempt")
	}
	return a.next(req.Context(), (*Pool)(cp))
}

// MarkDead is called by the transport when a connection received GOAWAY,
// failed or idled out.
func (cp *connPool) MarkDead(cc *http2.ClientConn) { (*Pool)(cp).forget(cc) }
