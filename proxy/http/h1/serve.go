package h1

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/rawsock"
	"github.com/weir-mesh/weir/proxy/route"
)

// inlineCopy is the largest body sent in the same buffer as its head: a
// copy this small costs less than a second write or a writev.
const inlineCopy = 4 << 10

// bodyGrace is how long a final response waits for a request body still
// being streamed upstream to finish, before the exchange gives up on it
// and closes both connections.
const bodyGrace = 20 * time.Millisecond

// errResponseTimeout is the upstream not answering within
// ResponseHeaderTimeout; it wraps context.DeadlineExceeded so
// l7.ErrorStatus answers 504.
var errResponseTimeout = fmt.Errorf("http/1.1: no response head within the response header timeout: %w", context.DeadlineExceeded)

// Switching protocols at the wrong time: answered 502.
var (
	errUnsolicited101   = &upstreamError{errors.New("101 Switching Protocols to a request that asked for no upgrade")}
	errSwitchBeforeBody = &upstreamError{errors.New("switched protocols before the request body was sent")}
)

// errUpstreamClosed is the upstream closing before a complete response.
var errUpstreamClosed = errors.New("http/1.1: upstream closed the connection before a complete response")

// Serve proxies HTTP/1.1 requests from one downstream connection until the
// client closes it, ctx ends, the agent drains, or either side breaks the
// protocol; it closes down before returning. Each request is routed with
// up.Resolve, balanced on its own (cluster.Pick) and sent on a connection
// from pool (nil: a private pool, closed at the end). down may be any
// net.Conn (a sniffer's replaying connection); if it has CloseWrite, a
// tunnel half-closes it.
func Serve(ctx context.Context, down net.Conn, up *l7.Upstream, pool *Pool) {
	if pool == nil {
		pool = NewPool(Options{})
		defer pool.Close()
	}
	s := servers.Get().(*server)
	s.init(ctx, down, up, pool)
	stop := context.AfterFunc(ctx, s.abortFn)
	var unwatch func()
	if up.Draining != nil {
		unwatch = watchDrain(up.Draining, s)
	}
	for s.serveOne() {
	}
	if s.linger && !s.aborted.Load() {
		s.lingerClose()
	}
	// Nothing may touch s once it is back in the pool: no drain wake-up
	// (unregistered), no abort (stopped, or waited for).
	if unwatch != nil {
		unwatch()
	}
	if !stop() {
		<-s.abortDone
	}
	s.finish()
}

// server is the state of one downstream connection. Its fields belong to
// the connection's goroutine, except: the atomics (also read by the abort
// and drain wake-ups), and dr and reqBody, which belong to the body
// goroutine while it streams a request body (bodyRunning).
type server struct {
	ctx  context.Context
	down net.Conn
	// leases are the current request's attempts' leases (cluster.PickInto:
	// no allocation per pick); a retry picks into the one the current
	// attempt does not hold. Each exchange ends its lease before the next
	// request is read.
	leases [2]cluster.Lease
	// dio reads and writes down's socket with raw system calls
	// (proxy/rawsock).
	dio  rawsock.Conn
	up   *l7.Upstream
	pool *Pool
	opt  *Options
	lim  *Limits

	dr       reader
	wb       []byte // the head being written, either way
	req      reqHead
	resp     respHead
	reqBody  framer
	respBody framer
	iov      [2][]byte
	bufs     net.Buffers

	active  atomic.Pointer[upConn] // the upstream connection in use, for abort
	aborted atomic.Bool            // ctx ended
	idle    atomic.Bool            // waiting for a request head with nothing buffered
	drain   atomic.Bool            // the agent drains: close after the next response

	// downDL is the idle read deadline set on down by idleDeadline; zero
	// when another one (or none) was set since.
	downDL time.Time

	linger   bool // close with lingerClose
	tunneled bool // the connection became a tunnel (closed by it)

	// The current request's route timeout (zero: none), per-try timeout
	// and the start of its current attempt; read by the body goroutine.
	deadline   time.Time
	tryTimeout time.Duration
	tryStart   time.Time

	bodyDst     *upConn
	abortDone   chan struct{}   // abort ran (buffered)
	bodyDone    chan bodyResult // the body goroutine's outcome, buffered
	bodyRunning bool
	grace       *time.Timer

	abortFn func()

	// What the access log needs of the current request.
	al accessState
	// The current request's record for metrics and tracing.
	x l7.Exchange
}

// accessState is the current request's access log state.
type accessState struct {
	head    bool // s.req holds the request's head
	action  *route.Action
	addr    netip.AddrPort // the endpoint of the last attempt
	retries int
}

type bodyResult struct {
	err    error
	upSide bool // err is the upstream's (a write failed), not the client's
}

var servers = sync.Pool{New: func() any {
	s := &server{bodyDone: make(chan bodyResult, 1), abortDone: make(chan struct{}, 1), wb: make([]byte, 0, 4<<10)}
	s.abortFn = s.abort
	s.grace = time.NewTimer(time.Hour)
	s.grace.Stop()
	return s
}}

