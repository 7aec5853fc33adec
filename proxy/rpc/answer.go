package rpc

import (
	"net"
	"slices"
	"sync"

	"github.com/weir-mesh/weir/proxy/rawsock"
)

// The answer side of a session: how answers get back to the client.
//
// Whoever completes answers writes them: usually the upstream connection's
// reader, once its read is used up (a read's worth of answers, one write),
// or the session's reader for the answers it makes itself (heartbeats,
// error replies). That write is non-blocking: an answer costs no hand-off
// to another goroutine, the way an L4 relay's bytes cost none. Only when
// the client's socket is full does the rest go to the session's writer
// goroutine, which blocks on it: an upstream reader shared by many
// clients never waits for a slow one.
//
// One goroutine at a time owns the socket (answers.writing); the others
// only queue what they completed, and the owner takes it before letting
// go. Protocols without ids are answered in request order (a completed
// answer waits for the ones before it); with ids, in completion order.

// slot is one request's place in its downstream connection's answers. It
// lives in the request (pending.sl), or in a pending of its own for an
// answer the agent makes (session.register), so registering a request
// takes one record, not two.
type slot struct {
	s    *session
	resp []byte
	err  error
	done bool // completed (in-order sessions), under s.amu
	// buf is the read buffer resp aliases, released once resp is taken;
	// nil when resp is the agent's own or another's to keep.
	buf *readBuf
	// pd is the pending the slot lives in, made a spare once the answer
	// is taken (its request's frame and buffer are released when the slot
	// is marked), under s.amu; nil when it is not to be reused: the
	// request expired, and its connection's tables still hold it.
	pd *pending
}

// Requests (with their slots) are reused through their session's spares
// (under amu, which registering a request and taking its answer hold
// anyway), so the hot path costs no sync.Pool operation; pendings takes
// what a session's spares (at most maxSpares) cannot, and gives a session
// the ones it needs beyond them.
var pendings = sync.Pool{New: func() any { return &pending{hidx: -1} }}

// maxSpares bounds a session's spare requests and frames: a burst of
// maxQueued requests does not keep its memory in an idle connection.
const maxSpares = 64

// Spares are not cleared when they are put back, only set whole when
// they are taken (newPendingLocked and prepare): they are put back by
// whichever goroutine took an answer, on any core, and taken by the
// session's reader. Clearing them on the way back would write their
// cache lines on the core that puts them back, for the reader to fetch
// back at once to write them again. What a spare still points to (its
// last request's frame and buffer, given back) belongs to the session or
// to a pool: it is never read again.

// releaseReq gives back what a finished request's frame holds: the frame
// (as one for the reader to decode into, for Reuser codecs) and its read
// buffer; called with amu held. pd itself lives on until its answer is
// taken (putPending), as its slot does.
func (s *session) releaseReq(pd *pending) {
	if pd.req == nil {
		return // an answer the agent made: no request
	}
	if s.p.reuser != nil && len(s.spareFrames) < maxSpares {
		s.spareFrames = append(s.spareFrames, pd.req)
	} else {
		s.p.recycle(pd.req)
	}
	s.rel.add(pd.buf)
	pd.req, pd.buf = nil, nil
}

// putPending makes a request whose answer was taken a spare; called with
// amu held.
func (s *session) putPending(pd *pending) {
	if len(s.sparePendings) < maxSpares {
		s.sparePendings = append(s.sparePendings, pd)
		return
	}
	pd.clear()
	pendings.Put(pd)
}

// newPendingLocked takes a spare request, or one from pendings; called
// with amu held.
func (s *session) newPendingLocked() *pending {
	if n := len(s.sparePendings); n > 0 {
		pd := s.sparePendings[n-1]
		s.sparePendings[n-1] = nil
		s.sparePendings = s.sparePendings[:n-1]
		return pd
	}
	return pendings.Get().(*pending)
}

// answers is a session's answer state. Fields under amu unless noted.
type answers struct {
	amu sync.Mutex
	// queue: in request order, every registered slot not yet taken
	// (protocols without ids: from qh on); else the completed slots not
	// yet taken.
	queue []*slot
	qh    int
	// outstanding counts registered slots not yet taken: at most
	// maxQueued, so a client that does not read stops being read.
	outstanding int
	// writing: a goroutine owns the socket and out.
	writing bool
	// readerDone: the session's reader registers nothing more; idle is
	// closed once it is and every answer is written.
	readerDone, idleClosed bool
	idle                   chan struct{}
	// roomWait: the reader waits on room for outstanding to fall below
	// maxQueued (room itself is not under amu; capacity 1).
	roomWait bool
	room     chan struct{}
	// kick hands the owner's unwritten bytes to the writer goroutine;
	// quit ends it. Not under amu.
	kick, quit chan struct{}
	// Owned by the goroutine that holds writing:
	out     []byte // answers taken, from off on not written yet
	off     int
	endSoon bool // close the connection once out is written
	broken  bool // the client's side is gone: answers are dropped
	// raw writes without blocking; one without a socket takes nothing,
	// so every write goes to the writer goroutine.
	raw *rawsock.Conn
	// spare slots, requests and request frames to reuse (under amu)
	sparePendings []*pending
	spareFrames   []Frame
	// rel counts the read buffer releases of answered requests and taken
	// answers (under amu); flushed before amu is let go after marking or
	// taking.
	rel releases
}

