package rpc

import (
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// minRead is the least free space a read is offered.
const minRead = 16 << 10

// pooledRead is the size of the read buffers readBufs keeps: a new buffer
// takes minRead plus the unread tail moved into it, which is mostly less
// than a quarter of minRead (the room fill keeps).
const pooledRead = minRead + minRead/4

// readBuf is a read buffer that frames alias. It goes back to readBufs
// for reuse once its reader has moved on (retire) and every frame it lent
// was released, each once: a frame whose holder never releases it (a
// timed-out request, a frame a route keeps) leaves its buffer to the
// collector, as before buffers were reused.
type readBuf struct {
	b      []byte
	pooled bool // len(b) is pooledRead: it goes back to readBufs
	// refs: releases count down from 0; retire adds the frames lent, so
	// it reaches 0 exactly when the last of them is released.
	refs atomic.Int64
}

// readBufs recycles read buffers: allocating (and zeroing) a new one for
// every few hundred pipelined commands was most of a proxied command's
// garbage.
var readBufs = sync.Pool{New: func() any { return &readBuf{b: make([]byte, pooledRead), pooled: true} }}

// release ends one frame's use of the buffer; nil does nothing.
func (rb *readBuf) release() {
	if rb != nil && rb.refs.Add(-1) == 0 {
		rb.free()
	}
}

// releases counts releases of one buffer in a row, so a run of answers
// from one buffer costs one atomic operation on its count, not one each
// (that count's cache line otherwise moves between cores per message).
// Its owner flushes it; one never flushed only keeps its buffers from
// being reused.
type releases struct {
	rb *readBuf
	n  int64
}

// add counts one release of rb (nil: none).
func (r *releases) add(rb *readBuf) {
	if rb == nil {
		return
	}
	if rb != r.rb {
		r.flush()
		r.rb = rb
	}
	r.n++
}

// flush makes the releases counted so far.
func (r *releases) flush() {
	if r.rb != nil && r.rb.refs.Add(-r.n) == 0 {
		r.rb.free()
	}
	r.rb, r.n = nil, 0
}

// retire is the reader moving to another buffer after lending lent
// frames from this one.
func (rb *readBuf) retire(lent int64) {
	if rb.refs.Add(lent) == 0 {
		rb.free()
	}
}

func (rb *readBuf) free() {
	if rb.pooled {
		readBufs.Put(rb)
	}
}

// frameReader decodes frames from a stream. Frames alias its buffer; a
// buffer that lent bytes to a frame is never written again: when it runs
// out of room the unread tail moves to a new buffer, so a frame stays
// valid as long as someone holds it, with no copy per frame. The buffer a
// frame came from is cur right after next returns it; a holder that
// releases it (readBuf.release) once done with the frame's bytes lets the
// buffer be reused.
type frameReader struct {
	r          io.Reader
	p          *Protocol
	side       Side
	buf        []byte
	start, end int
	lent       bool // a frame aliases buf
	cur        *readBuf
	lentN      int64 // frames lent from cur
	// idle, when set, is called before a read that may block (every
	// buffered whole frame has been returned).
	idle func()
	// stamp: now is set after every read that returned bytes, so callers
	// time a read's worth of frames with one clock reading.
	stamp bool
	now   time.Time
	// spares are frames of the reader's own that nothing holds any more,
	// for the next Decodes to fill (Reuser codecs; see giveBack), at
	// most maxSpares.
	spares []Frame
}

// giveBack takes back a frame the reader decoded and nothing holds any
// more (Recycler's rules): as a frame for a later Decode to fill when the
// codec is a Reuser and the reader has room for it, else to the codec.
// Only the reader's own goroutine calls it.
func (fr *frameReader) giveBack(f Frame) {
	if fr.p.reuser != nil && f != nil && len(fr.spares) < maxSpares {
		fr.spares = append(fr.spares, f)
		return
	}
	fr.p.recycle(f)
}

// next returns the next frame. Errors: the reader's (io.EOF between
// frames; io.ErrUnexpectedEOF inside one), ErrFrameTooLarge, or the
// codec's.
func (fr *frameReader) next() (Frame, error) {
	need := 1
	for {
		if fr.end > fr.start {
			f, n, err := fr.decode()
			switch {
			case err == nil:
				return f, nil
			case err != ErrNeedMore:
				return nil, err
			}
			need = max(n, fr.end-fr.start+1)
			if need > fr.p.maxFrame {
				return nil, ErrFrameTooLarge
			}
		}
		if fr.idle != nil {
			fr.idle()
		}
		if err := fr.fill(need); err != nil {
			if err == io.EOF && fr.end > fr.start {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
	}
}

// nextBuffered returns the next frame when the bytes already read hold a
// whole one, else nil: it never reads, so the frames of one call of next
// and the nextBuffered calls after it share one buffer (cur) and one
// clock reading (now), and a reader can handle them as one batch. An
// error is left for next to report (it decodes the same bytes again).
func (fr *frameReader) nextBuffered() Frame {
	if fr.end <= fr.start {
		return nil
	}
	f, _, err := fr.decode()
	if err != nil {
		return nil
	}
	return f
}

// decode decodes the frame at start (into a spare frame when there is
// one) and moves start past it.
func (fr *frameReader) decode() (Frame, int, error) {
	var (
		f   Frame
		n   int
		err error
	)
	b := fr.buf[fr.start:fr.end]
	if k := len(fr.spares); k > 0 {
		f, n, err = fr.p.reuser.DecodeInto(fr.spares[k-1], b, fr.side, fr.p.maxFrame)
		if err == nil {
			// filled (or, not the codec's, dropped)
			fr.spares[k-1] = nil
			fr.spares = fr.spares[:k-1]
		}
	} else {
		f, n, err = fr.p.Decode(b, fr.side, fr.p.maxFrame)
	}
	if err != nil {
		return nil, n, err
	}
	if n <= 0 || n > len(b) {
		return nil, 0, errors.New("rpc: codec " + fr.p.Name() + " returned a bad frame length")
	}
	fr.start += n
	fr.lent = true
	fr.lentN++
	return f, n, nil
}

// fill reads once, after making room for need bytes from start.
func (fr *frameReader) fill(need int) error {
	if fr.start+need > len(fr.buf) || len(fr.buf)-fr.end < minRead/4 {
		size := max(need, fr.end-fr.start+minRead)
		if fr.lent || size > len(fr.buf) {
			var nb *readBuf
			if size <= pooledRead {
				nb = readBufs.Get().(*readBuf)
				nb.refs.Store(0)
			} else {
				nb = &readBuf{b: make([]byte, size)}
			}
			fr.end = copy(nb.b, fr.buf[fr.start:fr.end])
			if old := fr.cur; old != nil {
				old.retire(fr.lentN)
			}
			fr.buf, fr.start, fr.lent, fr.cur, fr.lentN = nb.b, 0, false, nb, 0
		} else {
			fr.end = copy(fr.buf, fr.buf[fr.start:fr.end])
			fr.start = 0
		}
	}
	n, err := fr.r.Read(fr.buf[fr.end:])
	fr.end += n
	if n > 0 {
		if fr.stamp {
			fr.now = time.Now()
		}
		return nil
	}
	return err // nil for a read of nothing: the caller tries again
}

// buffered returns the bytes read and not yet decoded.
func (fr *frameReader) buffered() []byte { return fr.buf[fr.start:fr.end] }

// ready reports whether undecoded bytes are waiting, so a reader can
// process a whole batch before flushing.
func (fr *frameReader) ready() bool { return fr.end > fr.start }

// unread puts the last frames decoded back into the unread bytes, from
// at on (where the last frame kept ended), so that what follows the
// frame kept is read again as bytes (a pinned request's successors).
func (fr *frameReader) unread(at, frames int) {
	fr.start = at
	fr.lentN -= int64(frames)
}