func (s *server) init(ctx context.Context, down net.Conn, up *l7.Upstream, pool *Pool) {
	s.ctx, s.down, s.up, s.pool = ctx, down, up, pool
	s.dio.Reset(down)
	s.opt, s.lim = &pool.opt, &pool.opt.Limits
	s.dr = reader{c: &s.dio, size: smallBuf}
	s.aborted.Store(false)
	s.idle.Store(false)
	s.drain.Store(false)
	s.linger, s.tunneled = false, false
	s.downDL = time.Time{}
}

// Lingering close bounds: how long and how much we read and discard from
// a client after our last response.
const (
	lingerTime  = time.Second
	lingerBytes = 1 << 20
)

// lingerClose ends a connection we chose to end: it half-closes, then reads
// and discards what the client still sends (a body we did not read, a
// pipelined request) until it closes, for a bounded time, and only then
// closes. Closing with unread bytes would make the kernel answer them with
// a reset, which can destroy our last response before the client reads it
// (RFC 9112 §9.6).
func (s *server) lingerClose() {
	cw, ok := s.down.(closeWriter)
	if !ok || cw.CloseWrite() != nil {
		return
	}
	s.setDownReadDeadline(time.Now().Add(lingerTime))
	s.dr.hold()
	buf := *s.dr.bp
	for n := 0; n < lingerBytes; {
		m, err := s.down.Read(buf)
		n += m
		if err != nil {
			return
		}
	}
}

func (s *server) finish() {
	s.down.Close()
	s.dr.release()
	s.req.raw, s.resp.raw = nil, nil
	s.ctx, s.down, s.up, s.pool, s.bodyDst = nil, nil, nil, nil, nil
	s.dio.Reset(nil)
	s.active.Store(nil)
	if cap(s.wb) > 64<<10 {
		s.wb = make([]byte, 0, 4<<10)
	}
	servers.Put(s)
}

// abort runs when ctx ends: it wakes every blocked read and write, and the
// loop ends at its next step.
func (s *server) abort() {
	s.aborted.Store(true)
	s.down.SetDeadline(aLongTimeAgo)
	if uc := s.active.Load(); uc != nil {
		uc.c.SetDeadline(aLongTimeAgo)
	}
	s.abortDone <- struct{}{}
}

func (s *server) draining() bool {
	if s.drain.Load() {
		return true
	}
	select {
	case <-s.up.Draining:
		s.drain.Store(true)
		return true
	default:
		return false
	}
}

// serveOne serves one request; false ends the connection.
func (s *server) serveOne() bool {
	s.al = accessState{}
	s.x = l7.Exchange{Proto: l7.ProtoHTTP1}
	if err := s.readHead(); err != nil {
		if isParseError(err) {
			s.refuse(err, time.Now())
			s.linger = true
		}
		return false
	}
	start := time.Now()
	d := s.up.Resolve(&s.req)
	s.al.head, s.al.action = true, d.Action
	s.up.Begin(&s.x, l7.ProtoHTTP1, start, &d, &s.req)
	if d.Delay > 0 && !l7.Pause(s.ctx, d.Delay) {
		s.up.End(&s.x, 0, -1)
		return false
	}
	var keep bool
	if d.Status != 0 {
		keep = s.answerLocally(d, start)
	} else {
		keep = s.forward(d, start)
	}
	if !keep && !s.tunneled {
		s.linger = true
	}
	return keep
}

func isParseError(err error) bool {
	_, le := errors.AsType[*LimitError](err)
	_, pe := errors.AsType[*protoError](err)
	return le || pe
}

// errClientGone ends a connection quietly: the client closed, went idle
// too long, or the agent drains.
var errClientGone = errors.New("http/1.1: client connection ended")

// errHandedOver ends a connection a successor agent now serves
// (Upstream.HandOff): nothing more is written to it.
var errHandedOver = errors.New("http/1.1: client connection handed over")

