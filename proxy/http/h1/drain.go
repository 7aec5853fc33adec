package h1

import (
	"sync"
	"time"
)

// Draining wakes idle connections without a goroutine per connection: the
// connections of one Draining channel register in a drainSet, and one
// goroutine per channel waits for it to close and wakes those that are idle
// between requests (a busy one sees the flag before its next response).
// The engine has few distinct channels (one per agent life), so a set
// whose channel never closes costs one parked goroutine.

type drainSet struct {
	mu    sync.Mutex
	conns map[*server]struct{}
	fired bool
}

var drainSets sync.Map // <-chan struct{} -> *drainSet

// watchDrain registers s with ch's set and returns the unregister func.
func watchDrain(ch <-chan struct{}, s *server) func() {
	v, loaded := drainSets.Load(ch)
	if !loaded {
		v, loaded = drainSets.LoadOrStore(ch, &drainSet{conns: map[*server]struct{}{}})
		if !loaded {
			go v.(*drainSet).wait(ch)
		}
	}
	set := v.(*drainSet)
	set.mu.Lock()
	if set.fired {
		set.mu.Unlock()
		s.wakeForDrain()
		return func() {}
	}
	set.conns[s] = struct{}{}
	set.mu.Unlock()
	return func() {
		set.mu.Lock()
		delete(set.conns, s)
		set.mu.Unlock()
	}
}

func (d *drainSet) wait(ch <-chan struct{}) {
	<-ch
	d.mu.Lock()
	d.fired = true
	for s := range d.conns {
		s.wakeForDrain()
	}
	clear(d.conns)
	d.mu.Unlock()
	drainSets.Delete(ch)
}

// aLongTimeAgo is a deadline that has passed: setting it wakes a blocked
// Read or Write at once.
var aLongTimeAgo = time.Unix(1, 0)

// drainIdleGrace is how long a connection idle between requests stays
// open once the agent drains: a request already on its way is answered
// (with Connection: close) instead of meeting a closed socket, which a
// client that does not retry would count as an error.
const drainIdleGrace = time.Second

// wakeForDrain marks s draining and, if it is idle between requests,
// shortens its read: to now when a successor may take the connection
// (Upstream.HandOff; readHead offers it), else to drainIdleGrace, after
// which it closes. The flag is stored before idle is loaded, and readHead
// stores idle before it loads the flag, so one of the two always sees the
// other.
func (s *server) wakeForDrain() {
	s.drain.Store(true)
	if s.idle.Load() {
		s.down.SetReadDeadline(s.drainDeadline())
	}
}

// drainDeadline is the read deadline of a connection found idle by the
// drain: at once if it may be handed over, else after drainIdleGrace.
func (s *server) drainDeadline() time.Time {
	if s.up.HandOff != nil {
		return aLongTimeAgo
	}
	return time.Now().Add(drainIdleGrace)
}

// offerIdle offers an idle connection, with nothing read of a next
// request, to the successor once: true if it took it. Otherwise the
// connection gets the grace an idle one gets without a successor.
func (s *server) offerIdle() bool {
	if s.up.HandOff(s.down, s.up) {
		return true
	}
	s.setDownReadDeadline(time.Now().Add(drainIdleGrace))
	return false
}
