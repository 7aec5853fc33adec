package h2

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weir-mesh/weir/proxy/cluster"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// fstream is one request of the frame engine: a client stream and, while
// an attempt is on the wire, the upstream stream it maps to. Everything
// in it is guarded by mu, taken before any connection's lock.
type fstream struct {
	d  *dconn
	id uint32

	mu sync.Mutex

	// The request.
	start             time.Time
	method, authority string
	path, query       string
	fields            []hpack.HeaderField // regular fields as received (minus host)
	grpc              bool
	proto             int
	bytesIn           int64 // declared length for the access log; -1 unknown
	declared          int64 // content-length; -1 none
	reqEnded          bool  // the client's side is closed
	reqTrailers       []hpack.HeaderField
	hasReqTrailers    bool
	body              []byte // request body held: body[upOff:] not sent on the current attempt
	upOff             int
	bodyBase          int64 // stream offset of body[0]
	bodyTotal         int64
	replayable        bool       // body holds everything from the start
	credited          int64      // body bytes whose window went back to the client
	recv              recvWindow // the stream window offered to the client

	// Routing and balancing.
	action     *route.Action
	c          *cluster.Cluster
	lease      *cluster.Lease
	leaseReady bool // lease is picked for the next attempt
	addr       netip.AddrPort
	retries    int
	policy     *route.RetryPolicy
	tryTimeout time.Duration
	deadline   time.Time
	idempotent bool
	outFields  []hpack.HeaderField // the upstream request head, without grpc-timeout
	lastErr    error               // the latest connect failure
	// mirrorPending: the rule mirrors and the copy waits for the body's end.
	mirrorPending bool
	gen           int // attempt generation: goroutines and timers of older ones see it moved on
	dlTimer       *time.Timer
	tryTimer      *time.Timer
	waitTimer     *time.Timer

	// The current attempt's upstream stream.
	u                       *uconn
	uid                     uint32
	upSendWin               int64
	upSentEnd, upRecvEnd    bool
	upRecv                  recvWindow // the stream window offered to the upstream
	upBlocked               bool
	gotFinal                bool // the upstream's final response head arrived
	toDown                  []byte
	downOff                 int
	downEnd                 bool // the response ends after toDown (and trailers)
	resTrailers             []hpack.HeaderField
	hasTrailers             bool
	downSendWin             int64
	downBlocked             bool
	resStarted, downSentEnd bool
	status, grpcCode        int
	resLen                  int64
	counted, done, isLocal  bool
	reason                  string

	// Set by the routing decision for its local reply: the gRPC code (0:
	// the one the status maps to) and retry-after seconds (0: none).
	localGRPC, retryAfter int
	// x is the request's record for per-route metrics and tracing
	// (l7.Upstream.Begin/End).
	x l7.Exchange
}

// newFstream makes stream id with the client's initial window (d.mu is
// held).
func newFstream(d *dconn, id uint32) *fstream {
	return &fstream{
		d: d, id: id, start: time.Now(), proto: l7.ProtoHTTP2, bytesIn: -1, declared: -1, replayable: true,
		recv: newRecvWindow(frameStreamWindow), downSendWin: int64(d.initWin), grpcCode: -1, resLen: -1,
	}
}