// readHead reads the next request head into s.req, consuming it from the
// buffer. Empty lines before a request line are skipped (RFC 9112 §2.2).
func (s *server) readHead() error {
	rd := &s.dr
	rd.shrink()
	scan, skipped, deadline, drainArmed, offered := 0, 0, false, false, false
	for {
		if rd.bp != nil {
			b := rd.buffered()
			for len(b) >= 2 && b[0] == '\r' && b[1] == '\n' {
				rd.r += 2
				b = b[2:]
				scan = 0
				if skipped += 2; skipped > s.lim.MaxRequestLine {
					return errRequestLine
				}
			}
			if len(b) > 0 {
				end, next, err := scanHead(b, scan, s.lim.MaxRequestLine, s.lim)
				if err != nil {
					return err
				}
				if end > 0 {
					if err := s.req.parse(b[:end], s.lim); err != nil {
						return err
					}
					rd.r += end
					return nil
				}
				scan = next
			}
		}
		empty := rd.bp == nil || rd.r == rd.w
		if !deadline {
			// Before idle is stored: a drain wake-up that sees idle sets
			// its shorter deadline after this one, never before.
			s.idleDeadline()
			deadline = true
		}
		if empty {
			s.idle.Store(true)
			if s.aborted.Load() {
				s.idle.Store(false)
				return errClientGone
			}
			if s.drain.Load() && !drainArmed {
				// Closing an idle keep-alive connection races with a
				// request the client is sending right now: offer it to
				// the successor, else give it a moment, answer it with
				// Connection: close if it comes.
				s.setDownReadDeadline(s.drainDeadline())
				drainArmed = true
			}
		}
		if empty {
			yieldBeforeRead()
		}
		err := rd.fill()
		if empty {
			s.idle.Store(false)
		}
		if err == errBufferFull {
			if !rd.grow(s.lim.MaxHeadBytes) {
				return &LimitError{Limit: LimitHeadBytes, Max: s.lim.MaxHeadBytes}
			}
			continue
		}
		if err != nil {
			if empty && !offered && s.up.HandOff != nil && s.drain.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				// Woken by the drain with nothing read: bytes that
				// arrived meanwhile wait in the socket, which a
				// successor takes with them.
				offered, drainArmed = true, true
				if s.offerIdle() {
					return errHandedOver
				}
				continue
			}
			return errClientGone
		}
	}
}

// Read deadlines are coarse where a timeout is a bound, not a promise to
// the route: the client's idle timeout and the response header timeout
// are set at most once per deadlineSlack-th of their length, for up to
// that much longer, instead of on every request (setting one is a timer
// update in the runtime, a cost per request for nothing on a busy
// keep-alive connection). A route's timeouts are set exactly, each time.
const deadlineSlack = 8

// coarseDeadline reports whether a read deadline dl, set earlier, still
// grants at least d from now; else it returns the deadline to set: d
// from now plus the slack.
func coarseDeadline(dl, now time.Time, d time.Duration) (time.Time, bool) {
	if !dl.IsZero() && dl.Sub(now) >= d {
		return dl, true
	}
	return now.Add(d + d/deadlineSlack), false
}

// idleDeadline makes sure the client has at least ClientIdleTimeout to
// send its next request head.
func (s *server) idleDeadline() {
	dl, ok := coarseDeadline(s.downDL, time.Now(), s.opt.ClientIdleTimeout)
	if !ok {
		s.down.SetReadDeadline(dl)
		s.downDL = dl
	}
}

// setDownReadDeadline sets an exact read deadline on the client's
// connection; the next idle wait sets its own again.
func (s *server) setDownReadDeadline(t time.Time) {
	s.down.SetReadDeadline(t)
	s.downDL = time.Time{}
}

// scanHead looks for the empty line ending a head in b, from scan on (the
// caller's previous next): it returns the head's length, or 0 and where
// to resume. It refuses a first line longer than maxLine (414 for a
// request) and a head longer than the limit (431) as soon as they are
// known, so a peer cannot make us buffer more than that.
func scanHead(b []byte, scan, maxLine int, lim *Limits) (end, next int, err error) {
	for i := scan; i < len(b); {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		k := i + j
		if k+1 < len(b) && b[k+1] == '\n' {
			end = k + 2
			break
		}
		if k+2 < len(b) && b[k+1] == '\r' && b[k+2] == '\n' {
			end = k + 3
			break
		}
		i = k + 1
	}
	if end > lim.MaxHeadBytes || (end == 0 && len(b) > lim.MaxHeadBytes) {
		if firstLineTooLong(b, maxLine) {
			return 0, 0, &LimitError{Limit: LimitRequestLine, Max: maxLine}
		}
		return 0, 0, &LimitError{Limit: LimitHeadBytes, Max: lim.MaxHeadBytes}
	}
	if end == 0 && len(b) > maxLine && firstLineTooLong(b, maxLine) {
		return 0, 0, &LimitError{Limit: LimitRequestLine, Max: maxLine}
	}
	return end, max(len(b)-2, 0), nil
}

func firstLineTooLong(b []byte, maxLine int) bool {
	// The line is allowed maxLine bytes plus its CRLF.
	n := min(len(b), maxLine+2)
	return bytes.IndexByte(b[:n], '\n') < 0 && len(b) > maxLine+1
}

// refuse answers a request that broke the protocol and ends the
// connection: nothing of it went upstream.
func (s *server) refuse(err error, start time.Time) {
	status := statusOf(err)
	s.up.Log.Debug("http/1.1 request refused", "status", status, "err", err)
	s.reply(status, l7.ReasonBadRequest, "", 0, true, start)
}

// reply writes a local reply and counts it.
func (s *server) reply(status int, reason, location string, retryAfter int, close bool, start time.Time) {
	s.up.Metrics.Local(status, reason)
	if s.x.Start.IsZero() {
		s.x.Start = start
	}
	s.up.End(&s.x, status, -1)
	if s.up.AccessLog != nil {
		s.access(status, start, true, reason)
	}
	s.wb = appendLocalReply(s.wb[:0], status, reason, location, retryAfter, close)
	s.dio.Write(s.wb)
}

