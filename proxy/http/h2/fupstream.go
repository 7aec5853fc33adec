package h2

import (
	"bufio"
	"context"
	"errors"
	"math"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// framePool is the frame engine's share of a Pool: multiplexed upstream
// connections per endpoint address.
type framePool struct {
	opt *Options

	mu     sync.Mutex
	eps    map[netip.AddrPort]*fendpoint
	closed bool
}

type fendpoint struct {
	conns   []*uconn
	dialing chan struct{} // closed when the dial in progress ends
}

// open puts s on an open connection to addr with room for a stream;
// false when none has.
func (p *framePool) open(addr netip.AddrPort, s *fstream, b *batch) bool {
	p.mu.Lock()
	e := p.eps[addr]
	var conns []*uconn
	if e != nil {
		conns = e.conns
	}
	p.mu.Unlock()
	for _, u := range conns {
		if u.open(s, b) {
			return true
		}
	}
	return false
}

// conn returns a connection to addr that had room a moment ago, dialling
// one (only one at a time per address) when none has.
func (p *framePool) conn(ctx context.Context, addr netip.AddrPort, dial func(context.Context) (net.Conn, error)) (*uconn, error) {
	p.mu.Lock()
	for {
		if p.closed {
			p.mu.Unlock()
			return nil, errPoolClosed
		}
		e := p.eps[addr]
		if e == nil {
			e = &fendpoint{}
			p.eps[addr] = e
		}
		var settling <-chan struct{}
		for _, u := range e.conns {
			room, settled := u.hasRoom()
			if room {
				p.mu.Unlock()
				return u, nil
			}
			if settled != nil {
				settling = settled
			}
		}
		var wait <-chan struct{} = e.dialing
		if wait == nil {
			wait = settling
		}
		if wait != nil {
			// A connection still dialling, or waiting for its server's
			// SETTINGS (its stream limit): see what it has room for first.
			p.mu.Unlock()
			select {
			case <-wait:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			p.mu.Lock()
			continue
		}
		ch := make(chan struct{})
		e.dialing = ch
		p.mu.Unlock()

		c, err := dial(ctx)

		p.mu.Lock()
		e.dialing = nil
		close(ch)
		if err != nil {
			p.mu.Unlock()
			return nil, err
		}
		if p.closed || p.eps[addr] != e {
			p.mu.Unlock()
			c.Close()
			return nil, errPoolClosed
		}
		u := newUconn(p, addr, c)
		e.conns = append(e.conns, u)
		p.mu.Unlock()
		return u, nil
	}
}

func (p *framePool) forget(u *uconn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	e := p.eps[u.addr]
	if e == nil {
		return
	}
	if i := slices.Index(e.conns, u); i >= 0 {
		e.conns = slices.Delete(e.conns, i, i+1)
		if len(e.conns) == 0 && e.dialing == nil {
			delete(p.eps, u.addr)
		}
	}
}

func (p *framePool) close() {
	p.mu.Lock()
	p.closed = true
	var all []*uconn
	for _, e := range p.eps {
		all = append(all, e.conns...)
	}
	p.eps = map[netip.AddrPort]*fendpoint{}
	p.mu.Unlock()
	for _, u := range all {
		u.c.Close()
		<-u.done
	}
}

// uconn is one upstream connection of the frame engine: streams of any
// client connection of the pod share it. One goroutine reads it.
type uconn struct {
	p    *framePool
	addr netip.AddrPort
	c    net.Conn
	w    *wconn
	fr   *http2.Framer
	hb   *headerBlock
	b    batch
	done chan struct{} // closed when the reader has ended every stream

	mu           sync.Mutex
	streams      map[uint32]*fstream
	nextID       uint32
	active       int
	maxStreams   uint32 // the server's SETTINGS_MAX_CONCURRENT_STREAMS
	sendWin      int64
	initWin      int32
	maxFrame     uint32
	blocked      []*fstream
	recv         recvWindow // the connection window offered to the server
	goaway       bool       // no new stream (GOAWAY received, or ids ran out)
	settingsSeen bool
	settled      chan struct{} // closed with settingsSeen, or when u dies
	dead         bool
	idle         *time.Timer
	frames       atomic.Uint64 // frames read: keepalive sees whether any came
}

func newUconn(p *framePool, addr netip.AddrPort, c net.Conn) *uconn {
	u := &uconn{
		p: p, addr: addr, c: c, done: make(chan struct{}),
		streams: map[uint32]*fstream{}, nextID: 1, maxStreams: math.MaxUint32, settled: make(chan struct{}),
		sendWin: defaultWindow, initWin: defaultWindow, maxFrame: 16384, recv: newRecvWindow(frameConnWindow),
	}
	u.w = newWconn(c)
	u.w.mu.Lock()
	u.w.buf = append(u.w.buf, http2.ClientPreface...)
	u.w.mu.Unlock()
	u.w.writeSettings(nil, false,
		// Stated though it is the default: servers that add every answer's
		// fields to the table without ever referring to them (nginx) stop
		// using the table when a client sets it, which spares our decoder
		// an eviction (a copy of the whole table) per field.
		http2.Setting{ID: http2.SettingHeaderTableSize, Val: 4096},
		http2.Setting{ID: http2.SettingEnablePush, Val: 0},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: frameStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: p.opt.MaxHeaderListSize})
	u.w.writeWindowUpdate(nil, 0, frameConnWindow-defaultWindow)
	br := bufio.NewReaderSize(&batchReader{c: c, b: &u.b}, 32<<10)
	u.fr = http2.NewFramer(nil, br)
	u.fr.SetReuseFrames()
	u.hb = newHeaderBlock(p.opt.MaxHeaderListSize, true)
	u.armIdleLocked()
	go u.read()
	go u.keepalive()
	return u
}

// hasRoom reports whether u takes another stream; settled is not nil
// (and closes when the server's SETTINGS come) when u cannot tell yet.
func (u *uconn) hasRoom() (room bool, settled <-chan struct{}) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.dead || u.goaway {
		return false, nil
	}
	if uint32(u.active) < u.limitLocked() {
		return true, nil
	}
	if !u.settingsSeen {
		return false, u.settled
	}
	return false, nil
}

