package h2

import (
	"bufio"
	"context"
	"errors"
	"io"
	"math"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

// Flow control windows the frame engine offers its peers, both sides: a
// stream may have this much of its body in the proxy at once, a
// connection this much over all its streams. The proxy returns window to
// one side only as the other side takes the bytes, so what it buffers is
// bounded by these.
const (
	frameStreamWindow = 256 << 10
	frameConnWindow   = 1 << 20
	defaultWindow     = 65535
)

// dconn is one downstream (client) connection of the frame engine. One
// goroutine reads and dispatches the client's frames; its writes go out
// through w.
type dconn struct {
	ctx    context.Context
	cancel context.CancelFunc
	up     *l7.Upstream
	pool   *Pool
	opt    *Options
	c      net.Conn
	w      *wconn
	fr     *http2.Framer
	hb     *headerBlock
	b      batch // the reader's

	mu        sync.Mutex
	streams   map[uint32]*fstream
	maxID     uint32 // the highest stream id the client opened
	sendWin   int64  // connection window for DATA to the client
	initWin   int32  // the client's SETTINGS_INITIAL_WINDOW_SIZE
	maxFrame  uint32 // the client's SETTINGS_MAX_FRAME_SIZE
	blocked   []*fstream
	recv      recvWindow // the connection window offered to the client
	goneAway  bool       // the final GOAWAY is out: no stream above lastID
	lastID    uint32
	ended     bool // the read loop is over
	resets    int  // streams the client reset before their answer, less those answered since (see maxResets)
	pings     pingSet
	idleTimer *time.Timer

	wg sync.WaitGroup // the connection's goroutines besides the reader
}

// errClientProtocol wraps a connection error the client caused.
type connError struct {
	code http2.ErrCode
	why  string
}

func (e connError) Error() string {
	return "h2: client connection error " + e.code.String() + ": " + e.why
}

// serveFrames is Serve for the frame engine.
func serveFrames(ctx context.Context, down net.Conn, up *l7.Upstream, pool *Pool) {
	opt := &pool.opt
	ctx, cancel := context.WithCancel(ctx)
	d := &dconn{
		ctx: ctx, cancel: cancel, up: up, pool: pool, opt: opt, c: down,
		streams: map[uint32]*fstream{}, sendWin: defaultWindow, initWin: defaultWindow, maxFrame: 16384,
		recv: newRecvWindow(frameConnWindow),
	}
	d.w = newWconn(down)
	br := bufio.NewReaderSize(&batchReader{c: down, b: &d.b}, 32<<10)
	d.fr = http2.NewFramer(nil, br)
	d.fr.SetMaxReadFrameSize(16384)
	d.fr.SetReuseFrames()
	d.hb = newHeaderBlock(opt.MaxHeaderListSize, false)

	stop := context.AfterFunc(ctx, func() { down.Close() })
	served := make(chan struct{})
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.drain(up.Draining, served, opt.DrainPingTimeout)
	}()

	err := d.run(br)
	var ce connError
	if errors.As(err, &ce) {
		d.mu.Lock()
		last := d.maxID
		d.mu.Unlock()
		d.w.writeGoAway(nil, last, ce.code)
	}
	d.mu.Lock()
	d.ended = true
	all := make([]*fstream, 0, len(d.streams))
	for _, s := range d.streams {
		all = append(all, s)
	}
	if d.idleTimer != nil {
		d.idleTimer.Stop()
	}
	d.mu.Unlock()
	for _, s := range all {
		s.mu.Lock()
		s.clientGone(nil)
		s.mu.Unlock()
	}
	close(served)
	cancel()
	d.wg.Wait()
	stop()
	down.SetWriteDeadline(time.Now().Add(time.Second))
	d.w.finish()
	if ce.code != 0 {
		lingerClose(down)
	}
	down.Close()
}

// lingerClose gives a client that broke the protocol a moment to read the
// GOAWAY before the close: closing with its bytes unread would reset the
// connection and could lose the GOAWAY.
func lingerClose(c net.Conn) {
	cw, ok := c.(interface{ CloseWrite() error })
	if !ok {
		return
	}
	cw.CloseWrite()
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 1<<20))
}