// answerLocally answers a request the route decided to answer itself: 404
// no rule matched, 500 the rule has no backend, 301/302 redirect, 429 rate
// limited, or an injected abort.
func (s *server) answerLocally(d l7.Decision, start time.Time) bool {
	q := &s.req
	keep := q.keepAlive() && !s.draining() && s.skipBufferedBody()
	location := ""
	if d.Reason == l7.ReasonRedirect {
		location = l7.RedirectLocation(d.Action.Redirect, d.Action.PrefixMatched, "http",
			string(q.Host()), string(q.Path()), string(q.Query()))
	}
	s.reply(d.Status, d.Reason, location, d.RetryAfter, !keep, start)
	return keep
}

// skipBufferedBody consumes the request body if it is all buffered; false
// when it is not (or is malformed): the connection cannot go on.
func (s *server) skipBufferedBody() bool {
	q := &s.req
	if !q.hasBody() {
		return true
	}
	mode := bodyLength
	if q.chunked {
		mode = bodyChunked
	}
	s.reqBody.reset(mode, q.contentLength)
	n, done, err := s.reqBody.consume(s.dr.buffered(), s.lim)
	if err != nil || !done {
		return false
	}
	s.dr.r += n
	return true
}

// Outcomes of one attempt to send a request and get its response head.
const (
	rtOK        = iota // s.resp holds a final (or 101) response head
	rtStale            // a reused connection was closed by the server; try a fresh one, same endpoint
	rtRetry            // the endpoint failed before answering and the request may be sent again elsewhere
	rtFail             // the exchange failed: answer with the error's status
	rtClient           // the client failed (body broken or gone): end the connection
	rtClientBad        // the client sent a malformed body: answer 400 and end
)

// forward sends the request upstream and relays the response.
func (s *server) forward(d l7.Decision, start time.Time) bool {
	q := &s.req
	rd := &s.dr

	// The body: sent with the head when it is all buffered (validated
	// first, so a malformed one never leaves), else streamed by the body
	// goroutine while the response is awaited.
	var inline []byte
	streamed := false
	if q.hasBody() {
		mode := bodyLength
		if q.chunked {
			mode = bodyChunked
		}
		s.reqBody.reset(mode, q.contentLength)
		b := rd.buffered()
		n, done, err := s.reqBody.consume(b, s.lim)
		switch {
		case err != nil:
			s.refuse(err, start)
			return false
		case done:
			inline = b[:n]
			rd.r += n
		default:
			streamed = true
			s.reqBody.reset(mode, q.contentLength)
		}
	}
	act := d.Action
	if s.x.Traceparent != "" {
		act = l7.WithTraceparent(act, s.x.Traceparent)
	}
	s.wb = appendRequestHead(s.wb[:0], q, act)
	if len(inline) <= inlineCopy {
		s.wb = append(s.wb, inline...)
		inline = nil
	}
	if d.Action != nil && d.Action.Mirrors != nil {
		s.mirror(d.Action, inline, streamed)
	}

	replayable := q.idempotent && !streamed
	var policy *route.RetryPolicy
	s.deadline, s.tryTimeout = time.Time{}, 0
	if a := d.Action; a != nil {
		policy, s.tryTimeout = a.Retry, a.TryTimeout
		if a.Timeout > 0 {
			s.deadline = start.Add(a.Timeout)
		}
	}
	var lease *cluster.Lease
	if d.Cluster != nil {
		lease = &s.leases[0]
		if err := d.Cluster.PickInto(lease, s.up.Key, nil, time.Time{}); err != nil {
			return s.fail(err, streamed, start)
		}
	}
	// again moves the request to another endpoint after a failed attempt
	// whose outcome lease already holds: within the rule's attempts (when
	// counted, for answers and per-try timeouts; requests that never
	// reached an upstream are not) and the cluster's retry budget, never
	// past the request's deadline.
	retries := 0
	again := func(counted bool) bool {
		if lease == nil || s.ctx.Err() != nil || s.expired() {
			return false
		}
		if counted && (policy == nil || retries >= policy.Attempts) {
			return false
		}
		next := &s.leases[0]
		if next == lease {
			next = &s.leases[1]
		}
		if err := d.Cluster.PickInto(next, s.up.Key, lease, time.Time{}); err != nil {
			return false
		}
		if counted {
			retries++
			if !s.backoff(policy.Backoff) {
				next.Release()
				return false
			}
		}
		s.up.Metrics.Retry(l7.ProtoHTTP1)
		s.al.retries++
		lease = next
		return true
	}
	fresh := false
	var uc *upConn
	for {
		addr := s.up.Dst
		if lease != nil {
			addr = lease.Endpoint()
		}
		s.al.addr = addr
		uc = nil
		if !fresh {
			uc = s.pool.get(addr, !replayable)
		}
		if uc == nil {
			if s.expired() {
				lease.Release()
				return s.fail(errResponseTimeout, streamed, start)
			}
			c, err := s.dial(lease, addr)
			if err != nil {
				if lease != nil && s.ctx.Err() == nil {
					if again(false) {
						fresh = false
						continue
					}
				}
				lease.Done(nil) // the dial failure is already counted on the endpoint
				return s.fail(err, streamed, start)
			}
			uc = newUpConn(c, addr)
		}
		s.tryStart = time.Now()
		outcome, err := s.roundTrip(uc, inline, streamed)
		if outcome == rtOK {
			st := s.resp.status
			if replayable && policy.RetryStatus(st) {
				// Told before the next pick, which must not release the
				// lease without it.
				lease.Done(l7.Verdict(st, -1, nil))
				if again(true) {
					s.active.Store(nil)
					uc.close()
					fresh = false
					continue
				}
			}
			break
		}
		s.active.Store(nil)
		uc.close()
		switch outcome {
		case rtStale:
			fresh = true
			continue
		case rtRetry:
			lease.Done(err)
			if again(false) {
				fresh = false
				continue
			}
			return s.fail(err, streamed, start)
		case rtClient:
			lease.Done(nil)
			s.up.End(&s.x, 0, -1)
			if s.up.AccessLog != nil {
				s.access(0, start, false, "")
			}
			return false
		case rtClientBad:
			lease.Done(nil)
			s.refuse(err, start)
			return false
		}
		if err == errResponseTimeout && s.expired() {
			// The request's own deadline: not the endpoint's fault.
			lease.Done(nil)
			return s.fail(err, streamed, start)
		}
		lease.Done(l7.Verdict(0, -1, err))
		if err == errResponseTimeout && replayable && again(true) {
			// A per-try timeout, with time left for another.
			fresh = false
			continue
		}
		return s.fail(err, streamed, start)
	}
	return s.respond(uc, lease, d.Action, streamed, start)
}

