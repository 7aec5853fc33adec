package h2

import (
	"errors"
	"io"
	"sync"
)

// replayBody hands the client's request body to the upstream attempts of
// one request, one after the other. It keeps what it read while the total
// stays within limit, so an attempt the upstream refused unprocessed can
// be replayed to another endpoint (GetBody); past the limit it keeps only
// what the current attempt has not read yet.
//
// The client's body is read by a pump goroutine, one chunk per demand (no
// read-ahead, so flow control still reaches the client): when the
// transport abandons an attempt (Close), its Read must return at once even
// if the client is sending nothing, as a streaming client waiting for the
// answer's headers does. A Read blocked on the client's body could not be
// interrupted.
type replayBody struct {
	src   io.Reader
	limit int

	mu       sync.Mutex
	buf      []byte // the body from offset base on
	base     int64
	err      error         // src's final error (io.EOF at the end)
	reading  bool          // the pump is reading
	ready    chan struct{} // closed (and replaced) when a pump read completes
	kick     chan struct{} // asks the pump for one read; closed by finish
	started  bool          // the pump runs
	finished bool
}

// errBodyGone: the body went past the replay limit and its start is no
// longer kept; errAttemptClosed: the transport abandoned the attempt.
var (
	errBodyGone      = errors.New("h2: request body too large to replay")
	errAttemptClosed = errors.New("h2: upstream attempt closed")
)

func newReplayBody(src io.Reader, limit int) *replayBody {
	return &replayBody{src: src, limit: limit, ready: make(chan struct{}), kick: make(chan struct{}, 1)}
}

// attempt returns a reader of the body from the start.
func (b *replayBody) attempt() io.ReadCloser {
	return &attemptBody{b: b, closed: make(chan struct{})}
}

// again is the request's GetBody: the body from the start for a retry, if
// its start is still kept.
func (b *replayBody) again() (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.base > 0 {
		return nil, errBodyGone
	}
	return b.attempt(), nil
}

// complete reports whether the whole body was received and is still kept,
// so a retry can send all of it.
func (b *replayBody) complete() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.base == 0 && b.err == io.EOF
}

// finish stops the pump once its read in progress returns (the server
// ends the client's body when the handler returns).
func (b *replayBody) finish() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.finished {
		b.finished = true
		close(b.kick)
	}
}

func (b *replayBody) pump() {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	chunk := (*bp)[:16<<10]
	for range b.kick {
		n, err := b.src.Read(chunk)
		b.mu.Lock()
		b.buf = append(b.buf, chunk[:n]...)
		if err != nil {
			b.err = err
		}
		b.reading = false
		close(b.ready)
		b.ready = make(chan struct{})
		b.mu.Unlock()
		if err != nil {
			return
		}
	}
}

// attemptBody is one attempt's reader.
type attemptBody struct {
	b      *replayBody
	off    int64
	closed chan struct{}
	once   sync.Once
}

func (a *attemptBody) Read(p []byte) (int, error) {
	select {
	case <-a.closed:
		return 0, errAttemptClosed
	default:
	}
	b := a.b
	b.mu.Lock()
	for {
		if a.off < b.base {
			b.mu.Unlock()
			return 0, errBodyGone
		}
		if i := a.off - b.base; i < int64(len(b.buf)) {
			n := copy(p, b.buf[i:])
			a.off += int64(n)
			if end := b.base + int64(len(b.buf)); end > int64(b.limit) && a.off == end {
				// Past the limit nothing can be replayed: drop what
				// this attempt has read.
				b.base, b.buf = end, b.buf[:0]
			}
			b.mu.Unlock()
			return n, nil
		}
		if b.err != nil {
			err := b.err
			b.mu.Unlock()
			return 0, err
		}
		if b.finished {
			b.mu.Unlock()
			return 0, errAttemptClosed
		}
		ready := b.ready
		if !b.reading {
			b.reading = true
			if !b.started {
				b.started = true
				go b.pump()
			}
			b.kick <- struct{}{}
		}
		b.mu.Unlock()
		select {
		case <-ready:
		case <-a.closed:
			return 0, errAttemptClosed
		}
		b.mu.Lock()
	}
}

// Close abandons the attempt; the client's body stays open for the next.
func (a *attemptBody) Close() error {
	a.once.Do(func() { close(a.closed) })
	return nil
}