// request takes the request head and routes it.
func (s *fstream) request(b *batch, f *http2.MetaHeadersFrame) {
	var scheme string
	// The frame's own slice when no field is left out (host is).
	s.fields = f.RegularFields()
	own := false
	for _, hf := range f.Fields {
		if hf.IsPseudo() {
			switch hf.Name {
			case ":method":
				s.method = hf.Value
			case ":authority":
				s.authority = hf.Value
			case ":path":
				s.path = hf.Value
			case ":scheme":
				scheme = hf.Value
			case ":protocol":
				s.method = "CONNECT" // extended CONNECT: not routed
			case ":status":
				s.reset(b, http2.ErrCodeProtocol)
				return
			}
			continue
		}
		switch {
		case connectionSpecificField(hf.Name), hf.Name == "te" && hf.Value != "trailers":
			s.reset(b, http2.ErrCodeProtocol)
			return
		case hf.Name == "host":
			if s.authority == "" {
				s.authority = hf.Value
			}
			if !own {
				s.fields = slices.DeleteFunc(slices.Clone(s.fields), func(f hpack.HeaderField) bool { return f.Name == "host" })
				own = true
			}
		case hf.Name == "content-type" && isGRPCType(hf.Value):
			s.grpc, s.proto = true, l7.ProtoGRPC
		case hf.Name == "content-length":
			n := parseContentLength(hf.Value)
			if n < 0 || (s.declared >= 0 && n != s.declared) {
				s.reset(b, http2.ErrCodeProtocol)
				return
			}
			s.declared, s.bytesIn = n, n
		}
	}
	if f.StreamEnded() {
		s.reqEnded, s.bytesIn = true, 0
	}
	if f.Truncated {
		s.local(b, 431, l7.ReasonBadRequest, "")
		return
	}
	if s.method == "CONNECT" {
		s.local(b, 501, l7.ReasonBadRequest, "")
		return
	}
	// A request the upstream would refuse as malformed is refused here:
	// its reset would otherwise count against the endpoint.
	if scheme == "" || !httpguts.ValidHeaderFieldName(s.method) || !validPath(s.method, s.path) ||
		!httpguts.ValidHostHeader(s.authority) || (s.reqEnded && s.declared > 0) {
		s.reset(b, http2.ErrCodeProtocol)
		return
	}
	if i := strings.IndexByte(s.path, '?'); i >= 0 {
		s.path, s.query = s.path[:i], s.path[i+1:]
	}
	view := frameView{s}
	d := s.d.up.Resolve(view)
	s.action = d.Action
	s.d.up.Begin(&s.x, s.proto, s.start, &d, view)
	if d.Delay > 0 {
		// An injected fault delay waits on a timer: the connection's
		// reader goes on with the other streams meanwhile. A client that
		// resets the stream stops the timer (close).
		s.gen++
		gen := s.gen
		s.waitTimer = time.AfterFunc(d.Delay, func() {
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.done || s.gen != gen {
				return
			}
			s.decided(nil, d)
		})
		return
	}
	s.decided(b, d)
}

// decided carries out the routing decision d: a local reply (redirect,
// no route, no backend, rate limited, fault abort) or the forward.
func (s *fstream) decided(b *batch, d l7.Decision) {
	switch {
	case d.Reason == l7.ReasonRedirect:
		loc := l7.RedirectLocation(d.Action.Redirect, d.Action.PrefixMatched, "http", s.authority, s.path, s.query)
		s.local(b, d.Status, l7.ReasonRedirect, loc)
		return
	case d.Status != 0:
		s.localGRPC, s.retryAfter = d.GRPC, d.RetryAfter
		s.local(b, d.Status, d.Reason, "")
		return
	}
	s.forward(b, d)
}