func (d *dconn) run(br *bufio.Reader) error {
	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, pre); err != nil {
		return err
	}
	if string(pre) != http2.ClientPreface {
		return errors.New("h2: bad client preface")
	}
	d.w.writeSettings(nil, false,
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: d.opt.MaxConcurrentStreams},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: frameStreamWindow},
		http2.Setting{ID: http2.SettingMaxHeaderListSize, Val: d.opt.MaxHeaderListSize})
	d.w.writeWindowUpdate(nil, 0, frameConnWindow-defaultWindow)
	d.armIdle()
	first := true
	for {
		f, err := d.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) && !first {
				d.streamError(se)
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{code: http2.ErrCode(ce), why: err.Error()}
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				return connError{code: http2.ErrCodeFrameSize, why: "frame too large"}
			}
			return err
		}
		if first {
			if sf, ok := f.(*http2.SettingsFrame); !ok || sf.IsAck() {
				return connError{code: http2.ErrCodeProtocol, why: "first frame is not SETTINGS"}
			}
			first = false
		}
		f, err = readHeaders(d.hb, f)
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				d.streamError(se)
				continue
			}
			return connError{code: http2.ErrCode(err.(http2.ConnectionError)), why: "bad header block"}
		}
		if f == nil {
			continue
		}
		if err := d.handle(f); err != nil {
			return err
		}
	}
}

// readHeaders passes header block frames to hb: a complete block comes
// back as a MetaHeadersFrame, a part of one as nil; other frames as they
// are. Errors are StreamError or ConnectionError.
func readHeaders(hb *headerBlock, f http2.Frame) (http2.Frame, error) {
	var mh *http2.MetaHeadersFrame
	var err error
	switch f := f.(type) {
	case *http2.HeadersFrame:
		mh, err = hb.start(f)
	case *http2.ContinuationFrame:
		mh, err = hb.cont(f)
	default:
		return f, nil
	}
	if mh == nil || err != nil {
		return nil, err
	}
	return mh, nil
}

// streamError resets one stream the client broke; its neighbours go on.
func (d *dconn) streamError(se http2.StreamError) {
	d.mu.Lock()
	s := d.streams[se.StreamID]
	if s == nil && se.StreamID > d.maxID {
		d.maxID = se.StreamID
	}
	d.mu.Unlock()
	if s != nil {
		s.mu.Lock()
		s.reset(&d.b, se.Code)
		s.mu.Unlock()
		return
	}
	d.w.writeRST(&d.b, se.StreamID, se.Code)
}

func (d *dconn) stream(id uint32) *fstream {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.streams[id]
}

func (d *dconn) handle(f http2.Frame) error {
	b := &d.b
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if f.IsAck() {
			return nil
		}
		return d.settings(f)
	case *http2.PingFrame:
		if f.IsAck() {
			d.pings.acked(f.Data)
			return nil
		}
		d.w.writePing(b, true, f.Data)
	case *http2.WindowUpdateFrame:
		if f.StreamID == 0 {
			d.mu.Lock()
			d.sendWin += int64(f.Increment)
			if d.sendWin > math.MaxInt32 {
				d.mu.Unlock()
				return connError{code: http2.ErrCodeFlowControl, why: "connection window overflow"}
			}
			blocked := d.blocked
			d.blocked = nil
			d.mu.Unlock()
			for _, s := range blocked {
				s.mu.Lock()
				s.downBlocked = false
				s.flushDown(b)
				s.mu.Unlock()
			}
			return nil
		}
		if s := d.stream(f.StreamID); s != nil {
			s.mu.Lock()
			s.downSendWin += int64(f.Increment)
			if s.downSendWin > math.MaxInt32 {
				s.reset(b, http2.ErrCodeFlowControl)
			} else {
				s.flushDown(b)
			}
			s.mu.Unlock()
		} else if d.idle(f.StreamID) {
			return connError{code: http2.ErrCodeProtocol, why: "WINDOW_UPDATE on an idle stream"}
		}
	case *http2.RSTStreamFrame:
		if s := d.stream(f.StreamID); s != nil {
			if !d.spendReset() {
				return connError{code: http2.ErrCodeEnhanceYourCalm, why: "too many streams reset before their answer"}
			}
			s.mu.Lock()
			s.clientGone(b)
			s.mu.Unlock()
		} else if d.idle(f.StreamID) {
			return connError{code: http2.ErrCodeProtocol, why: "RST_STREAM on an idle stream"}
		}
	case *http2.MetaHeadersFrame:
		return d.headers(f)
	case *http2.DataFrame:
		n := int64(f.Header().Length)
		d.mu.Lock()
		if !d.recv.take(n) {
			d.mu.Unlock()
			return connError{code: http2.ErrCodeFlowControl, why: "connection window exceeded"}
		}
		s := d.streams[f.StreamID]
		idle := f.StreamID > d.maxID
		d.mu.Unlock()
		if s == nil {
			if idle {
				return connError{code: http2.ErrCodeProtocol, why: "DATA on an idle stream"}
			}
			d.consumed(b, n) // a stream already closed: its bytes go nowhere
			return nil
		}
		s.mu.Lock()
		s.requestData(b, f, n)
		s.mu.Unlock()
	case *http2.PushPromiseFrame:
		return connError{code: http2.ErrCodeProtocol, why: "PUSH_PROMISE from a client"}
	case *http2.GoAwayFrame, *http2.PriorityFrame, *http2.UnknownFrame:
		// Nothing to do: a client's GOAWAY opens no stream we wait for.
	}
	return nil
}

