package h2

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

// Serve proxies one downstream h2c connection until it ends: down carries
// the client's prior-knowledge preface first (it may be a conn replaying
// what the sniffer read). Every stream is routed and balanced on its own
// (see the package doc). Serve returns when the connection is closed, by
// either side, by ctx ending (which closes it at once) or after a drain
// (up.Draining) let the streams in flight finish; it returns only once
// every stream's handler has.
func Serve(ctx context.Context, down net.Conn, up *l7.Upstream, pool *Pool) {
	opt := &pool.opt
	if opt.Engine == EngineFrames {
		serveFrames(ctx, down, up, pool)
		return
	}
	dc := newDrainConn(down)
	h := &handler{up: up, pool: pool}
	hs := &http.Server{
		Handler:        h,
		MaxHeaderBytes: int(opt.MaxHeaderListSize),
		ErrorLog:       slog.NewLogLogger(up.Log.Handler(), slog.LevelDebug),
	}
	h2s := &http2.Server{
		MaxConcurrentStreams: opt.MaxConcurrentStreams,
		IdleTimeout:          opt.ClientIdleTimeout,
	}
	// ConfigureServer ties h2s to hs, so hs.Shutdown starts h2s's graceful
	// shutdown of this one connection (the second step of a drain).
	if err := http2.ConfigureServer(hs, h2s); err != nil {
		up.Log.Warn("h2: configure server", "err", err)
		down.Close()
		return
	}
	stop := context.AfterFunc(ctx, func() { dc.Close() })
	defer stop()
	served := make(chan struct{})
	go drain(up.Draining, served, dc, hs, opt.DrainPingTimeout)

	h2s.ServeConn(dc, &http2.ServeConnOpts{Context: ctx, BaseConfig: hs, Handler: h})
	dc.Close()
	close(served)
	h.wait()
}

// drain runs the two-step GOAWAY of RFC 9113 §6.8 when draining closes,
// behind a barrier: first a PING, holding the server's frames until the
// client answers (see drainConn.barrier); then a GOAWAY with the highest
// stream id and a PING, so the client stops opening streams while those
// already on the wire are still served; once that PING is answered, the
// server's own graceful shutdown sends the final GOAWAY with the last
// stream it saw, lets the streams in flight finish and closes the
// connection. A PING left unanswered for timeout moves to the next step
// all the same.
func drain(draining <-chan struct{}, served <-chan struct{}, dc *drainConn, hs *http.Server, timeout time.Duration) {
	select {
	case <-draining:
	case <-served:
		return
	}
	if !waitAnswer(dc.barrier(), served, timeout) || !waitAnswer(dc.goAway(), served, timeout) {
		return
	}
	// No listener and no HTTP/1 connection: Shutdown returns at once,
	// after starting the graceful shutdown of the HTTP/2 connection.
	_ = hs.Shutdown(context.Background())
}

// handler serves the streams of one downstream connection. Its counters
// let Serve wait for every handler, including those the server started
// just before the connection died.
type handler struct {
	up   *l7.Upstream
	pool *Pool
	// http1: the client speaks HTTP/1.1 (ServeHTTP1); its requests are
	// counted and logged as such.
	http1 bool

	mu     sync.Mutex
	active int
	closed bool
	idle   chan struct{} // closed when the last handler leaves after wait
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !h.enter() {
		return
	}
	defer h.leave()
	h.serve(w, r)
}

func (h *handler) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return false
	}
	h.active++
	return true
}

func (h *handler) leave() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.active--
	if h.active == 0 && h.idle != nil {
		close(h.idle)
		h.idle = nil
	}
}

// wait returns when no handler runs, and refuses later ones.
func (h *handler) wait() {
	h.mu.Lock()
	h.closed = true
	if h.active == 0 {
		h.mu.Unlock()
		return
	}
	idle := make(chan struct{})
	h.idle = idle
	h.mu.Unlock()
	<-idle
}

// serve handles one request: route, answer locally or forward, count.
func (h *handler) serve(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	ex := exchange{h: h, w: w, r: r, start: start, proto: l7.ProtoHTTP2, grpcCode: -1, resLen: -1}
	if isGRPC(r.Header["Content-Type"]) {
		ex.grpc, ex.proto = true, l7.ProtoGRPC
	} else if h.http1 {
		ex.proto = l7.ProtoHTTP1
	}
	ex.x.Proto, ex.x.Start = ex.proto, start
	if r.Method == http.MethodConnect {
		// CONNECT and extended CONNECT (RFC 8441) tunnel bytes, not
		// requests; the mesh does not route them.
		ex.local(http.StatusNotImplemented, l7.ReasonBadRequest, "")
		return
	}
	ex.path, ex.query = splitPathQuery(r.RequestURI)
	view := &requestView{r: r, path: ex.path, query: ex.query}
	d := h.up.Resolve(view)
	ex.action = d.Action
	h.up.Begin(&ex.x, ex.proto, start, &d, view)
	if d.Delay > 0 && !l7.Pause(r.Context(), d.Delay) {
		ex.count(0)
		return
	}
	switch {
	case d.Reason == l7.ReasonRedirect:
		rd := d.Action.Redirect
		loc := l7.RedirectLocation(rd, d.Action.PrefixMatched, "http", r.Host, ex.path, ex.query)
		ex.local(d.Status, l7.ReasonRedirect, loc)
		return
	case d.Status != 0:
		ex.localGRPC, ex.retryAfter = d.GRPC, d.RetryAfter
		ex.local(d.Status, d.Reason, "")
		return
	}
	ex.forward(d)
}

func isGRPC(ct []string) bool {
	return len(ct) > 0 && strings.HasPrefix(ct[0], "application/grpc") &&
		(len(ct[0]) == len("application/grpc") || ct[0][len("application/grpc")] == '+' || ct[0][len("application/grpc")] == ';')
}

func splitPathQuery(uri string) (path, query string) {
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		return uri[:i], uri[i+1:]
	}
	return uri, ""
}

// errClientGone marks a body copy that ended because the client went
// away: not the upstream's fault.
var errClientGone = errors.New("h2: client went away")

// copyBody streams src to w, flushing every chunk as it arrives so
// streaming calls stay real time. It tells an upstream read error (up)
// from a failed write to the client (errClientGone).
func copyBody(w http.ResponseWriter, src io.Reader) error {
	flush := flusher(w)
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return errClientGone
			}
			if ferr := flush(); ferr != nil {
				return errClientGone
			}
		}
		switch {
		case err == io.EOF:
			return nil
		case err != nil:
			return err
		}
	}
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

func flusher(w http.ResponseWriter) func() error {
	if f, ok := w.(interface{ FlushError() error }); ok {
		return f.FlushError
	}
	if f, ok := w.(http.Flusher); ok {
		return func() error { f.Flush(); return nil }
	}
	return func() error { return nil }
}
