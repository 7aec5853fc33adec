package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// exchange is one request on its way through the proxy.
type exchange struct {
	h           *handler
	w           http.ResponseWriter
	r           *http.Request
	start       time.Time
	proto       int  // l7.ProtoHTTP2 or l7.ProtoGRPC
	grpc        bool // content-type application/grpc*: local errors are gRPC statuses
	path, query string
}

// forward sends the request to d's cluster (or, with none, to the
// original destination) and relays the answer: headers, body as it comes,
// trailers.
func (ex *exchange) forward(d l7.Decision) {
	r := ex.r
	a := &attempt{up: ex.h.up, c: d.Cluster, pool: ex.h.pool}
	out, body := ex.outbound(d.Action, a)
	if body != nil {
		defer body.finish()
	}
	res, err := ex.h.pool.t.RoundTrip(out)
	if err != nil {
		if r.Context().Err() != nil {
			// The client reset the stream or went away: nobody to answer,
			// and not the upstream's fault.
			a.lease.Done(nil)
			ex.count(0)
			return
		}
		a.lease.Done(err)
		ex.h.up.Log.Debug("h2: upstream request failed", "path", ex.path, "err", err)
		status, reason := l7.ErrorStatus(err)
		ex.local(status, reason, "")
		return
	}
	defer res.Body.Close()

	hdr := ex.w.Header()
	copyEndToEnd(hdr, res.Header)
	// The server would add what the upstream left out; an absent field
	// stays absent.
	for _, k := range []string{"Content-Type", "Content-Length", "Date"} {
		if _, ok := hdr[k]; !ok {
			hdr[k] = nil
		}
	}
	if d.Action != nil && d.Action.ResponseHeaders != nil {
		modify(hdr, d.Action.ResponseHeaders, nil)
	}

	var upErr error
	if res.ContentLength == 0 {
		// No body: read to the end of the stream before answering, so that
		// an upstream's trailers-only answer (gRPC's status-only reply)
		// reaches the client as one HEADERS frame with END_STREAM.
		_, upErr = io.Copy(io.Discard, res.Body)
		ex.w.WriteHeader(res.StatusCode)
	} else {
		ex.w.WriteHeader(res.StatusCode)
		if err := flusher(ex.w)(); err != nil {
			upErr = errClientGone
		} else {
			upErr = copyBody(ex.w, res.Body)
		}
	}
	switch {
	case upErr == nil:
		for k, vv := range res.Trailer {
			if len(vv) > 0 && !connectionSpecific(k) {
				hdr[http.TrailerPrefix+k] = vv
			}
		}
		a.lease.Done(nil)
		ex.count(res.StatusCode)
	case upErr == errClientGone || r.Context().Err() != nil:
		a.lease.Done(nil)
		ex.count(0)
	default:
		// The upstream broke the stream mid-answer.
		a.lease.Done(upErr)
		ex.h.up.Log.Debug("h2: upstream answer broke", "path", ex.path, "err", upErr)
		ex.count(http.StatusBadGateway)
		if ex.grpc {
			// A gRPC client understands a status in the trailers better
			// than a reset.
			hdr[http.TrailerPrefix+"Grpc-Status"] = []string{strconv.Itoa(grpcUnavailable)}
			hdr[http.TrailerPrefix+"Grpc-Message"] = []string{l7.ReasonUpstreamFail}
			return
		}
		// Reset the client's stream, as the upstream reset ours.
		panic(http.ErrAbortHandler)
	}
}