// limitLocked is how many streams u takes: the server's
// SETTINGS_MAX_CONCURRENT_STREAMS, and one until its SETTINGS come (a
// burst of requests on a new connection must not exceed a limit not yet
// known: the server would refuse them all).
func (u *uconn) limitLocked() uint32 {
	if !u.settingsSeen {
		return 1
	}
	return u.maxStreams
}

// open gives s a stream on u and queues its head; false when u has no
// room. s.mu is held.
func (u *uconn) open(s *fstream, b *batch) bool {
	u.mu.Lock()
	if u.dead || u.goaway || uint32(u.active) >= u.limitLocked() {
		u.mu.Unlock()
		return false
	}
	id := u.nextID
	u.nextID += 2
	if u.nextID > math.MaxInt32 {
		u.goaway = true
	}
	u.streams[id] = s
	u.active++
	if u.idle != nil {
		u.idle.Stop()
	}
	s.openedLocked(u, id)
	u.mu.Unlock()
	b.mark(u.w)
	s.sendUp(b)
	return true
}

// takeSendWindow reserves up to n bytes of the connection window and one
// frame for DATA on s's stream; 0 puts s on the blocked list.
func (u *uconn) takeSendWindow(s *fstream, n int64) int64 {
	u.mu.Lock()
	defer u.mu.Unlock()
	return takeWindow(&u.sendWin, &u.blocked, s, &s.upBlocked, min(n, int64(u.maxFrame)))
}

// release forgets s's stream; unread bytes of its answer give their
// connection window back.
func (u *uconn) release(b *batch, s *fstream, unread int64) {
	u.mu.Lock()
	if u.streams[s.uid] == s {
		delete(u.streams, s.uid)
		u.active--
	}
	if s.upBlocked {
		if i := slices.Index(u.blocked, s); i >= 0 {
			u.blocked = slices.Delete(u.blocked, i, i+1)
		}
	}
	closeNow := false
	if u.active == 0 {
		if u.goaway {
			closeNow = true
		} else {
			u.armIdleLocked()
		}
	}
	u.mu.Unlock()
	u.consumed(b, unread)
	if closeNow {
		u.p.forget(u)
		go func() {
			u.c.SetWriteDeadline(time.Now().Add(time.Second))
			u.w.finish()
			u.c.Close()
		}()
	}
}