// validPath: an origin-form path (no fragment, no control or space
// byte, percent signs escaping two hex digits before the query), or "*"
// for OPTIONS.
func validPath(method, p string) bool {
	if p == "*" {
		return method == "OPTIONS"
	}
	if p == "" || p[0] != '/' {
		return false
	}
	query := false
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case c <= ' ' || c == 0x7f || c == '#':
			return false
		case c == '?':
			query = true
		case c == '%' && !query:
			if i+2 >= len(p) || !isHex(p[i+1]) || !isHex(p[i+2]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// frameView shows route matching the request's head.
type frameView struct{ s *fstream }

func (v frameView) Method() []byte { return bytesOf(v.s.method) }
func (v frameView) Host() []byte   { return bytesOf(v.s.authority) }
func (v frameView) Path() []byte   { return bytesOf(v.s.path) }
func (v frameView) Query() []byte  { return bytesOf(v.s.query) }

func (v frameView) Header(lowerName string) ([]byte, bool) {
	for _, f := range v.s.fields {
		if f.Name == lowerName {
			return bytesOf(f.Value), true
		}
	}
	return nil, false
}

func (s *fstream) header(name string) (string, bool) {
	for _, f := range s.fields {
		if f.Name == name {
			return f.Value, true
		}
	}
	return "", false
}

// forward sets the request's policy up and starts its first attempt.
func (s *fstream) forward(b *batch, d l7.Decision) {
	s.c = d.Cluster
	s.idempotent = l7.Idempotent(s.method)
	if act := d.Action; act != nil {
		s.policy, s.tryTimeout = act.Retry, act.TryTimeout
		if act.Timeout > 0 {
			s.deadline = s.start.Add(act.Timeout)
		}
	}
	if s.grpc {
		if v, ok := s.header("grpc-timeout"); ok {
			if gt, ok := parseGRPCTimeout([]string{v}); ok {
				if dl := s.start.Add(gt); s.deadline.IsZero() || dl.Before(s.deadline) {
					s.deadline = dl
				}
			}
		}
	}
	if !s.deadline.IsZero() {
		left := time.Until(s.deadline)
		if left <= 0 {
			s.local(b, 504, l7.ReasonTimeout, "")
			return
		}
		s.dlTimer = time.AfterFunc(left, s.deadlinePassed)
	}
	s.outFields = s.outbound(d.Action)
	if d.Action != nil && d.Action.Mirrors != nil {
		s.mirrorWhenWhole()
	}
	s.attempt(b, false)
}

// outbound builds the upstream request head: the end-to-end fields
// through the rule's RequestHeaders filter, :authority and :path through
// its rewrite; nothing added.
func (s *fstream) outbound(act *route.Action) []hpack.HeaderField {
	authority, path := s.authority, s.path
	// One slice: the pseudo-fields first, filled in below, then the rest
	// (grpc-timeout is sent anew per attempt), room left for that.
	out := make([]hpack.HeaderField, 4, 4+len(s.fields)+1)
	tp := s.x.Traceparent // the agent's span replaces the client's
	for _, f := range s.fields {
		if f.Name != "grpc-timeout" && (tp == "" || f.Name != "traceparent") {
			out = append(out, f)
		}
	}
	if tp != "" {
		out = append(out, hpack.HeaderField{Name: "traceparent", Value: tp})
	}
	if act != nil {
		if m := act.RequestHeaders; m != nil {
			out = append(out[:4], modifyFields(out[4:], m, &authority)...)
		}
		if rw := act.Rewrite; rw != nil {
			if rw.Hostname != "" {
				authority = rw.Hostname
			}
			path = route.RewritePath(rw.Path, path, act.PrefixMatched)
		}
	}
	if s.query != "" {
		path += "?" + s.query
	}
	out[0] = hpack.HeaderField{Name: ":method", Value: s.method}
	out[1] = hpack.HeaderField{Name: ":scheme", Value: "http"}
	out[2] = hpack.HeaderField{Name: ":authority", Value: authority}
	out[3] = hpack.HeaderField{Name: ":path", Value: path}
	return out
}

// modifyFields applies a Gateway API header modifier to lower-case
// fields: set replaces, add appends, remove deletes, in that order.
// Connection-specific fields are ignored; a host set becomes the
// :authority (authority nil: a response, where host is dropped).
func modifyFields(fs []hpack.HeaderField, m *route.HeaderModifier, authority *string) []hpack.HeaderField {
	drop := func(name string) {
		kept := fs[:0]
		for _, f := range fs {
			if f.Name != name {
				kept = append(kept, f)
			}
		}
		fs = kept
	}
	for _, f := range m.Set {
		k := strings.ToLower(f.Name)
		if k == "host" {
			if authority != nil {
				*authority = f.Value
			}
			continue
		}
		if connectionSpecificField(k) || k == "te" || k == "trailer" {
			continue
		}
		drop(k)
		fs = append(fs, hpack.HeaderField{Name: k, Value: f.Value})
	}
	for _, f := range m.Add {
		k := strings.ToLower(f.Name)
		if k == "host" || connectionSpecificField(k) || k == "te" || k == "trailer" {
			continue
		}
		fs = append(fs, hpack.HeaderField{Name: k, Value: f.Value})
	}
	for _, n := range m.Remove {
		drop(strings.ToLower(n))
	}
	return fs
}

// expired is the request's deadline gone, or so nearly gone that an
// upstream given the rest of it may already have given up.
func (s *fstream) expired() bool {
	return !s.deadline.IsZero() && time.Until(s.deadline) < deadlineSlack
}

// attempt sends the request to an endpoint: the lease picked for it
// (leaseReady), else a new pick (retry: an attempt after a refused
// stream or a failed connect, which counts as a retry). An open
// connection with room takes the stream at once; otherwise a goroutine
// waits for one or dials.
func (s *fstream) attempt(b *batch, retry bool) {
	s.gen++
	if s.c != nil {
		if s.leaseReady {
			s.leaseReady = false
		} else {
			l, err := s.c.Pick(s.d.up.Key, s.lease)
			if err != nil {
				s.lease = nil
				if s.lastErr != nil {
					err = s.lastErr
				}
				s.fail(b, err)
				return
			}
			if retry {
				s.d.up.Metrics.Retry(s.proto)
				s.retries++
			}
			s.lease = l
		}
		s.addr = s.lease.Endpoint()
	} else {
		s.addr = s.d.up.Dst
	}
	if s.d.pool.fp.open(s.addr, s, b) {
		return
	}
	gen, addr, lease := s.gen, s.addr, s.lease
	s.d.wg.Add(1)
	go s.connect(gen, addr, lease)
}

// connect finds or dials a connection to addr for attempt gen.
func (s *fstream) connect(gen int, addr netip.AddrPort, lease *cluster.Lease) {
	d := s.d
	defer d.wg.Done()
	dial := func(ctx context.Context) (net.Conn, error) {
		if lease == nil {
			ctx, cancel := context.WithTimeout(ctx, d.opt.ConnectTimeout)
			defer cancel()
			c, err := d.up.Dial(ctx, addr)
			if err != nil {
				return nil, errors.New("h2: connect to " + addr.String() + ": " + err.Error())
			}
			return c, nil
		}
		c, err := lease.Dial(ctx, d.up.Dial)
		if err != nil {
			return nil, &connectError{addr: addr, err: err}
		}
		return c, nil
	}
	for {
		u, err := d.pool.fp.conn(d.ctx, addr, dial)
		s.mu.Lock()
		if s.done || s.gen != gen {
			s.mu.Unlock()
			return
		}
		if err != nil {
			if d.ctx.Err() != nil || errors.Is(err, errPoolClosed) || s.c == nil {
				if s.lease != nil {
					s.lease.Done(nil)
				}
				s.fail(nil, err)
				s.mu.Unlock()
				return
			}
			// A failed connect is on the endpoint already: try another.
			s.lastErr = err
			s.attempt(nil, true)
			s.mu.Unlock()
			return
		}
		if u.open(s, nil) {
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
	}
}

type connectError struct {
	addr netip.AddrPort
	err  error
}

func (e *connectError) Error() string {
	return "h2: connect to " + e.addr.String() + ": " + e.err.Error()
}
func (e *connectError) Unwrap() error { return e.err }

// opened is called by uconn.open once the stream is on u (s.mu and u.mu
// held): the head is queued; the body follows.
func (s *fstream) openedLocked(u *uconn, id uint32) {
	s.u, s.uid = u, id
	s.upSendWin = int64(u.initWin)
	s.upRecv = newRecvWindow(frameStreamWindow)
	s.upSentEnd, s.upRecvEnd, s.gotFinal = false, false, false
	s.upOff = 0
	fields := s.outFields
	if s.grpc && !s.deadline.IsZero() {
		fields = append(fields[:len(fields):len(fields)], hpack.HeaderField{Name: "grpc-timeout", Value: formatGRPCTimeout(time.Until(s.deadline))})
	}
	end := s.reqEnded && len(s.body) == 0 && !s.hasReqTrailers
	u.w.mu.Lock()
	u.w.headersLocked(id, end, fields)
	u.w.mu.Unlock()
	s.upSentEnd = end
	if s.tryTimeout > 0 {
		gen := s.gen
		s.tryTimer = time.AfterFunc(s.tryTimeout, func() { s.tryTimedOut(gen) })
	}
}

// sendUp sends what the current attempt may of the request body, within
// the upstream's stream and connection windows; the client gets its
// window back for what leaves.
func (s *fstream) sendUp(b *batch) {
	u := s.u
	if u == nil || s.upSentEnd {
		return
	}
	for s.upOff < len(s.body) {
		n := min(int64(len(s.body)-s.upOff), s.upSendWin)
		if n <= 0 {
			return
		}
		n = u.takeSendWindow(s, n)
		if n == 0 {
			return
		}
		end := s.reqEnded && !s.hasReqTrailers && s.upOff+int(n) == len(s.body)
		u.w.writeData(b, s.uid, end, s.body[s.upOff:s.upOff+int(n)])
		s.upSendWin -= n
		s.upOff += int(n)
		if end {
			s.upSentEnd = true
		}
		if fwd := s.bodyBase + int64(s.upOff) - s.credited; fwd > 0 {
			s.credited += fwd
			s.creditClient(b, fwd)
		}
		if !s.replayable && s.upOff == len(s.body) {
			s.bodyBase += int64(len(s.body))
			s.body, s.upOff = s.body[:0], 0
		}
	}
	if s.reqEnded && !s.upSentEnd {
		if s.hasReqTrailers {
			u.w.writeHeaders(b, s.uid, true, s.reqTrailers)
		} else {
			u.w.writeData(b, s.uid, true, nil)
		}
		s.upSentEnd = true
	}
}

// creditClient gives n bytes of stream and connection window back to the
// client, each in batches of a quarter window.
func (s *fstream) creditClient(b *batch, n int64) {
	if !s.reqEnded {
		if inc := s.recv.consumed(n); inc > 0 {
			s.d.w.writeWindowUpdate(b, s.id, uint32(inc))
		}
	}
	s.d.consumed(b, n)
}

// requestData takes a DATA frame of the request body (n bytes of window,
// padding included).
func (s *fstream) requestData(b *batch, f *http2.DataFrame, n int64) {
	if s.reqEnded {
		s.d.consumed(b, n)
		s.reset(b, http2.ErrCodeStreamClosed)
		return
	}
	if !s.recv.take(n) {
		s.d.consumed(b, n)
		s.reset(b, http2.ErrCodeFlowControl)
		return
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		s.creditClient(b, pad)
	}
	if f.StreamEnded() {
		s.reqEnded = true
	}
	if s.done {
		s.d.consumed(b, int64(len(data)))
		return
	}
	s.body = append(s.body, data...)
	s.bodyTotal += int64(len(data))
	if s.declared >= 0 && (s.bodyTotal > s.declared || s.reqEnded && s.bodyTotal != s.declared) {
		s.reset(b, http2.ErrCodeProtocol) // the body does not match its content-length
		return
	}
	if s.replayable && s.bodyTotal > int64(s.d.opt.MaxReplayBytes) {
		s.replayable = false
	}
	if s.mirrorPending && s.reqEnded {
		s.mirrorWhenWhole()
	}
	s.sendUp(b)
}

// requestTrailers takes the request's trailers (the block ends it).
func (s *fstream) requestTrailers(b *batch, f *http2.MetaHeadersFrame) {
	s.reqEnded = true
	if s.declared >= 0 && s.bodyTotal != s.declared {
		s.reset(b, http2.ErrCodeProtocol)
		return
	}
	if f.Truncated {
		s.reset(b, http2.ErrCodeProtocol)
		return
	}
	for _, hf := range f.Fields {
		if hf.IsPseudo() {
			s.reset(b, http2.ErrCodeProtocol)
			return
		}
		if !connectionSpecificField(hf.Name) {
			s.reqTrailers = append(s.reqTrailers, hf)
		}
	}
	s.hasReqTrailers = true
	if s.done {
		return
	}
	if s.mirrorPending {
		s.mirrorWhenWhole()
	}
	s.sendUp(b)
}

// safe reports whether the request may be sent again whole: its body was
// wholly received and is still kept.
func (s *fstream) safe() bool { return s.reqEnded && s.replayable }

// canRetry: the rule's retry policy allows another attempt now.
func (s *fstream) canRetry() bool {
	p := s.policy
	return s.c != nil && p != nil && s.retries < p.Attempts && !s.expired() && s.safe() &&
		(s.deadline.IsZero() || time.Until(s.deadline) > p.Backoff+deadlineSlack)
}

// retry moves the request to another endpoint after the current attempt
// ended with the outcome already recorded; false when no endpoint is
// left (the lease is then gone).
func (s *fstream) retry(b *batch) bool {
	next, err := s.c.Pick(s.d.up.Key, s.lease)
	if err != nil {
		s.lease = nil
		return false
	}
	s.detachUp(b, true)
	s.retries++
	s.d.up.Metrics.Retry(s.proto)
	s.lease, s.leaseReady = next, true
	s.resetResponse()
	backoff := s.policy.Backoff
	if backoff <= 0 {
		s.attempt(b, false)
		return true
	}
	s.gen++
	gen := s.gen
	s.waitTimer = time.AfterFunc(backoff, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.done || s.gen != gen {
			return
		}
		s.attempt(nil, false)
	})
	return true
}

func (s *fstream) resetResponse() {
	s.gotFinal, s.status = false, 0
	s.toDown, s.downOff, s.downEnd = s.toDown[:0], 0, false
	s.resTrailers, s.hasTrailers = nil, false
}

// detachUp ends the current attempt's upstream stream (rst: reset it, if
// it is still open) and gives back the connection window its unread
// answer held.
func (s *fstream) detachUp(b *batch, rst bool) {
	u := s.u
	if u == nil {
		return
	}
	if s.tryTimer != nil {
		s.tryTimer.Stop()
		s.tryTimer = nil
	}
	if rst && !(s.upSentEnd && s.upRecvEnd) {
		u.w.writeRST(b, s.uid, http2.ErrCodeCancel)
	}
	unread := int64(len(s.toDown) - s.downOff)
	if s.resStarted {
		unread = 0 // still to be written to the client, which credits it
	}
	u.release(b, s, unread)
	s.u, s.uid, s.upBlocked = nil, 0, false
}

// fail answers a request whose attempt got no answer: 503, 504 or 502
// (ErrorStatus), or a reset/gRPC status if the answer had begun.
func (s *fstream) fail(b *batch, err error) {
	if s.expired() {
		err = context.DeadlineExceeded
	}
	status, reason := l7.ErrorStatus(err)
	s.d.up.Log.Debug("h2: upstream request failed", "path", s.path, "err", err)
	s.detachUp(b, true)
	s.local(b, status, reason, "")
}

// tryTimedOut: attempt gen got no response head within the per-try
// timeout.
func (s *fstream) tryTimedOut(gen int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done || s.gen != gen || s.gotFinal || s.u == nil {
		return
	}
	if s.expired() {
		s.leaseDone(nil)
		s.fail(nil, context.DeadlineExceeded)
		return
	}
	s.leaseDone(errTryTimeout)
	retryable := s.idempotent || (s.grpc && s.policy.RetryGRPC(grpcDeadlineExceeded))
	if retryable && s.canRetry() && s.retry(nil) {
		return
	}
	s.fail(nil, errTryTimeout)
}

// deadlinePassed ends the request at its deadline (route timeout or
// grpc-timeout): 504 (DEADLINE_EXCEEDED) before the answer, a reset or
// trailers with the status once it began.
func (s *fstream) deadlinePassed() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.done {
		return
	}
	s.leaseDone(nil)
	if !s.resStarted {
		s.fail(nil, context.DeadlineExceeded)
		return
	}
	s.detachUp(nil, true)
	s.endExpired(nil)
}

// endExpired ends an answer under way whose deadline passed, counted as
// 504: a gRPC client gets DEADLINE_EXCEEDED in the trailers, any other a
// reset.
func (s *fstream) endExpired(b *batch) {
	s.countOnce(504)
	if s.grpc {
		s.grpcCode = grpcDeadlineExceeded
		s.endWithStatus(b, grpcDeadlineExceeded, l7.ReasonTimeout)
		return
	}
	s.reset(b, http2.ErrCodeInternal)
}

// endWithStatus ends a gRPC answer with trailers carrying code, after the
// body already queued.
func (s *fstream) endWithStatus(b *batch, code int, msg string) {
	s.resTrailers = []hpack.HeaderField{
		{Name: "grpc-status", Value: strconv.Itoa(code)},
		{Name: "grpc-message", Value: msg},
	}
	s.hasTrailers, s.downEnd = true, true
	s.flushDown(b)
}

func (s *fstream) leaseDone(err error) {
	if s.lease != nil {
		s.lease.Done(err)
	}
}

// local answers the request from the proxy (see exchange.local).
func (s *fstream) local(b *batch, status int, reason, location string) {
	s.d.up.Metrics.Local(status, reason)
	s.isLocal, s.reason = true, reason
	code := grpcCode(status)
	if s.localGRPC != 0 {
		code = s.localGRPC
	}
	if s.grpc && location == "" {
		s.grpcCode = code
	}
	s.countOnce(status)
	s.resStarted = true
	w := s.d.w
	switch {
	case s.grpc && location == "":
		w.writeHeaders(b, s.id, true, []hpack.HeaderField{
			{Name: ":status", Value: "200"},
			{Name: "content-type", Value: "application/grpc"},
			{Name: "grpc-status", Value: strconv.Itoa(code)},
			{Name: "grpc-message", Value: reason},
		})
	case location != "":
		w.writeHeaders(b, s.id, true, []hpack.HeaderField{
			{Name: ":status", Value: strconv.Itoa(status)},
			{Name: "location", Value: location},
		})
	default:
		body := reason + "\n"
		head := []hpack.HeaderField{
			{Name: ":status", Value: strconv.Itoa(status)},
			{Name: "content-type", Value: "text/plain; charset=utf-8"},
			{Name: "content-length", Value: strconv.Itoa(len(body))},
		}
		if s.retryAfter > 0 {
			head = append(head, hpack.HeaderField{Name: "retry-after", Value: strconv.Itoa(s.retryAfter)})
		}
		w.writeHeaders(b, s.id, false, head)
		w.writeData(b, s.id, true, []byte(body))
	}
	s.downSentEnd = true
	s.close(b, http2.ErrCodeNo)
}

// close ends the exchange once the client has its answer (or a reset):
// timers stop, the upstream stream is left, a client still sending is
// told to stop (code, with RST_STREAM), unforwarded body bytes give their
// connection window back, and the stream is forgotten.
func (s *fstream) close(b *batch, code http2.ErrCode) {
	if s.done {
		return
	}
	s.done = true
	for _, t := range []*time.Timer{s.dlTimer, s.tryTimer, s.waitTimer} {
		if t != nil {
			t.Stop()
		}
	}
	s.gen++
	s.detachUp(b, true)
	if s.lease != nil {
		s.lease.Release()
	}
	if !s.reqEnded {
		s.d.w.writeRST(b, s.id, code)
		s.reqEnded = true
	}
	held := s.bodyBase + int64(len(s.body)) - s.credited
	s.body = nil
	if held > 0 {
		s.credited += held
		s.d.consumed(b, held)
	}
	s.toDown = nil
	s.d.remove(s)
}

// reset ends the client's stream with RST_STREAM(code).
func (s *fstream) reset(b *batch, code http2.ErrCode) {
	if s.done {
		return
	}
	if !s.counted && s.method != "" {
		s.leaseDone(nil)
		s.countOnce(0)
	}
	if !s.downSentEnd {
		s.d.w.writeRST(b, s.id, code)
		s.downSentEnd, s.reqEnded = true, true
	}
	s.close(b, code)
}

// clientGone: the client reset the stream or the connection ended.
// Nobody is left to answer, and it is not the upstream's fault.
func (s *fstream) clientGone(b *batch) {
	if s.done {
		return
	}
	s.leaseDone(nil)
	s.countOnce(0)
	s.downSentEnd, s.reqEnded = true, true
	s.close(b, http2.ErrCodeCancel)
}

// countOnce records the request; status 0 means no answer reached the
// client.
func (s *fstream) countOnce(status int) {
	if s.counted {
		return
	}
	s.counted = true
	up := s.d.up
	if s.x.Start.IsZero() { // refused before routing
		s.x.Proto, s.x.Start = s.proto, s.start
	}
	up.End(&s.x, status, s.grpcCode)
	al := up.AccessLog
	if al == nil || !al.Want(l7.Failed(status, s.grpcCode, s.isLocal)) {
		return
	}
	e := l7.Entry{
		Time: s.start, Pod: up.Pod, Protocol: s.proto, Method: s.method,
		Authority: s.authority, Path: s.path, Status: status, GRPC: s.grpcCode,
		Local: s.isLocal, Reason: s.reason, BytesIn: s.bytesIn, BytesOut: -1,
		Duration: time.Since(s.start), Route: l7.RouteName(s.action),
		Retries: s.retries,
	}
	if s.addr.IsValid() {
		e.Upstream = s.addr
	}
	if !s.isLocal && status != 0 {
		e.BytesOut = s.resLen
	}
	if s.x.Traceparent != "" {
		e.TraceID = l7.TraceID([]byte(s.x.Traceparent))
	} else if tp, ok := s.header("traceparent"); ok {
		e.TraceID = l7.TraceID([]byte(tp))
	}
	al.Write(&e)
}