// outbound builds the upstream request: end-to-end headers through the
// rule's RequestHeaders filter, :authority and :path through its rewrite,
// the body streamed (and kept for a retry while small).
func (ex *exchange) outbound(act *route.Action, a *attempt) (*http.Request, *replayBody) {
	r := ex.r
	out := r.WithContext(context.WithValue(r.Context(), attemptKey{}, a))
	out.RequestURI = ""
	authority, path := r.Host, ex.path
	hdr := make(http.Header, len(r.Header)+1)
	copyEndToEnd(hdr, r.Header)
	if act != nil {
		if act.RequestHeaders != nil {
			modify(hdr, act.RequestHeaders, &authority)
		}
		if rw := act.Rewrite; rw != nil {
			if rw.Hostname != "" {
				authority = rw.Hostname
			}
			path = route.RewritePath(rw.Path, path, act.PrefixMatched)
		}
	}
	if _, ok := hdr["User-Agent"]; !ok {
		// Present but empty: the transport adds its own User-Agent only
		// when the field is missing.
		hdr["User-Agent"] = nil
	}
	out.Header = hdr
	out.Host = authority
	out.URL = &url.URL{Scheme: "http", Host: authority, Opaque: path, RawQuery: ex.query}
	if strings.HasPrefix(path, "//") {
		// An opaque "//x" would be read as scheme-relative.
		p, err := url.PathUnescape(path)
		if err != nil {
			p = path
		}
		out.URL.Opaque, out.URL.Path, out.URL.RawPath = "", p, path
	}
	if r.ContentLength == 0 && len(r.Trailer) == 0 {
		out.Body, out.GetBody = http.NoBody, nil
		return out, nil
	}
	b := newReplayBody(r.Body, ex.h.pool.opt.MaxReplayBytes)
	out.Body = b.attempt()
	out.GetBody = b.again
	return out, b
}

// count records the request; status 0 means no answer reached the client.
func (ex *exchange) count(status int) {
	ex.h.up.Metrics.Request(ex.proto, status, time.Since(ex.start).Seconds())
}

// gRPC status codes of local replies.
const (
	grpcDeadlineExceeded = 4
	grpcUnimplemented    = 12
	grpcInternal         = 13
	grpcUnavailable      = 14
)

// grpcCode maps a local reply's HTTP status to the gRPC status a gRPC
// client is given instead.
func grpcCode(status int) int {
	switch status {
	case http.StatusNotFound:
		return grpcUnimplemented
	case http.StatusGatewayTimeout:
		return grpcDeadlineExceeded
	case http.StatusBadGateway, http.StatusServiceUnavailable:
		return grpcUnavailable
	}
	return grpcInternal
}

// local answers the request from the proxy: a redirect to location, or
// an error whose body (or, for gRPC, grpc-message) is the reason. A gRPC
// client gets HTTP 200 with a trailers-only grpc-status, as gRPC servers
// answer errors. Requests and local replies are counted under the HTTP
// status (for gRPC, the status the gRPC code stands for).
func (ex *exchange) local(status int, reason, location string) {
	ex.h.up.Metrics.Local(status, reason)
	ex.count(status)
	hdr := ex.w.Header()
	if ex.grpc && location == "" {
		hdr["Content-Type"] = []string{"application/grpc"}
		hdr["Grpc-Status"] = []string{strconv.Itoa(grpcCode(status))}
		// Reasons are plain ASCII words: no percent-encoding needed.
		hdr["Grpc-Message"] = []string{reason}
		hdr["Content-Length"] = nil
		ex.w.WriteHeader(http.StatusOK)
		return
	}
	if location != "" {
		hdr["Location"] = []string{location}
		ex.w.WriteHeader(status)
		return
	}
	hdr["Content-Type"] = []string{"text/plain; charset=utf-8"}
	ex.w.WriteHeader(status)
	io.WriteString(ex.w, reason+"\n")
}

// attempt carries a request's balancing state into the pool's
// GetClientConn, which the transport calls once per attempt.
type attempt struct {
	up    *l7.Upstream
	c     *cluster.Cluster // nil: passthrough to up.Dst
	pool  *Pool
	lease *cluster.Lease // the current attempt's; nil before the first pick or after a failed one
}

type attemptKey struct{}