// armIdleLocked closes u after Options.IdleTimeout with no stream.
func (u *uconn) armIdleLocked() {
	if u.idle != nil {
		u.idle.Reset(u.p.opt.IdleTimeout)
		return
	}
	u.idle = time.AfterFunc(u.p.opt.IdleTimeout, func() {
		u.mu.Lock()
		idle := u.active == 0 && !u.dead
		if idle {
			u.goaway = true
		}
		u.mu.Unlock()
		if idle {
			u.p.forget(u)
			u.w.writeGoAway(nil, 0, http2.ErrCodeNo)
			u.c.SetWriteDeadline(time.Now().Add(time.Second))
			u.w.finish()
			u.c.Close()
		}
	})
}

// keepalive checks a connection that has been silent for PingInterval
// with a PING, and closes it when PingTimeout passes without any frame.
func (u *uconn) keepalive() {
	opt := u.p.opt
	tick := min(opt.PingInterval, opt.PingTimeout) / 2
	t := time.NewTicker(tick)
	defer t.Stop()
	var seen uint64
	var silent time.Duration // since a frame last came
	pingSent := false
	for {
		select {
		case <-u.done:
			return
		case <-t.C:
		}
		if n := u.frames.Load(); n != seen {
			seen, silent, pingSent = n, 0, false
			continue
		}
		silent += tick
		switch {
		case pingSent && silent > opt.PingInterval+opt.PingTimeout:
			u.c.Close()
			return
		case !pingSent && silent > opt.PingInterval:
			pingSent = true
			u.w.writePing(nil, false, [8]byte{'w', 'e', 'i', 'r'})
		}
	}
}

func (u *uconn) consumed(b *batch, n int64) {
	if n <= 0 {
		return
	}
	u.mu.Lock()
	inc := u.recv.consumed(n)
	u.mu.Unlock()
	if inc > 0 {
		u.w.writeWindowUpdate(b, 0, uint32(inc))
	}
}

func (u *uconn) stream(id uint32) *fstream {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.streams[id]
}

// errUpstreamProtocol: the upstream broke HTTP/2.
var errUpstreamProtocol = errors.New("h2: upstream broke the protocol")

// read runs the connection until it fails or closes; every stream still
// on it then breaks.
func (u *uconn) read() {
	err := u.loop()
	u.mu.Lock()
	u.dead = true
	if !u.settingsSeen {
		u.settingsSeen = true
		close(u.settled)
	}
	all := make([]*fstream, 0, len(u.streams))
	for _, s := range u.streams {
		all = append(all, s)
	}
	if u.idle != nil {
		u.idle.Stop()
	}
	u.mu.Unlock()
	u.p.forget(u)
	u.w.stop()
	u.c.Close()
	if err == nil {
		err = errors.New("h2: upstream connection closed")
	}
	for _, s := range all {
		s.mu.Lock()
		if s.u == u {
			s.upBroken(nil, err)
		}
		s.mu.Unlock()
	}
	close(u.done)
}

func (u *uconn) loop() error {
	b := &u.b
	first := true
	for {
		f, err := u.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) && !first {
				u.streamError(b, se)
				continue
			}
			return err
		}
		u.frames.Add(1)
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return errUpstreamProtocol
			}
			first = false
		}
		f, err = readHeaders(u.hb, f)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				u.streamError(b, se)
				continue
			}
			u.w.writeGoAway(b, 0, http2.ErrCode(err.(http2.ConnectionError)))
			return errUpstreamProtocol
		}
		if f == nil {
			continue
		}
		if err := u.handle(b, f); err != nil {
			u.w.writeGoAway(b, 0, http2.ErrCodeProtocol)
			return err
		}
	}
}

// streamError resets a stream the server broke; the attempt on it fails.
func (u *uconn) streamError(b *batch, se http2.StreamError) {
	if s := u.stream(se.StreamID); s != nil {
		s.mu.Lock()
		if s.u == u && s.uid == se.StreamID {
			s.upBroken(b, errUpstreamProtocol)
		}
		s.mu.Unlock()
	}
	u.w.writeRST(b, se.StreamID, se.Code)
}