// dial connects to addr: through the lease (the cluster's connect timeout,
// and the outcome recorded on the endpoint) or, for passthrough, with our
// connect timeout.
func (s *server) dial(lease *cluster.Lease, addr netip.AddrPort) (*net.TCPConn, error) {
	if lease != nil {
		return lease.Dial(s.ctx, s.up.Dial)
	}
	ctx, cancel := context.WithTimeout(s.ctx, s.opt.ConnectTimeout)
	defer cancel()
	return s.up.Dial(ctx, addr)
}

// expired reports whether the request's route timeout has passed.
func (s *server) expired() bool {
	return !s.deadline.IsZero() && !time.Now().Before(s.deadline)
}

// headDeadline is when the current attempt's response head must have
// arrived: the response header timeout from now, or sooner the per-try
// timeout or the request's deadline.
func (s *server) headDeadline() time.Time {
	t := time.Now().Add(s.opt.ResponseHeaderTimeout)
	if s.tryTimeout > 0 {
		if tt := s.tryStart.Add(s.tryTimeout); tt.Before(t) {
			t = tt
		}
	}
	if !s.deadline.IsZero() && s.deadline.Before(t) {
		t = s.deadline
	}
	return t
}

// headReadDeadline sets the current attempt's response head deadline on
// uc: coarse when only the response header timeout bounds it, exact when
// a route's per-try timeout or request timeout does.
func (s *server) headReadDeadline(uc *upConn) {
	if s.tryTimeout > 0 || !s.deadline.IsZero() {
		uc.setReadDeadline(s.headDeadline())
		return
	}
	// The attempt started just now (forward set tryStart before the
	// write): one clock read less per request.
	dl, ok := coarseDeadline(uc.coarseDL, s.tryStart, s.opt.ResponseHeaderTimeout)
	if !ok {
		uc.c.SetReadDeadline(dl)
		uc.coarseDL = dl
	}
}

// backoff waits d before a retry; false when the client left or the
// request's deadline would pass meanwhile.
func (s *server) backoff(d time.Duration) bool {
	if d <= 0 {
		return true
	}
	if !s.deadline.IsZero() && time.Now().Add(d).After(s.deadline) {
		return false
	}
	return l7.Pause(s.ctx, d)
}

// fail answers a request that could not be forwarded with err's status
// (503 no endpoint or circuit open, 504 timeout, 502 otherwise).
func (s *server) fail(err error, streamed bool, start time.Time) bool {
	status, reason := l7.ErrorStatus(err)
	bodyDone := !streamed
	if s.bodyRunning {
		r := s.stopBody()
		bodyDone = r.err == nil
	}
	s.up.Log.Debug("http/1.1 upstream failed", "status", status, "err", err)
	// A body left unread (or half sent) ends the connection.
	keep := s.req.keepAlive() && bodyDone && !s.draining() && !s.aborted.Load()
	s.reply(status, reason, "", 0, !keep, start)
	return keep
}