// next picks the endpoint of the next attempt and returns a connection to
// it with a stream reserved. The first call picks afresh; a later one is
// the transport retrying a stream the upstream refused unprocessed, and
// picks another endpoint (Pick with the previous lease), within the
// cluster's retry limits. A failed connect moves to another endpoint too.
func (a *attempt) next(ctx context.Context, p *Pool) (*http2.ClientConn, error) {
	if a.c == nil {
		dst := a.up.Dst
		return p.conn(ctx, dst, func(ctx context.Context) (*net.TCPConn, error) {
			ctx, cancel := context.WithTimeout(ctx, p.opt.ConnectTimeout)
			defer cancel()
			c, err := a.up.Dial(ctx, dst)
			if err != nil {
				return nil, fmt.Errorf("h2: connect to %s: %w", dst, err)
			}
			return c, nil
		})
	}
	var dialErr error
	for {
		l, err := a.c.Pick(a.up.Key, a.lease)
		if err != nil {
			a.lease = nil
			if dialErr != nil {
				return nil, dialErr
			}
			return nil, err
		}
		a.lease = l
		cc, err := p.conn(ctx, l.Endpoint(), func(ctx context.Context) (*net.TCPConn, error) {
			c, err := l.Dial(ctx, a.up.Dial)
			if err != nil {
				return nil, fmt.Errorf("h2: connect to %s: %w", l.Endpoint(), err)
			}
			return c, nil
		})
		if err == nil {
			return cc, nil
		}
		if ctx.Err() != nil || errors.Is(err, errPoolClosed) {
			// Neither is the endpoint's fault (a failed dial was already
			// recorded on it).
			l.Done(nil)
			a.lease = nil
			return nil, err
		}
		dialErr = err
	}
}

// Hop-by-hop and connection-specific fields: RFC 9113 §8.2.2 forbids them
// in HTTP/2 (and a request carrying one is malformed, so the server has
// already refused it); an HTTP/1 upstream's answer may still carry them.
// Host travels as :authority; Trailer is declared anew by whoever writes
// the trailers.
var hopByHop = map[string]bool{
	"Connection":        true,
	"Proxy-Connection":  true,
	"Keep-Alive":        true,
	"Transfer-Encoding": true,
	"Upgrade":           true,
	"Host":              true,
	"Trailer":           true,
}

func connectionSpecific(k string) bool { return hopByHop[http.CanonicalHeaderKey(k)] }

// copyEndToEnd copies the end-to-end fields of src to dst, both ways
// (request and response): connection-specific fields are dropped (RFC
// 9113 §8.2.2), and so are the fields a Connection header names; TE
// passes only as "trailers", the one value HTTP/2 allows (and gRPC needs).
func copyEndToEnd(dst, src http.Header) {
	conn := src["Connection"]
	for k, vv := range src {
		if hopByHop[k] {
			continue
		}
		if k == "Te" {
			if !hasToken(vv, "trailers") {
				continue
			}
			vv = []string{"trailers"}
		}
		if len(conn) > 0 && hasToken(conn, k) {
			continue
		}
		dst[k] = vv[:len(vv):len(vv)]
	}
}

// hasToken reports whether the comma-separated values vv hold token
// (case-insensitive).
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for f := range strings.SplitSeq(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}

// modify applies a Gateway API header modifier: set replaces, add
// appends, remove deletes, in that order. Connection-specific fields are
// ignored (they cannot cross an HTTP/2 hop); a host set on a request
// becomes its :authority.
func modify(h http.Header, m *route.HeaderModifier, authority *string) {
	for _, f := range m.Set {
		k := http.CanonicalHeaderKey(f.Name)
		if k == "Host" && authority != nil {
			*authority = f.Value
			continue
		}
		if hopByHop[k] {
			continue
		}
		h[k] = []string{f.Value}
	}
	for _, f := range m.Add {
		k := http.CanonicalHeaderKey(f.Name)
		if hopByHop[k] {
			continue
		}
		h[k] = append(h[k], f.Value)
	}
	for _, n := range m.Remove {
		delete(h, http.CanonicalHeaderKey(n))
	}
}