// downConn is the client's socket for raw calls (rawsock: no sysmon
// wake-up per batch): the reader reads through it (a sniffer's replaying
// connection's sniffed bytes first), and the socket's owner writes
// answers through it without blocking. Anything without a socket is read
// through down, and its answers all go to the writer goroutine.
func downConn(down net.Conn) *rawsock.Conn {
	c := new(rawsock.Conn)
	c.Reset(down)
	return c
}

// register gives a new slot its place among the answers to come, once
// fewer than maxQueued are outstanding, for an answer the agent makes
// (local); nil when the session ends while the reader waits for room.
// Only the session's reader calls it.
func (s *session) register() *slot {
	s.amu.Lock()
	if !s.roomLocked() {
		return nil
	}
	// The slot lives in a pending of its own, with no request, made a
	// spare again once the answer is taken.
	pd := s.newPendingLocked()
	pd.req, pd.buf = nil, nil
	sl := s.newSlotLocked(pd)
	sl.pd = pd
	s.amu.Unlock()
	return sl
}

// registerRun registers the requests read as frames, in order, under one
// hold of amu (but while it waits for room): each gets a request to fill
// (s.pds, returned) and, unless it is one-way, a slot among the answers
// to come. It returns fewer than frames when the session ends while it
// waits for room. Only the session's reader calls it, so it also hands
// the reader the spare frames for its next Decodes. (Spare frames still
// alias the read buffers of their last messages: like the reader's own
// buffer, those live on while a connection is idle; a busy one reuses
// its spares at once.)
func (s *session) registerRun(frames []Frame) []*pending {
	s.pds = s.pds[:0]
	s.amu.Lock()
	for _, f := range frames {
		oneway := f.Kind() == Oneway
		if !oneway && !s.roomLocked() {
			return s.pds
		}
		pd := s.newPendingLocked()
		pd.slot = nil
		if !oneway {
			pd.slot = s.newSlotLocked(pd)
		}
		s.pds = append(s.pds, pd)
	}
	if n := min(len(s.spareFrames), maxSpares-len(s.fr.spares)); n > 0 {
		// For the reader's next Decodes: registerRun runs on the reader.
		k := len(s.spareFrames) - n
		s.fr.spares = append(s.fr.spares, s.spareFrames[k:]...)
		clear(s.spareFrames[k:])
		s.spareFrames = s.spareFrames[:k]
	}
	s.amu.Unlock()
	return s.pds
}

// roomLocked waits, with amu held (let go while it waits), until fewer
// than maxQueued answers are outstanding, and counts one more; false,
// with amu let go, when the session ends first. Only the session's
// reader calls it.
func (s *session) roomLocked() bool {
	for s.outstanding >= maxQueued {
		s.roomWait = true
		s.amu.Unlock()
		// The requests whose answers would make room may still be in an
		// upstream connection's buffer: send them before waiting. (Not
		// under amu: a failed flush answers requests, which takes it.)
		s.flushUp()
		select {
		case <-s.room:
		case <-s.ctx.Done():
			return false
		}
		s.amu.Lock()
	}
	s.outstanding++
	return true
}

// newSlotLocked sets up pd's slot for the next answer, in its place
// among the answers to come; called with amu held.
func (s *session) newSlotLocked(pd *pending) *slot {
	sl := &pd.sl
	// Every field: a spare comes back as it was last used.
	*sl = slot{s: s}
	if s.ordered {
		s.queue = append(s.queue, sl)
	}
	return sl
}

// complete answers one slot and writes what can be written.
func (sl *slot) complete(resp []byte, err error) {
	s := sl.s
	sl.resp, sl.err = resp, err
	s.mark(sl)
	s.pump()
}

// mark records a filled slot as completed; pump then writes it.
func (s *session) mark(sl *slot) {
	s.amu.Lock()
	s.markLocked(sl)
	s.rel.flush()
	s.amu.Unlock()
}

// markLocked is mark with amu held. The frame and buffer of the request
// the slot answers are given back; from here on, the slot may be taken,
// and its request (with the slot) reused, at once.
func (s *session) markLocked(sl *slot) {
	if sl.pd != nil {
		s.releaseReq(sl.pd)
	}
	if s.ordered {
		sl.done = true
	} else {
		s.queue = append(s.queue, sl)
	}
}