// roundTrip sends the request on uc and reads the response head into
// s.resp, relaying interim (1xx) responses to the client.
func (s *server) roundTrip(uc *upConn, inline []byte, streamed bool) (int, error) {
	q := &s.req
	s.active.Store(uc)
	if s.aborted.Load() {
		return rtClient, errClientGone
	}
	uc.rd.hold()
	if streamed {
		// The response timeout starts when the body is sent (sendBody).
		uc.setReadDeadline(time.Time{})
	} else {
		s.headReadDeadline(uc)
	}
	var err error
	if inline != nil {
		s.iov = [2][]byte{s.wb, inline}
		s.bufs = s.iov[:]
		_, err = s.bufs.WriteTo(uc.c)
		s.iov = [2][]byte{}
	} else {
		_, err = uc.io.Write(s.wb)
	}
	if err != nil {
		// Nothing of the body was read from the client yet: any request
		// may go again. A reused connection was stale; a fresh one failed.
		if uc.reused {
			return rtStale, err
		}
		return rtRetry, fmt.Errorf("http/1.1: writing the request upstream: %w", err)
	}
	if streamed {
		s.startBody(uc)
	}
	replayable := q.idempotent && !streamed
	got := false
	for {
		err := s.readResponseHead(uc, &got)
		if err != nil {
			if s.bodyRunning {
				r := s.stopBody()
				if r.err != nil && !r.upSide {
					if isParseError(r.err) {
						return rtClientBad, r.err
					}
					return rtClient, r.err
				}
			}
			switch {
			case s.aborted.Load():
				return rtClient, errClientGone
			case isTimeout(err):
				return rtFail, errResponseTimeout
			case got || isParseError(err):
				return rtFail, err
			case uc.reused && replayable:
				return rtStale, err
			case !uc.reused && replayable:
				return rtRetry, err
			}
			return rtFail, err
		}
		st := s.resp.status
		if st >= 200 || st == 101 {
			return rtOK, nil
		}
		// An interim response: relayed to HTTP/1.1 clients (RFC 9110
		// §15.2), dropped for HTTP/1.0 ones, which do not expect them.
		if q.minor == 1 {
			s.wb = appendResponseHead(s.wb[:0], &s.resp, nil, connNone, false)
			if _, err := s.dio.Write(s.wb); err != nil {
				if s.bodyRunning {
					s.stopBody()
				}
				return rtClient, err
			}
		}
	}
}

// readResponseHead reads one response head from uc into s.resp; got
// becomes true once any byte of a response arrived.
func (s *server) readResponseHead(uc *upConn, got *bool) error {
	rd := &uc.rd
	scan := 0
	for {
		b := rd.buffered()
		if len(b) > 0 {
			*got = true
			end, next, err := scanHead(b, scan, s.lim.MaxHeadBytes, s.lim)
			if err != nil {
				return upstreamParseError(err)
			}
			if end > 0 {
				if err := s.resp.parse(b[:end], s.req.isHead, s.lim); err != nil {
					return upstreamParseError(err)
				}
				rd.r += end
				return nil
			}
			scan = next
		} else {
			yieldBeforeRead()
		}
		err := rd.fill()
		if err == errBufferFull {
			if !rd.grow(s.lim.MaxHeadBytes) {
				return upstreamParseError(&LimitError{Limit: LimitHeadBytes, Max: s.lim.MaxHeadBytes})
			}
			continue
		}
		if err != nil {
			if err == io.EOF {
				return errUpstreamClosed
			}
			return fmt.Errorf("http/1.1: reading the response head: %w", err)
		}
	}
}

// yieldBeforeRead lets the other runnable goroutines go first when a read
// is about to find nothing: the next request head after a response, the
// response head just after the request went upstream. Go's reads try the
// socket before parking on the poller, so a read issued at once is one
// wasted syscall (EAGAIN) and a park; issued after the others ran, the
// bytes have often arrived. Under keep-alive load this removes about one
// syscall per request (6.4 to 5.2 in a wrk run against h1 alone) and
// costs nothing when no other goroutine is runnable.
func yieldBeforeRead() { runtime.Gosched() }

// upstreamError is a response that broke the protocol: answered 502.
type upstreamError struct{ err error }

func (e *upstreamError) Error() string { return "http/1.1 upstream: " + e.err.Error() }
func (e *upstreamError) Unwrap() error { return e.err }

