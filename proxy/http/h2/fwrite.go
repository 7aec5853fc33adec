package h2

import (
	"bytes"
	"encoding/binary"
	"net"
	"sync"
	"syscall"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// wconn is the writing half of one HTTP/2 connection of the frame engine
// (either side). Frames are encoded into a queue under mu, in the order
// they must reach the wire (HPACK's dynamic table depends on it), and the
// whole queue leaves in one write when the goroutine that queued them
// flushes: the frames a reader produced for one read of its peer's bytes
// (answers, forwarded DATA, WINDOW_UPDATEs) go together. The flushing
// goroutine writes itself without blocking (flush) when it can; what the
// socket does not take at once goes to the connection's writer
// goroutine, which blocks for it, so a peer that stops reading never
// stalls the goroutine that serves someone else.
type wconn struct {
	c   net.Conn
	raw syscall.RawConn // for writes that must not block; nil: the writer only

	mu       sync.Mutex
	buf      []byte // frames to write
	spare    []byte
	writing  bool   // someone (flush or the writer) is writing: only it may
	held     []byte // frames queued while hold is set (a drain's barrier)
	hold     bool
	closed   bool // no more writes: the connection failed or is closing
	enc      *hpack.Encoder
	hbuf     bytes.Buffer
	memo     encodeMemo // the last block, when the same fields may reuse it
	maxFrame uint32     // the peer's SETTINGS_MAX_FRAME_SIZE

	kick chan struct{} // cap 1: the writer has something to do
	done chan struct{} // closed when the writer goroutine ends
	err  error         // the write error that ended it, if any
}

func newWconn(c net.Conn) *wconn {
	w := &wconn{c: c, maxFrame: 16384, kick: make(chan struct{}, 1), done: make(chan struct{})}
	w.enc = hpack.NewEncoder(&w.hbuf)
	tcp, _ := c.(*net.TCPConn)
	if t, ok := c.(interface{ TCP() *net.TCPConn }); ok {
		tcp = t.TCP() // the sniffer's replaying conn writes straight through
	}
	if tcp != nil {
		w.raw, _ = tcp.SyscallConn()
	}
	go w.loop()
	return w
}

// take hands the queue to the caller, who becomes the one writing; nil
// when it is empty or someone else writes. mu is held.
func (w *wconn) take() []byte {
	if w.writing || len(w.buf) == 0 {
		return nil
	}
	b := w.buf
	w.buf, w.spare = w.spare[:0], nil
	w.writing = true
	return b
}

// wrote ends a write of b: its buffer is kept for reuse unless a burst
// made it large. mu is held.
func (w *wconn) wrote(b []byte) {
	w.writing = false
	if cap(b) <= 256<<10 {
		w.spare = b[:0]
	}
	if w.closed {
		w.wake() // the writer may be waiting to end
	}
}

// failed ends the connection after a write error. mu is held.
func (w *wconn) failed(err error) {
	w.writing = false
	w.err, w.closed, w.buf, w.held = err, true, nil, nil
	w.c.Close()
	w.wake()
}

// loop is the writer goroutine: it writes, blocking, whatever a flush
// could not, and everything queued by goroutines that only wake it.
func (w *wconn) loop() {
	defer close(w.done)
	for range w.kick {
		for {
			w.mu.Lock()
			b := w.take()
			if b == nil {
				done := w.closed && !w.writing
				w.mu.Unlock()
				if done {
					return
				}
				break
			}
			w.mu.Unlock()
			_, err := w.c.Write(b)
			w.mu.Lock()
			if err != nil {
				w.failed(err)
				w.mu.Unlock()
				return
			}
			w.wrote(b)
			w.mu.Unlock()
		}
	}
}

// flush writes the queue from the calling goroutine as far as the socket
// takes it without blocking, and leaves the rest to the writer.
func (w *wconn) flush() {
	if w.raw == nil {
		w.wake()
		return
	}
	for {
		w.mu.Lock()
		b := w.take()
		w.mu.Unlock()
		if b == nil {
			return // empty, or the one writing picks the rest up
		}
		n, err := writeNow(w.raw, b)
		w.mu.Lock()
		switch {
		case err != nil:
			w.failed(err)
			w.mu.Unlock()
			return
		case n < len(b):
			// The socket is full: the rest goes first, by the writer.
			rest := append(make([]byte, 0, len(b)-n+len(w.buf)), b[n:]...)
			w.buf = append(rest, w.buf...)
			w.writing = false
			w.mu.Unlock()
			w.wake()
			return
		}
		w.wrote(b)
		w.mu.Unlock()
	}
}

// writeNow writes what the socket takes without waiting.
func writeNow(raw syscall.RawConn, b []byte) (int, error) {
	var n int
	var werr error
	err := raw.Write(func(fd uintptr) bool {
		for n < len(b) {
			k, e := syscall.Write(int(fd), b[n:])
			if e == syscall.EINTR {
				continue
			}
			if e != nil {
				if e != syscall.EAGAIN {
					werr = e
				}
				return true
			}
			n += k
		}
		return true
	})
	if werr == nil {
		werr = err
	}
	return n, werr
}

// wake asks the writer to send what is queued.
func (w *wconn) wake() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// finish lets the writer send what is queued and stop; later frames are
// dropped. It returns once the writer is gone.
func (w *wconn) finish() {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		if w.hold {
			w.buf = append(w.buf, w.held...)
			w.held, w.hold = nil, false
		}
	}
	w.mu.Unlock()
	w.wake()
	<-w.done
}