func (u *uconn) handle(b *batch, f http2.Frame) error {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return u.settings(b, f)
	case *http2.PingFrame:
		if !f.IsAck() {
			u.w.writePing(b, true, f.Data)
		}
	case *http2.GoAwayFrame:
		u.goAway(b, f.LastStreamID)
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			u.mu.Lock()
			u.sendWin += int64(f.Increment)
			blocked := u.blocked
			u.blocked = nil
			u.mu.Unlock()
			for _, s := range blocked {
				s.mu.Lock()
				s.upBlocked = false
				if s.u == u {
					s.sendUp(b)
				}
				s.mu.Unlock()
			}
			return nil
		}
		if s := u.stream(f.StreamID); s != nil {
			s.mu.Lock()
			if s.u == u && s.uid == f.StreamID {
				s.upSendWin += int64(f.Increment)
				s.sendUp(b)
			}
			s.mu.Unlock()
		}
	case *http2.RSTStreamFrame:
		if s := u.stream(f.StreamID); s != nil {
			s.mu.Lock()
			if s.u == u && s.uid == f.StreamID {
				s.upReset(b, f.ErrCode)
			}
			s.mu.Unlock()
		}
	case *http2.MetaHeadersFrame:
		if s := u.stream(f.StreamID); s != nil {
			s.mu.Lock()
			if s.u == u && s.uid == f.StreamID {
				s.upHeaders(b, f)
			}
			s.mu.Unlock()
		}
	case *http2.DataFrame:
		n := int64(f.Header().Length)
		u.mu.Lock()
		if !u.recv.take(n) {
			u.mu.Unlock()
			return errUpstreamProtocol
		}
		s := u.streams[f.StreamID]
		u.mu.Unlock()
		if s != nil {
			s.mu.Lock()
			if s.u == u && s.uid == f.StreamID {
				s.upData(b, f, n)
				s.mu.Unlock()
				return nil
			}
			s.mu.Unlock()
		}
		u.consumed(b, n)
	case *http2.PushPromiseFrame:
		return errUpstreamProtocol // push is disabled in our SETTINGS
	}
	return nil
}

func (u *uconn) settings(b *batch, f *http2.SettingsFrame) error {
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		return errUpstreamProtocol
	}
	u.w.applySettings(f)
	var all []*fstream
	var delta int64
	u.mu.Lock()
	if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
		u.maxFrame = v
	}
	if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
		u.maxStreams = v
	}
	if !u.settingsSeen {
		u.settingsSeen = true
		close(u.settled)
	}
	if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
		delta = int64(v) - int64(u.initWin)
		u.initWin = int32(v)
		for _, s := range u.streams {
			all = append(all, s)
		}
	}
	u.mu.Unlock()
	u.w.writeSettings(b, true)
	for _, s := range all {
		s.mu.Lock()
		if s.u == u {
			s.upSendWin += delta
			s.sendUp(b)
		}
		s.mu.Unlock()
	}
	return nil
}

// goAway: streams above last were never processed and go elsewhere; the
// connection takes no new one and closes when the rest are done.
func (u *uconn) goAway(b *batch, last uint32) {
	u.mu.Lock()
	u.goaway = true
	var refused []*fstream
	for id, s := range u.streams {
		if id > last {
			refused = append(refused, s)
		}
	}
	empty := u.active == 0
	u.mu.Unlock()
	u.p.forget(u)
	for _, s := range refused {
		s.mu.Lock()
		if s.u == u && s.uid > last {
			s.refused(b)
		}
		s.mu.Unlock()
	}
	if empty {
		u.c.Close()
	}
}

// refused: the upstream did not process the attempt (REFUSED_STREAM, or
// above a GOAWAY's last stream): it goes to another endpoint if what the
// client sent so far is still kept, within the cluster's retry limits.
func (s *fstream) refused(b *batch) {
	if s.gotFinal || !s.replayable || s.retries >= maxRefusedRetries {
		s.upBroken(b, errUpstreamRefused)
		return
	}
	s.detachUp(b, false)
	if s.c == nil {
		s.retries++
		s.d.up.Metrics.Retry(s.proto)
	}
	s.resetResponse()
	s.attempt(b, true)
}