func upstreamParseError(err error) error { return &upstreamError{err} }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// respond relays the final response: a tunnel after 101 or a 2xx to
// CONNECT, else the head and the body, then decides whether each side's
// connection goes on.
func (s *server) respond(uc *upConn, lease *cluster.Lease, action *route.Action, streamed bool, start time.Time) bool {
	q, rs := &s.req, &s.resp
	var mod *route.HeaderModifier
	if action != nil {
		mod = action.ResponseHeaders
	}
	status := rs.status

	// A request body still streaming: it should be done by now (the
	// upstream answers after reading it); a short grace covers the body
	// goroutine's last step. If not, the upstream answered early and the
	// rest of the body will not be forwarded: both connections end.
	bodyOK := !streamed
	if s.bodyRunning {
		r, ok := s.awaitBody(bodyGrace)
		bodyOK = ok && r.err == nil
	}

	if status == 101 || (q.isConnect && status/100 == 2) {
		if (status == 101 && !q.upgrading) || !bodyOK {
			if s.bodyRunning {
				s.stopBody()
			}
			s.active.Store(nil)
			uc.close()
			if !bodyOK {
				// Switching before the request body was sent: the
				// body's end could not be told from tunnelled bytes.
				lease.Done(nil)
				return s.fail(errSwitchBeforeBody, streamed, start)
			}
			lease.Done(errUnsolicited101)
			return s.fail(errUnsolicited101, streamed, start)
		}
		conn := connUpgrade
		if status != 101 {
			conn = connNone
		}
		s.wb = appendResponseHead(s.wb[:0], rs, mod, conn, true)
		_, err := s.dio.Write(s.wb)
		s.up.End(&s.x, status, -1)
		if s.up.AccessLog != nil {
			s.access(status, start, false, "")
		}
		if err == nil {
			s.tunneled = true
			s.tunnel(uc)
		}
		s.active.Store(nil)
		uc.close()
		lease.Done(nil)
		return false
	}

	keepDown := q.keepAlive() && rs.framing != bodyClose && bodyOK && !s.draining()
	conn := connNone
	switch {
	case !keepDown:
		conn = connClose
	case q.minor == 0:
		conn = connKeepAlive
	}
	s.wb = appendResponseHead(s.wb[:0], rs, mod, conn, false)

	s.respBody.reset(rs.framing, rs.contentLength)
	rd := &uc.rd
	b := rd.buffered()
	n, done, err := s.respBody.consume(b, s.lim)
	if err != nil {
		// Nothing was sent to the client yet: answer 502.
		if s.bodyRunning {
			s.stopBody()
		}
		s.active.Store(nil)
		uc.close()
		err = upstreamParseError(err)
		lease.Done(err)
		return s.fail(err, streamed, start)
	}
	rd.r += n
	if rs.framing == bodyNone {
		done = true
	}
	inlined := n <= inlineCopy
	if inlined {
		s.wb = append(s.wb, b[:n]...)
	}
	released := false
	if done && inlined && !s.bodyRunning {
		// The whole response is in hand: the upstream side is finished
		// before the client sees a byte, so its connection is back in the
		// pool (and its lease released) for the client's next request,
		// which may come on another connection at once.
		s.releaseUp(uc, lease, done && bodyOK, status, nil)
		released = true
	}
	if inlined {
		_, err = s.dio.Write(s.wb)
	} else {
		s.iov = [2][]byte{s.wb, b[:n]}
		s.bufs = s.iov[:]
		_, err = s.bufs.WriteTo(s.down)
		s.iov = [2][]byte{}
	}
	downOK := err == nil
	if !released {
		var upErr error
		if downOK && !done {
			// The rest streams: no response timeout on the body (a stream
			// may idle), the client, ctx or the route's timeout ends it.
			uc.setReadDeadline(s.deadline)
			upErr, downOK = s.pipeResponse(uc)
			done = upErr == nil && downOK
		}
		if s.bodyRunning {
			r := s.stopBody()
			bodyOK = bodyOK && r.err == nil
			if r.err != nil && !r.upSide {
				// The client broke its body and the body goroutine cut
				// the response short: not the upstream's fault.
				upErr = nil
			}
		}
		if upErr != nil && (s.aborted.Load() || s.expired()) {
			// The client left, or the route's timeout cut the body.
			upErr = nil
		}
		if upErr != nil {
			s.up.Log.Debug("http/1.1 upstream broke the response body", "err", upErr)
		}
		s.releaseUp(uc, lease, done && bodyOK, status, upErr)
	}
	s.up.End(&s.x, status, -1)
	if s.up.AccessLog != nil {
		if !downOK || !done {
			status = 0 // the answer did not reach the client whole
		}
		s.access(status, start, false, "")
	}
	return keepDown && done && downOK
}

// releaseUp ends the exchange's hold on uc: back to the pool when the
// exchange was clean (both bodies complete, nothing extra received) and
// the upstream did not ask to close; closed otherwise. Then the lease
// ends with the exchange's verdict.
func (s *server) releaseUp(uc *upConn, lease *cluster.Lease, clean bool, status int, upErr error) {
	s.active.Store(nil)
	if clean && s.resp.keepAlive() && uc.rd.r == uc.rd.w && !s.aborted.Load() {
		s.pool.put(uc)
	} else {
		uc.close()
	}
	lease.Done(l7.Verdict(status, -1, upErr))
}