// stop ends the writer without sending what is queued.
func (w *wconn) stop() {
	w.mu.Lock()
	w.closed, w.buf, w.held = true, nil, nil
	w.mu.Unlock()
	w.wake()
}

// out is where the next frame goes; mu is held. Nil when closed.
func (w *wconn) out() *[]byte {
	switch {
	case w.closed:
		return nil
	case w.hold:
		return &w.held
	}
	return &w.buf
}

func appendFrameHeader(b []byte, length int, t http2.FrameType, flags http2.Flags, id uint32) []byte {
	return append(b, byte(length>>16), byte(length>>8), byte(length), byte(t), byte(flags),
		byte(id>>24)&0x7f, byte(id>>16), byte(id>>8), byte(id))
}

// maxQueued bounds the frames queued on one connection. DATA is bounded
// by flow control; what passes this is a peer that sends control frames
// needing an answer (PING, SETTINGS) and never reads: it is cut off.
const maxQueued = 16 << 20

// frame queues one frame with payload p; mu is held.
func (w *wconn) frame(t http2.FrameType, flags http2.Flags, id uint32, p []byte) {
	o := w.out()
	if o == nil {
		return
	}
	if len(*o) > maxQueued {
		w.closed, w.buf, w.held = true, nil, nil
		w.c.Close()
		return
	}
	*o = append(appendFrameHeader(*o, len(p), t, flags, id), p...)
}

// batch collects the connections a reader goroutine queued frames on, so
// the writers are woken once, when the reader is about to wait for more
// input. A nil batch wakes at once (timers, dial goroutines).
type batch struct {
	ws []*wconn
}

func (b *batch) mark(w *wconn) {
	if b == nil {
		w.flush()
		return
	}
	for _, x := range b.ws {
		if x == w {
			return
		}
	}
	b.ws = append(b.ws, w)
}

func (b *batch) flush() {
	for i, w := range b.ws {
		w.flush()
		b.ws[i] = nil
	}
	b.ws = b.ws[:0]
}

// batchReader wakes a batch's writers before each read of the socket
// (bufio reads it only when its buffer is empty, so the frames of one
// read are answered together).
type batchReader struct {
	c net.Conn
	b *batch
}

func (r *batchReader) Read(p []byte) (int, error) {
	r.b.flush()
	return r.c.Read(p)
}

// writeHeaders queues a header block (HEADERS and, when longer than the
// peer's frame size, CONTINUATION frames).
func (w *wconn) writeHeaders(b *batch, id uint32, end bool, fields []hpack.HeaderField) {
	w.mu.Lock()
	w.headersLocked(id, end, fields)
	w.mu.Unlock()
	b.mark(w)
}

