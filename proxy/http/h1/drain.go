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
// shortens its read to drainIdleGrace, after which it closes. The flag is
// stored before idle is loaded, and readHead stores idle before it loads
// the flag, so one of the two always sees the other.
func (s *server) wakeForDrain() {
	s.drain.Store(true)
	if s.idle.Load() {
		s.down.SetReadDeadline(time.Now().Add(drainIdleGrace))
	}
}
