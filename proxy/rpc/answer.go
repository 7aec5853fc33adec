package rpc

import (
	"net"
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

// slot is one request's place in its downstream connection's answers.
type slot struct {
	s    *session
	resp []byte
	err  error
	done bool // completed (in-order sessions), under s.amu
}

var slots = sync.Pool{New: func() any { return new(slot) }}

// newSlot takes a slot for one of s's requests.
func (s *session) newSlot() *slot {
	sl := slots.Get().(*slot)
	sl.s = s
	return sl
}

// putSlot returns a slot to the pool once its answer is taken.
func putSlot(sl *slot) {
	*sl = slot{}
	slots.Put(sl)
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
// fewer than maxQueued are outstanding; false when the session ends while
// the reader waits for room.
func (s *session) register(sl *slot) bool {
	s.amu.Lock()
	for s.outstanding >= maxQueued {
		s.roomWait = true
		s.amu.Unlock()
		select {
		case <-s.room:
		case <-s.ctx.Done():
			return false
		}
		s.amu.Lock()
	}
	s.outstanding++
	if s.ordered {
		s.queue = append(s.queue, sl)
	}
	s.amu.Unlock()
	return true
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
	if s.ordered {
		sl.done = true
	} else {
		s.queue = append(s.queue, sl)
	}
	s.amu.Unlock()
}

// completeBatch marks the filled slots of batch (any sessions) and then
// pumps each session once, so a read's worth of answers for one client
// is one write. It clears batch.
func completeBatch(batch []*slot, seen []*session) []*session {
	seen = seen[:0]
	for i, sl := range batch {
		s := sl.s // once marked, sl may be taken and reused at once
		s.mark(sl)
		found := false
		for _, x := range seen {
			if x == s {
				found = true
				break
			}
		}
		if !found {
			seen = append(seen, s)
		}
		batch[i] = nil
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
	add := func(sl *slot) bool {
		n++
		if sl.err != nil && len(sl.resp) == 0 {
			s.endSoon = true
		} else if !s.broken && !s.endSoon {
			s.out = append(s.out, sl.resp...)
		}
		putSlot(sl)
		return !s.endSoon
	}
	if s.ordered {
		for s.qh < len(s.queue) && s.queue[s.qh].done {
			sl := s.queue[s.qh]
			s.queue[s.qh] = nil
			s.qh++
			if !add(sl) {
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
			if !add(sl) {
				break
			}
		}
		k := copy(s.queue, s.queue[i:])
		clear(s.queue[k:])
		s.queue = s.queue[:k]
	}
	s.outstanding -= n
	if n > 0 && s.roomWait {
		s.roomWait = false
		select {
		case s.room <- struct{}{}:
		default: // a wake-up is pending already
		}
	}
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
