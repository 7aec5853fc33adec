package relay

import (
	"sync/atomic"
	"time"
)

// Handle lets a goroutine other than the relay's pause it at a moment no
// byte is in its hands, so both sockets can be given to another process
// (the agent's connection hand-over at upgrade) and either released to it
// or, if that fails, resumed. The zero value is ready; it is bound by
// RelayWith.
//
// How a pause holds no byte: both sockets get a read deadline in the past.
// A direction waiting for data (no buffer held in small-message mode, an
// empty pipe in splice mode: splice moves all it drained before it reads
// again) returns at once and parks; a direction in the middle of writing
// finishes that write first, and parks at its next read. Bytes that arrive
// meanwhile stay in the kernel's socket queues, which go with the sockets.
type Handle struct {
	r        atomic.Pointer[relayState]
	paused   *pauseState
	noSplice bool // nosplice.go
}

// pauseState is one pause: each direction reports on events when it parks
// or ends; decided is closed with resume set once the caller chose.
type pauseState struct {
	events  chan struct{}
	decided chan struct{}
	resume  bool
}

func (p *pauseState) isDecided() bool {
	select {
	case <-p.decided:
		return true
	default:
		return false
	}
}

// Pause parks both directions within wait, or resumes and reports false
// (the relay ended, one direction already saw EOF, or a direction stayed
// busy writing). After true, the caller must call Release or Resume.
func (h *Handle) Pause(wait time.Duration) bool {
	r := h.r.Load()
	if r == nil || h.paused != nil || r.aborted.Load() || r.ended.Load() > 0 {
		return false
	}
	old := r.pause.Load()
	if old != nil && !old.isDecided() {
		return false
	}
	ps := &pauseState{events: make(chan struct{}, 4), decided: make(chan struct{})}
	if !r.pause.CompareAndSwap(old, ps) {
		return false
	}
	past := time.Unix(1, 0)
	r.client.SetReadDeadline(past)
	r.upstream.SetReadDeadline(past)
	// A direction ends by decrementing running and then looking for a
	// pause; this stored the pause first and now reads running: each
	// direction still running is counted here or reports on events, or both
	// (the buffer takes the extra report).
	n := int(r.running.Load())
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for range n {
		select {
		case <-ps.events:
		case <-timer.C:
			h.decide(r, ps, true)
			return false
		}
	}
	if r.running.Load() != 2 || r.ended.Load() > 0 || r.aborted.Load() {
		h.decide(r, ps, true)
		return false
	}
	h.paused = ps
	return true
}

// Bulk reports whether a direction of the relay switched to bulk mode (a
// read filled the small-message buffer): the connection carries a stream,
// not messages. A takeover leaves such a relay to drain while it is busy.
func (h *Handle) Bulk() bool {
	r := h.r.Load()
	return r != nil && r.bulk.Load()
}

// Counts are the bytes the relay moved each way up to its pause; valid
// between a Pause that returned true and Release or Resume.
func (h *Handle) Counts() (up, down int64) {
	if r := h.r.Load(); r != nil && h.paused != nil {
		return r.parkedUp, r.parkedDown
	}
	return 0, 0
}

// Release ends a paused relay without closing its sockets: RelayWith
// returns a Result with HandedOver set. The caller may close its own file
// descriptors once the other process holds the sockets.
func (h *Handle) Release() {
	if r, ps := h.r.Load(), h.paused; r != nil && ps != nil {
		h.paused = nil
		h.decide(r, ps, false)
	}
}

// Resume lets a paused relay go on as if nothing happened.
func (h *Handle) Resume() {
	if r, ps := h.r.Load(), h.paused; r != nil && ps != nil {
		h.paused = nil
		h.decide(r, ps, true)
	}
}

func (h *Handle) decide(r *relayState, ps *pauseState, resume bool) {
	if resume {
		// Cleared before the decision: a direction resuming must not meet
		// the old deadline again.
		r.client.SetReadDeadline(time.Time{})
		r.upstream.SetReadDeadline(time.Time{})
	}
	ps.resume = resume
	close(ps.decided)
}

// park is called by a direction whose read hit a deadline. paused is false
// when no pause set that deadline (a real timeout); else it waits for the
// decision and reports it.
func (r *relayState) park(n int64, up bool) (resume, paused bool) {
	ps := r.pause.Load()
	if ps == nil {
		return false, false
	}
	if up {
		r.parkedUp = n
	} else {
		r.parkedDown = n
	}
	select {
	case ps.events <- struct{}{}:
	default:
	}
	<-ps.decided
	return ps.resume, true
}

// exited is a direction's last act: it no longer runs, and a pause in
// progress hears of it.
func (r *relayState) exited() {
	r.running.Add(-1)
	if ps := r.pause.Load(); ps != nil && !ps.isDecided() {
		select {
		case ps.events <- struct{}{}:
		default:
		}
	}
}