// maxResets is how many more streams a client may reset before their
// answer than it lets finish. Each such stream cost an upstream request
// for nothing: a client that opens and resets streams in a loop (the
// "rapid reset" attack, CVE-2023-44487) would keep the upstreams busy
// without ever being bound by MaxConcurrentStreams. Past the budget the
// connection ends with GOAWAY(ENHANCE_YOUR_CALM); clients that cancel
// now and then never come near it.
const maxResets = 1000

// spendReset takes one reset from the client's budget; false when none
// is left.
func (d *dconn) spendReset() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.resets++
	return d.resets <= maxResets
}

// answeredOne gives a reset back to the budget: a stream was answered.
func (d *dconn) answeredOne() {
	d.mu.Lock()
	if d.resets > 0 {
		d.resets--
	}
	d.mu.Unlock()
}

// idle reports whether id names a stream the client has not opened yet.
func (d *dconn) idle(id uint32) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return id > d.maxID
}

func (d *dconn) settings(f *http2.SettingsFrame) error {
	if err := f.ForeachSetting(func(s http2.Setting) error { return s.Valid() }); err != nil {
		var ce http2.ConnectionError
		if errors.As(err, &ce) {
			return connError{code: http2.ErrCode(ce), why: "bad setting"}
		}
		return connError{code: http2.ErrCodeProtocol, why: "bad setting"}
	}
	d.w.applySettings(f)
	var all []*fstream
	var delta int64
	d.mu.Lock()
	if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
		d.maxFrame = v
	}
	if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
		delta = int64(v) - int64(d.initWin)
		d.initWin = int32(v)
		for _, s := range d.streams {
			all = append(all, s)
		}
	}
	d.mu.Unlock()
	// The ack goes before any DATA the new window lets out.
	d.w.writeSettings(&d.b, true)
	for _, s := range all {
		s.mu.Lock()
		s.downSendWin += delta
		if s.downSendWin > math.MaxInt32 {
			s.mu.Unlock()
			return connError{code: http2.ErrCodeFlowControl, why: "stream window overflow"}
		}
		s.flushDown(&d.b)
		s.mu.Unlock()
	}
	return nil
}

// headers takes a header block from the client: a new request, or the
// trailers of one in progress.
func (d *dconn) headers(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if id%2 == 0 {
		return connError{code: http2.ErrCodeProtocol, why: "even stream id from a client"}
	}
	d.mu.Lock()
	if s := d.streams[id]; s != nil {
		d.mu.Unlock()
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.reqEnded {
			s.reset(&d.b, http2.ErrCodeStreamClosed)
			return nil
		}
		if !f.StreamEnded() {
			s.reset(&d.b, http2.ErrCodeProtocol)
			return nil
		}
		s.requestTrailers(&d.b, f)
		return nil
	}
	if id <= d.maxID {
		d.mu.Unlock()
		return nil // a stream already closed (reset by the proxy): ignored
	}
	d.maxID = id
	if d.goneAway && id > d.lastID {
		d.mu.Unlock()
		return nil // opened after the final GOAWAY: ignored, as it says
	}
	if uint32(len(d.streams)) >= d.opt.MaxConcurrentStreams {
		d.mu.Unlock()
		d.w.writeRST(&d.b, id, http2.ErrCodeRefusedStream)
		return nil
	}
	s := newFstream(d, id)
	d.streams[id] = s
	if d.idleTimer != nil {
		d.idleTimer.Stop()
	}
	d.mu.Unlock()
	s.mu.Lock()
	s.request(&d.b, f)
	s.mu.Unlock()
	return nil
}

// consumed gives n bytes of connection window back to the client, in
// batches of a quarter window.
func (d *dconn) consumed(b *batch, n int64) {
	if n <= 0 {
		return
	}
	d.mu.Lock()
	inc := d.recv.consumed(n)
	d.mu.Unlock()
	if inc > 0 {
		d.w.writeWindowUpdate(b, 0, uint32(inc))
	}
}

// takeSendWindow reserves up to n bytes of the connection window for
// DATA to the client; 0 puts s on the blocked list.
func (d *dconn) takeSendWindow(s *fstream, n int64) int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return takeWindow(&d.sendWin, &d.blocked, s, &s.downBlocked, min(n, int64(d.maxFrame)))
}

