package h2

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
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

	// For the access log.
	action   *route.Action
	a        *attempt // nil until forwarded
	grpcCode int      // -1: none
	isLocal  bool
	reason   string // a local reply's
	resLen   int64  // the response's declared length; -1: unknown

	// Set by the routing decision for its local reply: the gRPC code
	// (0: the one the status maps to) and retry-after seconds (0: none).
	localGRPC, retryAfter int
	// x is the request's record for metrics and tracing (l7.Upstream.End).
	x l7.Exchange
}

// forward sends the request to d's cluster (or, with none, to the
// original destination) and relays the answer: headers, body as it comes,
// trailers. The rule's timeouts and the client's grpc-timeout bound it;
// its retry policy may send it again, to another endpoint, on a listed
// answer or a per-try timeout.
func (ex *exchange) forward(d l7.Decision) {
	r := ex.r
	a := &attempt{up: ex.h.up, c: d.Cluster, pool: ex.h.pool, proto: ex.proto}
	ex.a = a
	var policy *route.RetryPolicy
	var tryTimeout time.Duration
	var deadline time.Time
	if act := d.Action; act != nil {
		policy, tryTimeout = act.Retry, act.TryTimeout
		if act.Timeout > 0 {
			deadline = ex.start.Add(act.Timeout)
		}
	}
	if ex.grpc {
		if gt, ok := parseGRPCTimeout(r.Header["Grpc-Timeout"]); ok {
			if dl := ex.start.Add(gt); deadline.IsZero() || dl.Before(deadline) {
				deadline = dl
			}
		}
	}
	ctx := r.Context()
	if !deadline.IsZero() {
		if !time.Now().Before(deadline) {
			// Expired on arrival: fail fast, nothing goes upstream.
			ex.local(http.StatusGatewayTimeout, l7.ReasonTimeout, "")
			return
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline)
		defer cancel()
	}
	// expired is the request's deadline gone, or so nearly gone that an
	// upstream given the rest of it (grpc-timeout) may already have given
	// up and reset the stream, as grpc-go does.
	expired := func() bool {
		return ctx.Err() != nil || (!deadline.IsZero() && time.Until(deadline) < deadlineSlack)
	}
	out, body := ex.outbound(ctx, d.Action, a)
	if body != nil {
		defer body.finish()
	}
	// Status retries resend a request only if it is safe: an idempotent
	// method or a gRPC call, with a body wholly received and kept.
	safe := func() bool { return body == nil || body.complete() }
	idempotent := l7.Idempotent(r.Method)
	retries := 0
	var res *http.Response
	for {
		if ex.grpc && !deadline.IsZero() {
			out.Header["Grpc-Timeout"] = []string{formatGRPCTimeout(time.Until(deadline))}
		}
		var err error
		res, err = ex.try(out, tryTimeout)
		retryable := false
		code := -1
		switch {
		case err != nil:
			retryable = errors.Is(err, errTryTimeout) && (idempotent || (ex.grpc && policy.RetryGRPC(grpcDeadlineExceeded)))
		case ex.grpc:
			code = grpcStatusOf(res.Header)
			retryable = policy.RetryGRPC(code) || (idempotent && policy.RetryStatus(res.StatusCode))
		default:
			retryable = idempotent && policy.RetryStatus(res.StatusCode)
		}
		if err == nil && !retryable {
			break
		}
		if err != nil && r.Context().Err() != nil {
			// The client reset the stream or went away: nobody to answer,
			// and not the upstream's fault.
			a.lease.Done(nil)
			ex.count(0)
			return
		}
		// The outcome goes on the lease before the next pick. The
		// request's own deadline passing (route timeout, the client's
		// grpc-timeout) is not the endpoint's fault.
		if err != nil {
			if expired() {
				err = context.DeadlineExceeded
				a.lease.Done(nil)
			} else {
				a.lease.Done(err)
			}
		} else {
			a.lease.Done(l7.Verdict(res.StatusCode, code, nil))
		}
		if retryable && a.c != nil && policy != nil && retries < policy.Attempts && !expired() && safe() &&
			(deadline.IsZero() || time.Until(deadline) > policy.Backoff+deadlineSlack) {
			if next, perr := a.c.Pick(ex.h.up.Key, a.lease); perr == nil {
				if res != nil {
					res.Body.Close()
				}
				retries++
				a.retries++
				ex.h.up.Metrics.Retry(ex.proto)
				a.lease, a.ready = next, true
				if !ex.backoff(ctx, policy.Backoff) {
					next.Release()
					a.lease = nil
					err = context.DeadlineExceeded
				} else if out.GetBody != nil {
					b, gerr := out.GetBody()
					if gerr == nil {
						out.Body = b
						continue
					}
					next.Release()
					a.lease, err = nil, gerr // res is closed: answer locally
				} else {
					continue
				}
			}
		}
		if err == nil {
			break // relay the answer after all
		}
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
	if ex.h.http1 && len(res.Trailer) > 0 {
		// An HTTP/1.1 answer carries trailers only chunked.
		delete(hdr, "Content-Length")
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
		code := -1
		if ex.grpc {
			code = grpcStatusOf(res.Header)
			if code < 0 {
				code = grpcStatusOf(res.Trailer)
			}
		}
		a.lease.Done(l7.Verdict(res.StatusCode, code, nil))
		ex.grpcCode, ex.resLen = code, res.ContentLength
		ex.count(res.StatusCode)
	case upErr == errClientGone || r.Context().Err() != nil:
		a.lease.Done(nil)
		ex.count(0)
	case expired():
		// The request's deadline passed mid-answer.
		a.lease.Done(nil)
		if ex.grpc {
			ex.grpcCode = grpcDeadlineExceeded
		}
		ex.count(http.StatusGatewayTimeout)
		if ex.grpc {
			hdr[http.TrailerPrefix+"Grpc-Status"] = []string{strconv.Itoa(grpcDeadlineExceeded)}
			hdr[http.TrailerPrefix+"Grpc-Message"] = []string{l7.ReasonTimeout}
			return
		}
		panic(http.ErrAbortHandler)
	default:
		// The upstream broke the stream mid-answer.
		a.lease.Done(upErr)
		ex.h.up.Log.Debug("h2: upstream answer broke", "path", ex.path, "err", upErr)
		if ex.grpc {
			ex.grpcCode = grpcUnavailable
		}
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

// deadlineSlack is how close to its deadline a request counts as expired:
// no retry starts, and an upstream's reset is taken for the deadline.
const deadlineSlack = 10 * time.Millisecond

// errTryTimeout is an attempt that got no response head within the rule's
// backendRequest timeout.
var errTryTimeout = fmt.Errorf("h2: no response within the per-try timeout: %w", context.DeadlineExceeded)

// try makes one attempt: the round trip up to the response head, within
// timeout (0: none) but not beyond it, so the body may stream.
func (ex *exchange) try(out *http.Request, timeout time.Duration) (*http.Response, error) {
	if timeout <= 0 {
		return ex.h.pool.t.RoundTrip(out)
	}
	ctx, cancel := context.WithCancelCause(out.Context())
	t := time.AfterFunc(timeout, func() { cancel(errTryTimeout) })
	res, err := ex.h.pool.t.RoundTrip(out.WithContext(ctx))
	if !t.Stop() {
		// Fired: the attempt's context is gone, its body would break.
		if res != nil {
			res.Body.Close()
		}
		return nil, errTryTimeout
	}
	if err != nil {
		cancel(nil)
		return nil, err
	}
	// The context lives on with the body; the request's own context ends
	// it at the latest.
	context.AfterFunc(out.Context(), func() { cancel(nil) })
	return res, nil
}

// backoff waits d before a retry; false when ctx ends first.
func (ex *exchange) backoff(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return false
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// grpcStatusOf reads grpc-status from h; -1 when absent or malformed.
func grpcStatusOf(h http.Header) int {
	v := h["Grpc-Status"]
	if len(v) == 0 {
		return -1
	}
	n, err := strconv.Atoi(v[0])
	if err != nil || n < 0 {
		return -1
	}
	return n
}

// parseGRPCTimeout reads a grpc-timeout header: at most 8 digits and a
// unit (H, M, S, m, u, n), as the gRPC over HTTP/2 spec says.
func parseGRPCTimeout(v []string) (time.Duration, bool) {
	if len(v) == 0 || len(v[0]) < 2 || len(v[0]) > 9 {
		return 0, false
	}
	s := v[0]
	n, err := strconv.ParseInt(s[:len(s)-1], 10, 64)
	if err != nil || n < 0 {
		return 0, false
	}
	var unit time.Duration
	switch s[len(s)-1] {
	case 'H':
		unit = time.Hour
	case 'M':
		unit = time.Minute
	case 'S':
		unit = time.Second
	case 'm':
		unit = time.Millisecond
	case 'u':
		unit = time.Microsecond
	case 'n':
		unit = time.Nanosecond
	default:
		return 0, false
	}
	return time.Duration(n) * unit, true
}

// formatGRPCTimeout writes d as a grpc-timeout value in the finest unit
// that fits 8 digits, rounding up so the upstream never gets more time
// than is left.
func formatGRPCTimeout(d time.Duration) string {
	if d <= 0 {
		return "1n"
	}
	for _, u := range []struct {
		d time.Duration
		c string
	}{{time.Nanosecond, "n"}, {time.Microsecond, "u"}, {time.Millisecond, "m"}, {time.Second, "S"}, {time.Minute, "M"}, {time.Hour, "H"}} {
		if n := (d + u.d - 1) / u.d; n < 1e8 {
			return strconv.FormatInt(int64(n), 10) + u.c
		}
	}
	return "99999999H"
}

// outbound builds the upstream request: end-to-end headers through the
// rule's RequestHeaders filter, :authority and :path through its rewrite,
// the body streamed (and kept for a retry while small).
func (ex *exchange) outbound(ctx context.Context, act *route.Action, a *attempt) (*http.Request, *replayBody) {
	r := ex.r
	out := r.WithContext(context.WithValue(ctx, attemptKey{}, a))
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
	if ex.x.Traceparent != "" {
		hdr["Traceparent"] = []string{ex.x.Traceparent}
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
	ex.h.up.End(&ex.x, status, ex.grpcCode)
	if ex.h.up.AccessLog != nil {
		ex.access(status)
	}
}

// access logs the request if the access log wants it. Sampling is
// decided before anything of the line is gathered.
func (ex *exchange) access(status int) {
	al := ex.h.up.AccessLog
	if !al.Want(l7.Failed(status, ex.grpcCode, ex.isLocal)) {
		return
	}
	r := ex.r
	e := l7.Entry{
		Time: ex.start, Pod: ex.h.up.Pod, Protocol: ex.proto, Method: r.Method,
		Authority: r.Host, Path: ex.path, Status: status, GRPC: ex.grpcCode,
		Local: ex.isLocal, Reason: ex.reason, BytesIn: r.ContentLength, BytesOut: -1,
		Duration: time.Since(ex.start), Route: l7.RouteName(ex.action),
	}
	if a := ex.a; a != nil {
		e.Upstream, e.Retries = a.addr, a.retries
	}
	if !ex.isLocal && status != 0 {
		e.BytesOut = ex.resLen
	}
	if ex.x.Traceparent != "" {
		e.TraceID = l7.TraceID([]byte(ex.x.Traceparent))
	} else if tp := r.Header["Traceparent"]; len(tp) > 0 {
		e.TraceID = l7.TraceID([]byte(tp[0]))
	}
	al.Write(&e)
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
	ex.isLocal, ex.reason = true, reason
	code := grpcCode(status)
	if ex.localGRPC != 0 {
		code = ex.localGRPC
	}
	if ex.grpc && location == "" {
		ex.grpcCode = code
	}
	ex.count(status)
	hdr := ex.w.Header()
	if ex.retryAfter > 0 {
		hdr["Retry-After"] = []string{strconv.Itoa(ex.retryAfter)}
	}
	if ex.grpc && location == "" {
		hdr["Content-Type"] = []string{"application/grpc"}
		hdr["Grpc-Status"] = []string{strconv.Itoa(code)}
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
	ready bool           // lease is picked for the next attempt (a status retry)
	proto int            // counts retries

	// For the access log: the endpoint of the latest attempt and the
	// requests sent again. Written by the transport's dial, read once the
	// round trip is over.
	addr    netip.AddrPort
	retries int
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
		a.addr = dst
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
		l := a.lease
		if a.ready {
			a.ready = false
		} else {
			retry := a.lease != nil
			var err error
			l, err = a.c.Pick(a.up.Key, a.lease)
			if err != nil {
				a.lease = nil
				if dialErr != nil {
					return nil, dialErr
				}
				return nil, err
			}
			if retry {
				a.up.Metrics.Retry(a.proto)
				a.retries++
			}
			a.lease = l
		}
		a.addr = l.Endpoint()
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