// pipeResponse streams the rest of the response body to the client:
// bytes are forwarded as they are validated. It returns the upstream's
// error (a read error, a framing error, EOF before the end) and whether
// the client took everything.
func (s *server) pipeResponse(uc *upConn) (error, bool) {
	rd := &uc.rd
	f := &s.respBody
	for {
		err := rd.fill()
		if err == errBufferFull {
			if !rd.grow(s.lim.MaxHeadBytes) {
				return upstreamParseError(&LimitError{Limit: LimitHeadBytes, Max: s.lim.MaxHeadBytes}), true
			}
			continue
		}
		if err != nil {
			if err == io.EOF {
				if f.mode == bodyClose {
					return nil, true
				}
				return errUpstreamClosed, true
			}
			return fmt.Errorf("http/1.1: reading the response body: %w", err), true
		}
		b := rd.buffered()
		n, done, cerr := f.consume(b, s.lim)
		if n > 0 {
			if _, err := s.dio.Write(b[:n]); err != nil {
				return nil, false
			}
			rd.r += n
		}
		if cerr != nil {
			return upstreamParseError(cerr), true
		}
		if done {
			return nil, true
		}
	}
}

// startBody streams the rest of the request body upstream on its own
// goroutine, so the response (a 100 Continue, or an early final answer)
// is read meanwhile. Until stopBody, the goroutine owns s.dr and
// s.reqBody.
func (s *server) startBody(uc *upConn) {
	s.bodyDst = uc
	s.bodyRunning = true
	// Body reads have no idle deadline of their own: a stalled upload is
	// ended by the upstream's timeout or ctx.
	s.setDownReadDeadline(time.Time{})
	go s.sendBody()
}

// sendBody is the body goroutine.
func (s *server) sendBody() {
	uc := s.bodyDst
	rd := &s.dr
	f := &s.reqBody
	var res bodyResult
	for {
		b := rd.buffered()
		n, done, err := f.consume(b, s.lim)
		if n > 0 {
			if _, werr := uc.io.Write(b[:n]); werr != nil {
				res = bodyResult{err: werr, upSide: true}
				break
			}
			rd.r += n
		}
		if err != nil {
			res.err = err
			break
		}
		if done {
			uc.c.SetReadDeadline(s.headDeadline())
			break
		}
		if err := rd.fill(); err != nil {
			if err == errBufferFull && rd.grow(s.lim.MaxHeadBytes) {
				continue
			}
			if err == io.EOF {
				err = errTruncatedBody
			}
			res.err = err
			break
		}
	}
	if res.err != nil && !res.upSide {
		// The client broke or left: wake the response read, there is no
		// request to answer.
		uc.c.SetReadDeadline(aLongTimeAgo)
	}
	s.bodyDone <- res
}

// awaitBody waits up to grace for the body goroutine; ok is false when it
// is still running.
func (s *server) awaitBody(grace time.Duration) (bodyResult, bool) {
	select {
	case r := <-s.bodyDone:
		s.bodyRunning = false
		return r, true
	default:
	}
	s.grace.Reset(grace)
	select {
	case r := <-s.bodyDone:
		s.grace.Stop()
		s.bodyRunning = false
		return r, true
	case <-s.grace.C:
		return bodyResult{}, false
	}
}

// stopBody ends the body goroutine (at once if it is blocked) and returns
// its outcome; an interrupted body is an error.
func (s *server) stopBody() bodyResult {
	if !s.bodyRunning {
		return bodyResult{}
	}
	select {
	case r := <-s.bodyDone:
		s.bodyRunning = false
		return r
	default:
	}
	s.setDownReadDeadline(aLongTimeAgo)
	s.bodyDst.c.SetWriteDeadline(aLongTimeAgo)
	r := <-s.bodyDone
	s.bodyRunning = false
	if r.err == nil {
		r.err = errTruncatedBody
	}
	return r
}

// access logs the current request if the access log wants it. Sampling
// is decided before anything of the line is gathered.
func (s *server) access(status int, start time.Time, local bool, reason string) {
	al := s.up.AccessLog
	if !al.Want(l7.Failed(status, -1, local)) {
		return
	}
	e := l7.Entry{
		Time: start, Pod: s.up.Pod, Protocol: l7.ProtoHTTP1, Status: status, GRPC: -1,
		Upstream: s.al.addr, Local: local, Reason: reason, BytesIn: -1, BytesOut: -1,
		Duration: time.Since(start), Retries: s.al.retries, Route: l7.RouteName(s.al.action),
	}
	if q := &s.req; s.al.head {
		e.Method, e.Authority, e.Path = string(q.Method()), string(q.Host()), string(q.Path())
		if q.contentLength >= 0 && !q.chunked {
			e.BytesIn = q.contentLength
		} else if !q.chunked {
			e.BytesIn = 0
		}
		if !local && status != 0 && s.resp.contentLength >= 0 {
			e.BytesOut = s.resp.contentLength
		}
		if s.x.Traceparent != "" {
			e.TraceID = l7.TraceID([]byte(s.x.Traceparent))
		} else if tp, ok := q.Header("traceparent"); ok {
			e.TraceID = l7.TraceID(tp)
		}
	}
	al.Write(&e)
}