func (w *wconn) headersLocked(id uint32, end bool, fields []hpack.HeaderField) {
	if w.closed {
		return
	}
	block, ok := w.memo.lookup(fields)
	if !ok {
		w.hbuf.Reset()
		for _, f := range fields {
			w.enc.WriteField(f)
		}
		block = w.hbuf.Bytes()
		w.memo.encoded(fields, block)
	}
	t := http2.FrameHeaders
	var flags http2.Flags
	if end {
		flags |= http2.FlagHeadersEndStream
	}
	for first := true; first || len(block) > 0; first = false {
		n := min(len(block), int(w.maxFrame))
		f := flags
		if n == len(block) {
			f |= http2.FlagHeadersEndHeaders
		}
		w.frame(t, f, id, block[:n])
		block = block[n:]
		t, flags = http2.FrameContinuation, 0
	}
}

func (w *wconn) writeData(b *batch, id uint32, end bool, p []byte) {
	var flags http2.Flags
	if end {
		flags = http2.FlagDataEndStream
	}
	w.mu.Lock()
	w.frame(http2.FrameData, flags, id, p)
	w.mu.Unlock()
	b.mark(w)
}

func (w *wconn) writeRST(b *batch, id uint32, code http2.ErrCode) {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], uint32(code))
	w.mu.Lock()
	w.frame(http2.FrameRSTStream, 0, id, p[:])
	w.mu.Unlock()
	b.mark(w)
}

func (w *wconn) writeWindowUpdate(b *batch, id uint32, inc uint32) {
	var p [4]byte
	binary.BigEndian.PutUint32(p[:], inc)
	w.mu.Lock()
	w.frame(http2.FrameWindowUpdate, 0, id, p[:])
	w.mu.Unlock()
	b.mark(w)
}

func (w *wconn) writePing(b *batch, ack bool, data [8]byte) {
	var flags http2.Flags
	if ack {
		flags = http2.FlagPingAck
	}
	w.mu.Lock()
	w.frame(http2.FramePing, flags, 0, data[:])
	w.mu.Unlock()
	b.mark(w)
}

func goAwayPayload(last uint32, code http2.ErrCode) []byte {
	var p [8]byte
	binary.BigEndian.PutUint32(p[:4], last&0x7fffffff)
	binary.BigEndian.PutUint32(p[4:], uint32(code))
	return p[:]
}

func (w *wconn) writeGoAway(b *batch, last uint32, code http2.ErrCode) {
	w.mu.Lock()
	w.frame(http2.FrameGoAway, 0, 0, goAwayPayload(last, code))
	w.mu.Unlock()
	b.mark(w)
}

// writeSettings queues a SETTINGS frame, or its ack when s is empty and
// ack is set.
func (w *wconn) writeSettings(b *batch, ack bool, s ...http2.Setting) {
	var flags http2.Flags
	if ack {
		flags = http2.FlagSettingsAck
	}
	p := make([]byte, 0, 6*len(s))
	for _, x := range s {
		p = append(p, byte(x.ID>>8), byte(x.ID), byte(x.Val>>24), byte(x.Val>>16), byte(x.Val>>8), byte(x.Val))
	}
	w.mu.Lock()
	w.frame(http2.FrameSettings, flags, 0, p)
	w.mu.Unlock()
	b.mark(w)
}

// applySettings takes the peer's settings that concern the writer.
func (w *wconn) applySettings(f *http2.SettingsFrame) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if v, ok := f.Value(http2.SettingMaxFrameSize); ok {
		w.maxFrame = v
	}
	if v, ok := f.Value(http2.SettingHeaderTableSize); ok {
		w.enc.SetMaxDynamicTableSizeLimit(min(v, 4096))
		w.memo.ok = false // the next block may carry a size update
	}
}

// recvWindow is one flow control window the proxy offers its peer (a
// connection's or a stream's): what the peer may still send, and what
// the proxy passed on but has not given back yet. Window goes back a
// quarter of size at a time, so small frames do not each cost a
// WINDOW_UPDATE. The owner's lock guards it.
type recvWindow struct {
	avail, unacked, size int64
}

func newRecvWindow(size int64) recvWindow { return recvWindow{avail: size, size: size} }

// take accounts n bytes received; false when they exceed the window (a
// flow control error).
func (w *recvWindow) take(n int64) bool {
	if n > w.avail {
		return false
	}
	w.avail -= n
	return true
}

// consumed records n bytes passed on and returns the increment to send
// now (0: none yet).
func (w *recvWindow) consumed(n int64) int64 {
	w.unacked += n
	if w.unacked < w.size/4 {
		return 0
	}
	inc := w.unacked
	w.avail, w.unacked = w.avail+inc, 0
	return inc
}