const maxRefusedRetries = 5

var errUpstreamRefused = errors.New("h2: upstream refused the stream")

// upReset: the upstream reset the stream.
func (s *fstream) upReset(b *batch, code http2.ErrCode) {
	if code == http2.ErrCodeRefusedStream {
		s.refused(b)
		return
	}
	if s.gotFinal && s.upRecvEnd {
		// The answer is complete; the reset only stops our side.
		s.upSentEnd = true
		s.detachUp(b, false)
		return
	}
	s.upBroken(b, errors.New("h2: upstream reset the stream: "+code.String()))
}

// upBroken: the attempt's upstream stream broke. Before the answer it
// is answered 502 (504 past the deadline); once the answer began, a gRPC
// client gets UNAVAILABLE in the trailers and any other a reset.
func (s *fstream) upBroken(b *batch, err error) {
	if s.done {
		return
	}
	s.detachUp(b, false)
	if !s.resStarted {
		if s.expired() {
			s.leaseDone(nil)
		} else {
			s.leaseDone(err)
		}
		s.fail(b, err)
		return
	}
	s.d.up.Log.Debug("h2: upstream answer broke", "path", s.path, "err", err)
	if s.expired() {
		s.leaseDone(nil)
		s.endExpired(b)
		return
	}
	s.leaseDone(err)
	if s.grpc {
		s.grpcCode = grpcUnavailable
		s.countOnce(502)
		s.endWithStatus(b, grpcUnavailable, l7.ReasonUpstreamFail)
		return
	}
	s.countOnce(502)
	s.reset(b, http2.ErrCodeInternal)
}

// upHeaders takes a header block of the answer: informational, the final
// head (where a retry policy may send the request elsewhere), or the
// trailers.
func (s *fstream) upHeaders(b *batch, f *http2.MetaHeadersFrame) {
	if s.done {
		return
	}
	if f.Truncated {
		s.upBroken(b, errors.New("h2: upstream answer head too large"))
		return
	}
	if s.gotFinal {
		if !f.StreamEnded() || len(f.PseudoFields()) > 0 {
			s.upBroken(b, errUpstreamProtocol)
			return
		}
		s.upRecvEnd = true
		// A copy: the upstream's field list is reused by its next block.
		s.resTrailers = slices.Clone(responseFields(f.RegularFields(), nil, nil))
		s.hasTrailers, s.downEnd = true, true
		if s.grpc && s.grpcCode < 0 {
			s.grpcCode = grpcStatusField(f.RegularFields())
		}
		s.flushDown(b)
		return
	}
	status, err := strconv.Atoi(f.PseudoValue("status"))
	if err != nil || status < 100 || status > 999 || status == 101 {
		s.upBroken(b, errUpstreamProtocol)
		return
	}
	if status < 200 {
		if f.StreamEnded() {
			s.upBroken(b, errUpstreamProtocol)
			return
		}
		s.d.w.writeHeaders(b, s.id, false, responseFields(f.Fields, nil, nil))
		return
	}
	s.gotFinal = true
	if s.tryTimer != nil {
		s.tryTimer.Stop()
		s.tryTimer = nil
	}
	code := -1
	if s.grpc {
		code = grpcStatusField(f.RegularFields())
	}
	var retryable bool
	if s.grpc {
		retryable = s.policy.RetryGRPC(code) || (s.idempotent && s.policy.RetryStatus(status))
	} else {
		retryable = s.idempotent && s.policy.RetryStatus(status)
	}
	if retryable {
		s.leaseDone(l7.Verdict(status, code, nil))
		if s.canRetry() && s.retry(b) {
			return
		}
	}
	s.status, s.grpcCode = status, code
	if v := fieldValue(f.RegularFields(), "content-length"); v != "" {
		s.resLen = parseContentLength(v)
	}
	var mod *route.HeaderModifier
	if s.action != nil {
		mod = s.action.ResponseHeaders
	}
	s.resStarted = true
	end := f.StreamEnded()
	s.d.w.writeHeaders(b, s.id, end, responseFields(f.Fields, mod, nil))
	if end {
		s.upRecvEnd, s.downSentEnd = true, true
		s.answered(b)
	}
}