// takeWindow takes up to n bytes of a connection's send window win; with
// none left, s joins the connection's blocked list (once: isBlocked) and
// gets 0. The connection's lock is held.
func takeWindow(win *int64, blocked *[]*fstream, s *fstream, isBlocked *bool, n int64) int64 {
	n = min(n, *win)
	if n <= 0 {
		if !*isBlocked {
			*isBlocked = true
			*blocked = append(*blocked, s)
		}
		return 0
	}
	*win -= n
	return n
}

// remove forgets a finished stream; after the final GOAWAY the last one
// out closes the connection.
func (d *dconn) remove(s *fstream) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.streams[s.id] != s {
		return
	}
	delete(d.streams, s.id)
	if s.downBlocked {
		for i, x := range d.blocked {
			if x == s {
				d.blocked = append(d.blocked[:i], d.blocked[i+1:]...)
				break
			}
		}
		s.downBlocked = false
	}
	if len(d.streams) == 0 {
		if d.goneAway {
			d.shutdownLocked()
		} else {
			d.armIdleLocked()
		}
	}
}

// shutdownLocked ends a drained connection: what is queued goes out,
// then the connection closes, which ends the reader. mu is held.
func (d *dconn) shutdownLocked() {
	if d.ended {
		return
	}
	d.ended = true
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		d.c.SetWriteDeadline(time.Now().Add(time.Second))
		d.w.finish()
		d.c.Close()
	}()
}

func (d *dconn) armIdle() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.armIdleLocked()
}

// armIdleLocked starts the client idle timeout (Options.ClientIdleTimeout)
// when no stream is open: a GOAWAY and a close when it passes.
func (d *dconn) armIdleLocked() {
	if d.opt.ClientIdleTimeout <= 0 || d.ended {
		return
	}
	if d.idleTimer != nil {
		d.idleTimer.Reset(d.opt.ClientIdleTimeout)
		return
	}
	d.idleTimer = time.AfterFunc(d.opt.ClientIdleTimeout, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if len(d.streams) > 0 || d.ended {
			return
		}
		d.goneAway, d.lastID = true, d.maxID
		d.w.writeGoAway(nil, d.maxID, http2.ErrCodeNo)
		d.shutdownLocked()
	})
}

// drain runs the two-step GOAWAY of RFC 9113 §6.8 when draining closes,
// behind a barrier: first a PING, holding every later frame until the
// client answers it (see the package doc for why); then a GOAWAY with the
// highest stream id and a PING, so the client stops opening streams while
// those already on the wire are still served; once that PING is answered,
// the final GOAWAY with the last stream the client opened, and the
// connection closes when the streams in flight are done. A PING left
// unanswered for timeout moves to the next step all the same.
func (d *dconn) drain(draining <-chan struct{}, served <-chan struct{}, timeout time.Duration) {
	select {
	case <-draining:
	case <-served:
		return
	}
	// The barrier.
	data, acked := d.pings.add()
	d.w.mu.Lock()
	d.w.frame(http2.FramePing, 0, 0, data[:])
	d.w.hold = true
	d.w.mu.Unlock()
	d.w.wake()
	if !waitAnswer(acked, served, timeout) {
		return
	}
	// Step one: GOAWAY(2^31-1) and a PING ahead of everything held.
	data, acked = d.pings.add()
	d.w.mu.Lock()
	held := d.w.held
	d.w.held, d.w.hold = nil, false
	d.w.frame(http2.FrameGoAway, 0, 0, goAwayPayload(math.MaxInt32, http2.ErrCodeNo))
	d.w.frame(http2.FramePing, 0, 0, data[:])
	if !d.w.closed {
		d.w.buf = append(d.w.buf, held...)
	}
	d.w.mu.Unlock()
	d.w.wake()
	if !waitAnswer(acked, served, timeout) {
		return
	}
	// Step two: the final GOAWAY.
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ended {
		return
	}
	d.goneAway, d.lastID = true, d.maxID
	d.w.writeGoAway(nil, d.maxID, http2.ErrCodeNo)
	if len(d.streams) == 0 {
		d.shutdownLocked()
	}
}

// connectionSpecificField: fields RFC 9113 §8.2.2 forbids in HTTP/2 (a
// request carrying one is malformed); an upstream's answer has them
// dropped. Names are lower case, as HTTP/2 has them.
func connectionSpecificField(name string) bool {
	switch name {
	case "connection", "proxy-connection", "keep-alive", "transfer-encoding", "upgrade":
		return true
	}
	return false
}

func isGRPCType(v string) bool {
	const g = "application/grpc"
	return strings.HasPrefix(v, g) && (len(v) == len(g) || v[len(g)] == '+' || v[len(g)] == ';')
}

// parseContentLength reads a content-length field; -1 when malformed.
func parseContentLength(v string) int64 {
	if v == "" || len(v) > 18 {
		return -1
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || v[0] == '+' {
		return -1
	}
	return n
}