// completeBatch marks the filled slots of batch (any sessions) and then
// pumps each session once, so a read's worth of answers for one client
// is one write. It clears batch.
func completeBatch(batch []*slot, seen []*session) []*session {
	seen = seen[:0]
	var locked *session // amu held across a run of one session's slots
	for i, sl := range batch {
		s := sl.s // once marked, sl may be taken and reused at once
		if s != locked {
			if locked != nil {
				locked.rel.flush()
				locked.amu.Unlock()
			}
			s.amu.Lock()
			locked = s
			if !slices.Contains(seen, s) {
				seen = append(seen, s)
			}
		}
		s.markLocked(sl)
		batch[i] = nil
	}
	if locked != nil {
		locked.rel.flush()
		locked.amu.Unlock()
	}
	for i, s := range seen {
		s.pump()
		seen[i] = nil
	}
	return seen[:0]
}

// pump writes the answers ready to go, unless another goroutine owns the
// socket (it takes them before it lets go).
func (s *session) pump() {
	s.amu.Lock()
	if s.writing {
		s.amu.Unlock()
		return
	}
	s.writing = true
	s.amu.Unlock()
	s.writeOut(false)
}

// take moves the answers ready to go into out, in order, and frees their
// slots; called with amu held by the owner. An error with no reply (a
// protocol without one) stops there and ends the connection once what is
// before it is written: later answers would be out of step.
func (s *session) take() {
	n := 0
	if s.ordered {
		for s.qh < len(s.queue) && s.queue[s.qh].done {
			sl := s.queue[s.qh]
			s.queue[s.qh] = nil
			s.qh++
			n++
			if !s.takeOne(sl) {
				break
			}
		}
		if s.qh == len(s.queue) {
			s.queue, s.qh = s.queue[:0], 0
		} else if s.qh > 256 && s.qh*2 > len(s.queue) {
			k := copy(s.queue, s.queue[s.qh:])
			clear(s.queue[k:])
			s.queue, s.qh = s.queue[:k], 0
		}
	} else {
		i := 0
		for i < len(s.queue) {
			sl := s.queue[i]
			s.queue[i] = nil
			i++
			n++
			if !s.takeOne(sl) {
				break
			}
		}
		k := copy(s.queue, s.queue[i:])
		clear(s.queue[k:])
		s.queue = s.queue[:k]
	}
	s.rel.flush()
	s.outstanding -= n
	if n > 0 && s.roomWait {
		s.roomWait = false
		select {
		case s.room <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
}

// takeOne moves one answer into out and makes its request a spare; false
// when the connection is to end after what is in out (see take). Called
// with amu held by the owner.
func (s *session) takeOne(sl *slot) bool {
	if sl.err != nil && len(sl.resp) == 0 {
		s.endSoon = true
	} else if !s.broken && !s.endSoon {
		s.out = append(s.out, sl.resp...)
	}
	s.rel.add(sl.buf)
	if sl.pd != nil {
		// The slot's request, with the slot in it, is a spare from here
		// on.
		s.putPending(sl.pd)
	}
	return !s.endSoon
}

// writeOut writes answers until none is ready, as the socket's owner:
// block false (any goroutine) gives the bytes the socket cannot take now
// to the writer goroutine and returns; block true (the writer goroutine)
// waits for room.
func (s *session) writeOut(block bool) {
	for {
		if s.off == len(s.out) {
			s.out, s.off = s.out[:0], 0
			if s.endSoon && !s.broken {
				s.broken = true
				s.down.Close() // wakes the reader
			}
			s.amu.Lock()
			s.take()
			if len(s.out) == 0 {
				if cap(s.out) > 1<<20 {
					s.out = nil // a burst's buffer is not kept
				}
				// Letting go: from here on out is the next owner's.
				s.writing = false
				done := s.readerDone && s.outstanding == 0 && !s.idleClosed
				if done {
					s.idleClosed = true
				}
				s.amu.Unlock()
				if done {
					close(s.idle)
				}
				return
			}
			s.amu.Unlock()
			continue
		}
		var n int
		var err error
		if block {
			n, err = s.down.Write(s.out[s.off:])
		} else {
			n, err = s.raw.TryWrite(s.out[s.off:])
		}
		s.off += n
		switch {
		case err == rawsock.ErrWouldBlock:
			s.kick <- struct{}{} // capacity 1, and only the owner sends
			return
		case err != nil:
			// The client is gone (reset, or closed while answers were on
			// their way): answers are dropped from here on. The socket is
			// left to the reader, which still forwards what the client
			// sent before it went (a one-way commit, say) and then ends
			// on the connection's error; closing it here would drop those
			// requests unread.
			s.broken = true
			s.off = len(s.out)
		}
	}
}

// writeLoop finishes, blocking, what a non-blocking write left, then
// writes on until no answer is ready.
func (s *session) writeLoop() {
	for {
		select {
		case <-s.kick:
			s.writeOut(true)
		case <-s.quit:
			return
		}
	}
}

// waitAnswers returns once every answer the reader registered is written
// (or the session's context ends); the reader registers nothing after it.
func (s *session) waitAnswers() {
	s.amu.Lock()
	s.readerDone = true
	done := s.outstanding == 0 && !s.writing && !s.idleClosed
	if done {
		s.idleClosed = true
	}
	s.amu.Unlock()
	if done {
		close(s.idle)
	}
	select {
	case <-s.idle:
	case <-s.ctx.Done():
	}
}