// answered: the whole answer reached the client.
func (s *fstream) answered(b *batch) {
	s.d.answeredOne()
	s.leaseDone(l7.Verdict(s.status, s.grpcCode, nil))
	s.countOnce(s.status)
	s.close(b, http2.ErrCodeNo)
}

// upData takes DATA of the answer (n bytes of window, padding included).
func (s *fstream) upData(b *batch, f *http2.DataFrame, n int64) {
	if s.done || !s.gotFinal || s.upRecvEnd || !s.upRecv.take(n) {
		s.u.consumed(b, n)
		if !s.done && !s.upRecvEnd {
			s.upBroken(b, errUpstreamProtocol)
		}
		return
	}
	data := f.Data()
	if pad := n - int64(len(data)); pad > 0 {
		s.upConsumed(b, pad)
	}
	s.toDown = append(s.toDown, data...)
	if f.StreamEnded() {
		s.upRecvEnd, s.downEnd = true, true
	}
	s.flushDown(b)
}

// upConsumed gives n bytes of the answer's window back to the upstream.
func (s *fstream) upConsumed(b *batch, n int64) {
	u := s.u
	if u == nil {
		return
	}
	if !s.upRecvEnd {
		if inc := s.upRecv.consumed(n); inc > 0 {
			u.w.writeWindowUpdate(b, s.uid, uint32(inc))
		}
	}
	u.consumed(b, n)
}

// flushDown writes what the client's windows allow of the answer's body,
// then its end (trailers or an empty DATA) once the upstream's came.
func (s *fstream) flushDown(b *batch) {
	if s.done || !s.resStarted {
		return
	}
	for s.downOff < len(s.toDown) {
		n := min(int64(len(s.toDown)-s.downOff), s.downSendWin)
		if n <= 0 {
			return
		}
		n = s.d.takeSendWindow(s, n)
		if n == 0 {
			return
		}
		end := s.downEnd && !s.hasTrailers && s.downOff+int(n) == len(s.toDown)
		s.d.w.writeData(b, s.id, end, s.toDown[s.downOff:s.downOff+int(n)])
		s.downSendWin -= n
		s.downOff += int(n)
		s.upConsumed(b, n)
		if end {
			s.downSentEnd = true
		}
	}
	s.toDown, s.downOff = s.toDown[:0], 0
	if s.downEnd && !s.downSentEnd {
		if s.hasTrailers {
			s.d.w.writeHeaders(b, s.id, true, s.resTrailers)
		} else {
			s.d.w.writeData(b, s.id, true, nil)
		}
		s.downSentEnd = true
	}
	if s.downSentEnd {
		s.answered(b)
	}
}

// responseFields copies an answer's fields for the client: connection-
// specific ones dropped, the rule's response modifier applied. With
// nothing to change it returns in itself.
func responseFields(in []hpack.HeaderField, mod *route.HeaderModifier, _ *string) []hpack.HeaderField {
	if mod == nil && !slices.ContainsFunc(in, dropFromAnswer) {
		return in
	}
	out := make([]hpack.HeaderField, 0, len(in)+2)
	for _, f := range in {
		if !dropFromAnswer(f) {
			out = append(out, f)
		}
	}
	if mod != nil {
		// Pseudo-fields stay first.
		i := 0
		for i < len(out) && out[i].IsPseudo() {
			i++
		}
		reg := modifyFields(append([]hpack.HeaderField(nil), out[i:]...), mod, nil)
		out = append(out[:i], reg...)
	}
	return out
}

func dropFromAnswer(f hpack.HeaderField) bool {
	return connectionSpecificField(f.Name) || f.Name == "trailer" || f.Name == "host"
}

func fieldValue(fs []hpack.HeaderField, name string) string {
	for _, f := range fs {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}

// grpcStatusField reads grpc-status; -1 when absent or malformed.
func grpcStatusField(fs []hpack.HeaderField) int {
	v := fieldValue(fs, "grpc-status")
	if v == "" {
		return -1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return -1
	}
	return n
}
