package h2

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

// http1IdleTimeout closes an HTTP/1.1 client connection served by
// ServeHTTP1 that sends no next request (or not its whole head) this long
// after the previous answer, unless Options.ClientIdleTimeout is set: the
// HTTP/1.1 codec's default client idle timeout.
const http1IdleTimeout = 60 * time.Second

// ServeHTTP1 proxies one downstream HTTP/1.1 connection to HTTP/2
// upstreams, for a service whose endpoints serve only HTTP/2 (its
// upstreamProtocol is http2): every request is routed and balanced on its
// own, exactly as an HTTP/2 client's stream is, and sent as a stream on
// the pool's multiplexed h2c connections; the answer goes back as
// HTTP/1.1 (chunked when the upstream gave no length, with its trailers).
// net/http's server reads the client side (keep-alive, chunked bodies,
// Expect: 100-continue, pipelining answered in order): this is a
// compatibility path, not the HTTP/1.1 codec's zero-allocation one.
// CONNECT is answered 501 and Upgrade (WebSocket, h2c) is ignored, as
// RFC 9110 §7.8 lets a server do: an HTTP/2 upstream would need extended
// CONNECT (RFC 8441) for either. A drain (up.Draining)
// answers the request in flight with Connection: close and closes an idle
// connection. ServeHTTP1 returns when the connection is closed, by either
// side or by ctx ending, once its last request's handler has.
func ServeHTTP1(ctx context.Context, down net.Conn, up *l7.Upstream, pool *Pool) {
	h := &handler{up: up, pool: pool, http1: true}
	ln := newOneConnListener(down)
	hs := &http.Server{
		Handler:        http.HandlerFunc(h.serveHTTP1),
		MaxHeaderBytes: int(pool.opt.MaxHeaderListSize),
		IdleTimeout:    http1IdleTimeout,
		ErrorLog:       slog.NewLogLogger(up.Log.Handler(), slog.LevelDebug),
		BaseContext:    func(net.Listener) context.Context { return ctx },
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateClosed || st == http.StateHijacked {
				ln.Close()
			}
		},
	}
	if pool.opt.ClientIdleTimeout > 0 {
		hs.IdleTimeout = pool.opt.ClientIdleTimeout
	}
	// A head that trickles in is bounded like an idle connection, as the
	// HTTP/1.1 codec bounds it.
	hs.ReadHeaderTimeout = hs.IdleTimeout
	stop := context.AfterFunc(ctx, func() { hs.Close() })
	defer stop()
	served := make(chan struct{})
	go func() {
		select {
		case <-up.Draining:
			// Closes the connection if idle, else after the answer in
			// flight, which carries Connection: close.
			_ = hs.Shutdown(context.Background())
		case <-served:
		}
	}()
	_ = hs.Serve(ln)
	close(served)
	h.wait()
}

// serveHTTP1 adapts an HTTP/1.1 request to what serve expects of an
// HTTP/2 one, then serves it. Its hop-by-hop fields (Connection and the
// fields it names, Upgrade, Keep-Alive, Transfer-Encoding) stay behind,
// as for any request crossing to HTTP/2.
func (h *handler) serveHTTP1(w http.ResponseWriter, r *http.Request) {
	if r.URL.IsAbs() {
		// The absolute form: its authority is already r.Host.
		r.RequestURI = r.URL.RequestURI()
	}
	h.ServeHTTP(&drainWriter{ResponseWriter: w, draining: h.up.Draining}, r)
}

// drainWriter adds Connection: close to an answer whose head is written
// after a drain began. ServeHTTP1's Shutdown does that too, but from
// another goroutine: an answer written before Shutdown got going would go
// out keep-alive, and the client could send its next request into the
// close.
type drainWriter struct {
	http.ResponseWriter
	draining <-chan struct{}
	final    bool // the final (non-1xx) head was written
}

func (d *drainWriter) head(code int) {
	if d.final || code < 200 {
		return
	}
	d.final = true
	select {
	case <-d.draining:
		d.Header().Set("Connection", "close")
	default:
	}
}

func (d *drainWriter) WriteHeader(code int) {
	d.head(code)
	d.ResponseWriter.WriteHeader(code)
}

func (d *drainWriter) Write(b []byte) (int, error) {
	d.head(http.StatusOK)
	return d.ResponseWriter.Write(b)
}

// FlushError keeps serve's flushes working through the wrapper.
func (d *drainWriter) FlushError() error {
	d.head(http.StatusOK)
	return http.NewResponseController(d.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (d *drainWriter) Unwrap() http.ResponseWriter { return d.ResponseWriter }

// oneConnListener hands out one connection, then blocks until closed, so
// an http.Server serves exactly that connection.
type oneConnListener struct {
	mu     sync.Mutex
	c      net.Conn // nil once accepted
	addr   net.Addr
	closed chan struct{}
	once   sync.Once
}

func newOneConnListener(c net.Conn) *oneConnListener {
	return &oneConnListener{c: c, addr: c.LocalAddr(), closed: make(chan struct{})}
}

// errListenerDone ends the server's accept loop.
var errListenerDone = errors.New("h2: the connection was served")

func (l *oneConnListener) Accept() (net.Conn, error) {
	l.mu.Lock()
	c := l.c
	l.c = nil
	l.mu.Unlock()
	if c != nil {
		return c, nil
	}
	<-l.closed
	return nil, errListenerDone
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() {
		l.mu.Lock()
		c := l.c
		l.c = nil
		l.mu.Unlock()
		if c != nil {
			// Closed before the server took it.
			c.Close()
		}
		close(l.closed)
	})
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return l.addr }
