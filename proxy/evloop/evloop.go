// Package evloop relays TCP connections on event loops, the way nginx's
// stream module does in C: each Loop is one goroutine locked to its thread,
// with its own edge-triggered epoll, that accepts, connects upstream and
// moves bytes with raw system calls only. No goroutine per connection, no
// hand-off between threads, no allocation per message.
//
// Why not Go's net package: a goroutine per direction over Go's poller
// costs about eleven more system calls per connection (the poller's
// registration and removal on each socket, getsockname and getpeername,
// the read that finds EAGAIN before each park) and the thread hand-offs
// between accept, connect and the two directions. On this project's
// benchmark that put weir's L4 path at 1.6× nginx stream's CPU per new
// connection, where a loop like this one measured 1.04×
// (docs/benchmarks.md, "L4 cost, fifth pass").
//
// A busy Loop holds its P: it waits in epoll_wait as a raw system call,
// so the runtime neither hands its P to another thread nor wakes one for
// it; the P is the loop's, as a CPU is an nginx worker's, and the process
// needs one P per holding loop beyond what the rest of it uses (OnHold
// tells the engine, which raises GOMAXPROCS by one meanwhile). Giving the
// P back between events instead, through the runtime's system-call path,
// let the runtime run the rest of the process on more Ps than CPUs, which
// cost the agent's L7 half 14 % more CPU per request (docs/benchmarks.md,
// "L4 cost, sixth pass"). A quiet loop lets go of it (it parks): holding
// costs a wake-up every millisecond, and GOMAXPROCS stays raised. The
// runtime still preempts a holding loop every 10 ms (its signal ends the
// wait early), so a stop-the-world does not wait.
//
// Each direction of a pair starts in small-message mode (one read and one
// write per message through the loop's shared buffer) and switches for
// good to splicing through a pipe when a read fills that buffer, as
// proxy/relay does: a stream then costs the kernel's copy only.
package evloop

import (
	"errors"
	"runtime"
	"runtime/metrics"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/proxy/rawsock"
)

// bufSize is the small-message buffer; a read that fills it means a stream.
const bufSize = 16 << 10

// pipeSize is the splice pipe's capacity (what Go's own splice asks for).
const pipeSize = 1 << 20

// maxFreePipes bounds the pipes a loop keeps for its next streams.
const maxFreePipes = 32

// scanEvery is how often connects in progress are checked for their
// deadline.
const scanEvery = 100 * time.Millisecond

// Handler is told what becomes of a Pair. Its methods run on the loop and
// must not block.
type Handler interface {
	// Connected: the upstream connect finished; the pair relays from now.
	Connected(p *Pair)
	// ConnectFailed: the upstream connect failed with err (ETIMEDOUT when
	// its deadline passed; the loop closed the socket). It returns another
	// upstream socket, already connecting, and its deadline to try instead,
	// or fd -1 to give up: the pair then ends.
	ConnectFailed(p *Pair, err error) (fd int, timeout time.Duration)
	// Ended: the pair is closed, both sockets too.
	Ended(p *Pair, res Result)
	// MaySplice is asked once, when a direction of p first fills the
	// small-message buffer: false keeps both directions reading and
	// writing (an eBPF-accelerated socket's bytes arrive where splice does
	// not look).
	MaySplice(p *Pair) bool
}

// Result is what a pair moved and how it ended.
type Result struct {
	// Up is bytes from the client to the upstream, Down the reverse.
	Up, Down int64
	// ClientErr and UpstreamErr are the errors met on each socket (nil at a
	// clean end); a connect that failed is UpstreamErr.
	ClientErr, UpstreamErr error
	// Connected: the upstream connect succeeded.
	Connected bool
	// Cut: the loop closed the pair itself (CloseAll or Stop).
	Cut bool
}

// Pair is one relayed connection: the accepted client socket and the
// upstream one. Embed it in the caller's connection state and set Handler
// before Loop.Add.
type Pair struct {
	Handler Handler

	fd       [2]int // 0: the client, 1: the upstream
	d        [2]direction
	slot     int32
	state    uint8
	bulk     bool
	noSplice bool
	deadline int64 // of the connect in progress, on the loop's clock
	res      Result
}

// Pair states.
const (
	stateFree uint8 = iota
	stateConnecting
	stateRelaying
	stateClosed
	stateDetached
)

// direction is one way of a pair: it reads fd[i] and writes fd[1-i].
type direction struct {
	pending []byte // small mode: read and not yet written
	pipe    [2]int // bulk mode: the splice pipe (read, write ends)
	inPipe  int    // bytes in the pipe
	n       int64  // bytes written out
	eof     bool   // the source sent its FIN
	shut    bool   // that FIN was passed on
	// edge is the readiness (readable's bits) the source's events
	// reported since a read last found it empty (EAGAIN, or a short read
	// with no FIN and no urgent data reported): 0, and a read now would
	// find EAGAIN; without EPOLLRDHUP, EPOLLHUP or EPOLLPRI, a short read
	// empties it.
	edge uint32
}

func (d *direction) held() bool { return len(d.pending) > 0 || d.inPipe > 0 }

// Listener is a listening socket a loop accepts from; several loops may
// share one socket, each with its own Listener.
type Listener struct {
	// FD is the non-blocking listening socket; the loop never closes it.
	FD int
	// Accept receives each accepted socket (non-blocking, close-on-exec,
	// owned by Accept from then on), the peer's address, and how many
	// this wake-up accepted before it (a measure of the backlog: a caller
	// may pass some on to another loop), on the loop.
	Accept func(fd int, peer unix.RawSockaddrAny, nth int)
	// Failed, when set, hears of an accept that failed for want of
	// resources (EMFILE, ENFILE, ENOBUFS, ENOMEM); the loop tries that
	// listener again at its next scan, a tenth of a second later, since
	// the queued connections raise no new edge.
	Failed  func(err error)
	slot    int32
	stalled bool
}

// slot is one registered thing; an epoll event's data names its slot and,
// for a pair, the side, and carries the slot's generation.
//
// The generation is there because closing a descriptor does not always
// end its registration: epoll forgets a socket only when the last
// descriptor of it is closed, in any process. A child the agent forks
// (iptables, nft) holds a copy of every descriptor until it execs, and a
// sniffed connection's Go descriptor outlives the loop's duplicate for a
// moment; a socket closed meanwhile can still raise events, with the data
// of a slot that a new pair may hold by then. A connecting pair that took
// such an event (HUP, from an old stream's end) failed its healthy
// connect, and a takeover, whose re-programming forks many times, reset a
// connection now and then (TestBackendSwitchKeepsTraffic). The loop
// ignores an event whose generation is not its slot's: no system call
// per close, as an EPOLL_CTL_DEL before each would be.
type slot struct {
	pair *Pair
	ln   *Listener
	gen  uint32
}

// Loop is one event loop. Make it with New, run it with Run on its own
// goroutine; everything else but Post runs on the loop (from a Handler, an
// Accept, or a function given to Post).
type Loop struct {
	// OnHold, if set before Run, is told on the loop when it starts to
	// hold its P (true) and when it parks (false); a loop starts parked,
	// and a holding loop parks when it ends.
	OnHold func(holding bool)

	ep, efd int
	hold    bool // may hold its P while busy
	holding bool
	window  time.Duration // holdWindow, shorter in tests
	events  []unix.EpollEvent
	buf     []byte
	slots   []slot
	free    []int32
	freeing []int32 // freed during the current batch of events
	gen     uint32  // the last slot generation given (see slot)
	pipes   [][2]int
	conns   []*Pair     // connects in progress, checked every scanEvery
	stalled []*Listener // accept failed for want of resources
	pairs   int
	start   time.Time
	scanAt  int64
	stopped bool
	// yieldNext: the loop yields at the end of this batch of events
	// (posted functions ran, which may have readied goroutines on its P,
	// or YieldSoon).
	yieldNext bool
	// runnable reads how many goroutines wait for a P (see yieldEvery).
	runnable []metrics.Sample

	// Err is why Run ended early, if it did (read after Done).
	Err error

	mu     sync.Mutex
	ended  bool // Run has returned: Post drops what it is given
	posted []func()
	run    []func()
	done   chan struct{}
}

// New makes a loop. hold: wait keeping the P while busy (see the package
// comment).
func New(hold bool) (*Loop, error) {
	ep, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, errors.Join(errors.New("evloop: epoll_create1"), err)
	}
	efd, err := unix.Eventfd(0, unix.EFD_NONBLOCK|unix.EFD_CLOEXEC)
	if err != nil {
		unix.Close(ep)
		return nil, errors.Join(errors.New("evloop: eventfd"), err)
	}
	l := &Loop{ep: ep, efd: efd, hold: hold, events: make([]unix.EpollEvent, 256), buf: make([]byte, bufSize),
		slots: make([]slot, 1), start: time.Now(), done: make(chan struct{}),
		runnable: []metrics.Sample{{Name: runnableMetric}}, window: holdWindow}
	// Slot 0 is the eventfd's.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLET}
	if err := unix.EpollCtl(ep, unix.EPOLL_CTL_ADD, efd, &ev); err != nil {
		unix.Close(ep)
		unix.Close(efd)
		return nil, errors.Join(errors.New("evloop: register eventfd"), err)
	}
	return l, nil
}

// Post runs f on the loop, soon. It may be called from any goroutine. It
// reports false when the loop has ended, and f will not run; f posted
// after Stop or Abort may not run either.
func (l *Loop) Post(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ended {
		// Its eventfd is closed, and the number may name another file.
		return false
	}
	l.posted = append(l.posted, f)
	one := uint64(1)
	unix.Write(l.efd, (*[8]byte)(unsafe.Pointer(&one))[:])
	return true
}

// Stop makes Run close every pair (Cut) and return; Done is closed then.
func (l *Loop) Stop() { l.Post(func() { l.stopped = true }) }

// Done is closed when Run has returned.
func (l *Loop) Done() <-chan struct{} { return l.done }

// Pairs is how many pairs the loop holds.
func (l *Loop) Pairs() int { return l.pairs }

func (l *Loop) now() int64 { return int64(time.Since(l.start)) }

// yieldEvery bounds how long a holding loop keeps its P from the
// goroutines and timers that queued on it meanwhile: left to the runtime's
// preemption alone, they waited up to 10 ms, which showed as the p99 of L7
// requests (docs/benchmarks.md, "L4 cost, sixth pass"). That often the
// loop looks at whether any goroutine waits for a P, and yields only then
// (and after posted functions, which may have readied some). A yield with
// nothing waiting is not free: the runtime wakes a thread for one of the
// process's idle Ps at every Gosched, and that thread finds nothing to do;
// yielding every millisecond regardless was 7.8 % of the agent's CPU with
// a connection per request (docs/benchmarks.md, "L4 cost, seventh pass").
// Timers on the loop's P need no yield while some P is idle: a thread
// idle in the runtime's poller sleeps until the earliest timer of every
// P, and runs it. When every P is busy they wait for the runtime's
// preemption (about 10 ms), as on any busy P.
const yieldEvery = time.Millisecond

// A parked loop that wakes with work holdAt times within one holdWindow
// starts to hold its P; a holding loop that woke with work fewer than
// parkBelow times in the last window parks. Each change is a
// runtime.GOMAXPROCS (a stop-the-world). A hold lasts a window at least,
// so a loop makes two changes a second at most (it may park at the end
// of one window and hold again early in the next), and a loop that sees a little traffic
// now and then stays parked: parked, it relays the same way, entering the
// kernel through the runtime's system-call path, which at that rate costs
// nothing worth a P.
const (
	holdWindow = time.Second
	holdAt     = 64
	parkBelow  = 16
)

// Run runs the loop on the calling goroutine until Stop or Abort. It does
// not lock its thread: a Handler that changes the thread's state (a
// network namespace) locks it around the change, and on a failure to undo
// it calls Abort and leaves it locked, so the thread ends with Run.
func (l *Loop) Run() {
	defer close(l.done)
	yielded := l.now()
	winStart, woke := yielded, 0
	for !l.stopped {
		timeout := int(scanEvery / time.Millisecond)
		if len(l.conns) == 0 && len(l.stalled) == 0 {
			timeout = 1000
		}
		if l.holding {
			// Idle too, it looks that often (see yieldEvery).
			timeout = int(yieldEvery / time.Millisecond)
		}
		n, err := l.wait(timeout, l.holding)
		if err != nil {
			if err == unix.EINTR {
				continue
			}
			// Only a broken epoll fd fails here: end, cutting every pair.
			l.Err = err
			break
		}
		for i := 0; i < n; i++ {
			l.dispatch(l.events[i])
		}
		if len(l.freeing) > 0 {
			l.free = append(l.free, l.freeing...)
			l.freeing = l.freeing[:0]
		}
		now := l.now()
		if (len(l.conns) > 0 || len(l.stalled) > 0) && now >= l.scanAt {
			l.scanAt = now + int64(scanEvery)
			l.scan(now)
			l.retryStalled()
		}
		if l.hold {
			if n > 0 {
				woke++
			}
			switch {
			case !l.holding && woke >= holdAt:
				l.setHolding(true)
				winStart, woke, yielded = now, 0, now
			case now-winStart >= int64(l.window):
				if l.holding && woke < parkBelow {
					l.setHolding(false)
				}
				winStart, woke = now, 0
			}
		}
		if l.holding && (now-yielded >= int64(yieldEvery) || l.yieldNext) {
			if l.yieldNext || l.othersWait() {
				runtime.Gosched()
				now = l.now()
			}
			l.yieldNext = false
			yielded = now
		} else if !l.holding {
			l.yieldNext = false // parked, it lets go of its P at each wait
		}
	}
	if l.holding {
		l.setHolding(false)
	}
	l.closeAll(true)
	l.mu.Lock()
	l.ended = true
	unix.Close(l.efd)
	l.mu.Unlock()
	unix.Close(l.ep)
	for _, p := range l.pipes {
		unix.Close(p[0])
		unix.Close(p[1])
	}
	l.pipes = nil
}

// Holding reports whether the loop holds its P now (on the loop).
func (l *Loop) Holding() bool { return l.holding }

func (l *Loop) setHolding(h bool) {
	l.holding = h
	if l.OnHold != nil {
		l.OnHold(h)
	}
}

// runnableMetric counts the goroutines that wait for a P, in every run
// queue.
const runnableMetric = "/sched/goroutines/runnable:goroutines"

// othersWait reports whether any goroutine waits for a P (about 100 ns:
// the runtime sums its run queues under its scheduler lock).
func (l *Loop) othersWait() bool {
	metrics.Read(l.runnable)
	v := l.runnable[0].Value
	return v.Kind() != metrics.KindUint64 || v.Uint64() > 0
}

// wait is epoll_wait; raw keeps the P (the call is made without telling
// the runtime).
func (l *Loop) wait(ms int, raw bool) (int, error) {
	p := unsafe.Pointer(&l.events[0])
	var n uintptr
	var e syscall.Errno
	if raw {
		n, _, e = syscall.RawSyscall6(unix.SYS_EPOLL_WAIT, uintptr(l.ep), uintptr(p), uintptr(len(l.events)), uintptr(ms), 0, 0)
	} else {
		n, _, e = syscall.Syscall6(unix.SYS_EPOLL_WAIT, uintptr(l.ep), uintptr(p), uintptr(len(l.events)), uintptr(ms), 0, 0)
	}
	if e != 0 {
		return 0, e
	}
	return int(n), nil
}

func (l *Loop) dispatch(ev unix.EpollEvent) {
	idx := ev.Fd >> 1
	if idx == 0 {
		l.runPosted()
		return
	}
	s := &l.slots[idx]
	if s.gen != uint32(ev.Pad) {
		return // a closed socket's (see slot)
	}
	if s.ln != nil {
		l.accept(s.ln)
		return
	}
	if p := s.pair; p != nil {
		l.event(p, int(ev.Fd&1), ev.Events)
	}
}

func (l *Loop) runPosted() {
	var b [8]byte
	unix.Read(l.efd, b[:])
	l.mu.Lock()
	l.run, l.posted = l.posted, l.run[:0]
	l.mu.Unlock()
	for i, f := range l.run {
		f()
		l.run[i] = nil
	}
	l.yieldNext = l.yieldNext || len(l.run) > 0
}

// YieldSoon makes the loop let other goroutines have its P at the end of
// this batch of events (on the loop): for a Handler that started one.
func (l *Loop) YieldSoon() { l.yieldNext = true }

// Abort ends Run after the current event (on the loop): for a Handler
// whose thread cannot be used again.
func (l *Loop) Abort() { l.stopped = true }

// alloc takes a free slot, of a generation of its own.
func (l *Loop) alloc() int32 {
	var i int32
	if n := len(l.free); n > 0 {
		i = l.free[n-1]
		l.free = l.free[:n-1]
	} else {
		l.slots = append(l.slots, slot{})
		i = int32(len(l.slots) - 1)
	}
	l.gen++
	l.slots[i].gen = l.gen
	return i
}

// add registers fd for events, naming slot and side (0 or 1) in the data.
func (l *Loop) add(fd int, events uint32, slot int32, side int32) error {
	ev := unix.EpollEvent{Events: events | unix.EPOLLET, Fd: slot<<1 | side, Pad: int32(l.slots[slot].gen)}
	return unix.EpollCtl(l.ep, unix.EPOLL_CTL_ADD, fd, &ev)
}

// AddListener makes the loop accept from ln (on the loop). Several loops
// may hold the same socket: EPOLLEXCLUSIVE wakes one waiting loop per
// connection, and a busy loop accepts what is queued at its next turn
// (but see proxy's loops.go: one loop per listener measured cheaper).
func (l *Loop) AddListener(ln *Listener) error {
	ln.slot = l.alloc()
	l.slots[ln.slot].ln = ln
	if err := l.add(ln.FD, unix.EPOLLIN|unix.EPOLLEXCLUSIVE, ln.slot, 0); err != nil {
		l.slots[ln.slot].ln = nil
		l.free = append(l.free, ln.slot)
		return err
	}
	// Connections queued before the registration raised no edge.
	l.accept(ln)
	return nil
}

// RemoveListener stops accepting from ln (on the loop); the caller closes
// the socket once every loop has removed it.
func (l *Loop) RemoveListener(ln *Listener) {
	if ln.slot == 0 || l.slots[ln.slot].ln != ln {
		return
	}
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, ln.FD, nil)
	l.slots[ln.slot].ln = nil
	l.freeing = append(l.freeing, ln.slot)
	ln.slot = 0
}

// accept takes every queued connection (nginx's multi_accept).
func (l *Loop) accept(ln *Listener) {
	for nth := 0; !l.stopped && l.slots[ln.slot].ln == ln; {
		var sa unix.RawSockaddrAny
		n := uint32(unsafe.Sizeof(sa))
		fd, _, e := syscall.RawSyscall6(unix.SYS_ACCEPT4, uintptr(ln.FD), uintptr(unsafe.Pointer(&sa)), uintptr(unsafe.Pointer(&n)),
			unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0, 0)
		switch e {
		case 0:
			ln.Accept(int(fd), sa, nth)
			nth++
			continue
		case unix.EINTR, unix.ECONNABORTED:
			continue
		}
		if e != unix.EAGAIN && !ln.stalled {
			ln.stalled = true
			l.stalled = append(l.stalled, ln)
			if ln.Failed != nil {
				ln.Failed(e)
			}
		}
		return
	}
}

// retryStalled accepts again from the listeners whose accept failed.
func (l *Loop) retryStalled() {
	ls := l.stalled
	l.stalled = nil
	for _, ln := range ls {
		ln.stalled = false
		if ln.slot != 0 && l.slots[ln.slot].ln == ln {
			l.accept(ln)
		}
	}
}

// Add takes a pair on: client is the accepted socket, upstream a socket
// whose connect was started (netns.Handle.ConnectOnThread), due within
// timeout; prefix, if any, is sent upstream first (bytes of the client's
// that were read before: a sniffer's). On the loop. On error nothing was
// registered and the caller still owns both sockets.
func (l *Loop) Add(p *Pair, client, upstream int, timeout time.Duration, prefix []byte) error {
	if err := l.register(p, client, upstream, prefix); err != nil {
		return err
	}
	p.state = stateConnecting
	p.deadline = l.now() + int64(timeout)
	l.conns = append(l.conns, p)
	l.pairs++
	if l.scanAt == 0 || l.scanAt > p.deadline {
		l.scanAt = min(p.deadline, l.now()+int64(scanEvery))
	}
	return nil
}

// AddConnected takes on a pair whose upstream is connected already: a
// connection a predecessor agent relayed and handed over (on the loop).
// Bytes and FINs that reached either socket meanwhile are reported by the
// registration. On error nothing was registered and the caller still owns
// both sockets.
func (l *Loop) AddConnected(p *Pair, client, upstream int) error {
	if err := l.register(p, client, upstream, nil); err != nil {
		return err
	}
	p.state = stateRelaying
	p.res.Connected = true
	l.pairs++
	return nil
}

// register resets p for client and upstream and registers both; on error
// neither is.
func (l *Loop) register(p *Pair, client, upstream int, prefix []byte) error {
	p.fd = [2]int{client, upstream}
	// No edge seen yet: the registration below reports what is queued.
	p.d = [2]direction{}
	if len(prefix) > 0 {
		p.d[0].pending = append([]byte(nil), prefix...)
	}
	p.res = Result{}
	p.bulk, p.noSplice = false, false
	p.slot = l.alloc()
	l.slots[p.slot].pair = p
	if err := l.add(client, pairEvents, p.slot, 0); err != nil {
		l.unslot(p)
		return err
	}
	if err := l.add(upstream, pairEvents, p.slot, 1); err != nil {
		unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, client, nil)
		l.unslot(p)
		return err
	}
	return nil
}

func (l *Loop) unslot(p *Pair) {
	l.slots[p.slot].pair = nil
	l.freeing = append(l.freeing, p.slot)
	p.slot = 0
}

// event handles one epoll event on side i of p.
func (l *Loop) event(p *Pair, i int, ev uint32) {
	p.d[i].edge |= ev & readable
	switch p.state {
	case stateConnecting:
		if i == 0 {
			return // the client's bytes wait for the upstream
		}
		if ev&(unix.EPOLLERR|unix.EPOLLHUP) != 0 {
			l.connectFailed(p, soError(p.fd[1]))
			return
		}
		if ev&unix.EPOLLOUT != 0 {
			l.connected(p)
			if p.state == stateRelaying && ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLPRI) != 0 {
				l.pump(p, 1, p.d[1].edge)
			}
		}
		return
	case stateRelaying:
	default:
		return
	}
	if ev&unix.EPOLLERR != 0 {
		l.fail(p, i, soError(p.fd[i]))
		return
	}
	if ev&unix.EPOLLOUT != 0 && p.d[1-i].held() {
		// Room again on side i: what the other way holds goes now, and
		// then what it did not read meanwhile (its edges came while it
		// could not write).
		if !l.flush(p, 1-i) {
			return
		}
		if !p.d[1-i].held() && p.d[1-i].edge != 0 && !l.pump(p, 1-i, p.d[1-i].edge) {
			return
		}
	}
	if ev&(unix.EPOLLIN|unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLPRI) != 0 {
		l.pump(p, i, p.d[i].edge)
	}
}

// readable is the readiness a direction's edge keeps.
//
// EPOLLPRI is TCP urgent data (MSG_OOB) queued: a read stops short at its
// mark (tcp_recvmsg) with bytes still behind it and no new edge to come,
// so while it is reported a short read does not mean empty. The relay
// passes the bytes around the urgent one on, not the urgent byte itself
// (it is out of band unless the socket sets SO_OOBINLINE), as nginx
// stream and Go's io.Copy do.
const readable = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLHUP | unix.EPOLLERR | unix.EPOLLPRI

// pairEvents is what a pair's sockets are registered for (edge-triggered).
const pairEvents = unix.EPOLLIN | unix.EPOLLOUT | unix.EPOLLRDHUP | unix.EPOLLPRI

func (l *Loop) connected(p *Pair) {
	p.state = stateRelaying
	p.res.Connected = true
	p.Handler.Connected(p)
	if p.state != stateRelaying {
		return
	}
	// The client may have sent already, its FIN too: its edges came before
	// the upstream could take anything. A prefix goes first. Its edges say
	// how far to read: none yet (a client that sends once connected), no
	// read at all; no FIN among them, a short read empties it.
	if p.d[0].held() && (!l.flush(p, 0) || p.d[0].held()) {
		return
	}
	if p.d[0].edge != 0 {
		l.pump(p, 0, p.d[0].edge)
	}
}

func (l *Loop) connectFailed(p *Pair, err error) {
	// The slot stays the pair's, generation and all: the refused socket
	// leaves it before its close (see slot), an extra system call only
	// when a connect fails.
	unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, p.fd[1], nil)
	unix.Close(p.fd[1])
	p.fd[1] = -1
	fd, timeout := p.Handler.ConnectFailed(p, err)
	if fd >= 0 {
		if aerr := l.add(fd, pairEvents, p.slot, 1); aerr == nil {
			p.fd[1] = fd
			p.d[1].edge = 0 // the refused socket's, not this one's
			p.deadline = l.now() + int64(timeout)
			return
		}
		unix.Close(fd)
	}
	p.res.UpstreamErr = err
	l.close(p)
}

// scan fails the connects whose deadline passed and forgets the others
// that ended.
func (l *Loop) scan(now int64) {
	keep := l.conns[:0]
	for _, p := range l.conns {
		if p.state != stateConnecting {
			continue
		}
		if now >= p.deadline {
			l.connectFailed(p, unix.ETIMEDOUT)
			if p.state != stateConnecting {
				continue
			}
		}
		keep = append(keep, p)
	}
	clear(l.conns[len(keep):])
	l.conns = keep
}

// pump moves bytes from side from to the other until from has nothing
// more (EAGAIN, or a short read when the event says no FIN is queued),
// the other side has no room, or from's FIN was passed on. It returns
// false if the pair was closed.
func (l *Loop) pump(p *Pair, from int, ev uint32) bool {
	d := &p.d[from]
	src, dst := p.fd[from], p.fd[1-from]
	atMarkRetries := 0
	for !d.eof {
		if d.held() {
			return true // EPOLLOUT on dst resumes this
		}
		var n int
		var e syscall.Errno
		// splice stops at an urgent byte for good (tcp_read_sock cannot
		// skip it), read steps over it: read while one is reported.
		spliced := d.pipe[0] != 0 && ev&unix.EPOLLPRI == 0
		if spliced {
			n, e = splice(src, d.pipe[1], pipeSize)
		} else {
			var r uintptr
			r, _, e = syscall.RawSyscall(unix.SYS_READ, uintptr(src), uintptr(unsafe.Pointer(&l.buf[0])), uintptr(len(l.buf)))
			n = int(r)
		}
		switch e {
		case 0:
		case unix.EAGAIN:
			if ev&unix.EPOLLPRI != 0 && atMarkRetries < 16 && rawsock.AtMark(src) {
				// At the urgent mark, a read with a signal pending (the
				// runtime's preemption) finds EAGAIN: not empty.
				atMarkRetries++
				continue
			}
			d.edge = 0
			return true
		case unix.EINTR:
			continue
		default:
			l.fail(p, from, e)
			return false
		}
		if n == 0 {
			d.eof = true
			break
		}
		if spliced {
			d.inPipe = n
			if !l.flush(p, from) {
				return false
			}
			continue
		}
		m, we := write(dst, l.buf[:n])
		if we != 0 && we != unix.EAGAIN {
			l.fail(p, 1-from, we)
			return false
		}
		d.n += int64(m)
		if m < n {
			d.pending = append(d.pending[:0], l.buf[m:n]...)
			return true
		}
		if n == len(l.buf) {
			if d.pipe[0] == 0 {
				l.toBulk(p, d)
			}
			continue
		}
		if ev&(unix.EPOLLRDHUP|unix.EPOLLHUP|unix.EPOLLPRI) == 0 {
			d.edge = 0
			return true // the next edge says when there is more
		}
	}
	return l.passFIN(p, from)
}

// passFIN passes from's FIN on once nothing it read is held, and closes
// the pair when both ways are done. It returns false if the pair closed.
func (l *Loop) passFIN(p *Pair, from int) bool {
	d := &p.d[from]
	if !d.eof || d.shut || d.held() {
		return true
	}
	d.shut = true
	syscall.RawSyscall(unix.SYS_SHUTDOWN, uintptr(p.fd[1-from]), unix.SHUT_WR, 0)
	if p.d[1-from].shut {
		l.close(p)
		return false
	}
	return true
}

// flush writes what direction i holds to its destination. It returns
// false if the pair was closed.
func (l *Loop) flush(p *Pair, i int) bool {
	d := &p.d[i]
	dst := p.fd[1-i]
	if len(d.pending) > 0 {
		m, e := write(dst, d.pending)
		if e != 0 && e != unix.EAGAIN {
			l.fail(p, 1-i, e)
			return false
		}
		d.n += int64(m)
		d.pending = d.pending[:copy(d.pending, d.pending[m:])]
	}
	for d.inPipe > 0 {
		n, e := splice(d.pipe[0], dst, d.inPipe)
		if e == unix.EAGAIN {
			break
		}
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			l.fail(p, 1-i, e)
			return false
		}
		d.inPipe -= n
		d.n += int64(n)
	}
	return l.passFIN(p, i)
}

// toBulk switches d to splicing through a pipe; without a pipe it stays
// in small-message mode.
func (l *Loop) toBulk(p *Pair, d *direction) {
	if !p.bulk {
		p.bulk = true
		p.noSplice = !p.Handler.MaySplice(p)
	}
	if p.noSplice {
		return
	}
	if n := len(l.pipes); n > 0 {
		d.pipe = l.pipes[n-1]
		l.pipes = l.pipes[:n-1]
		return
	}
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_NONBLOCK|unix.O_CLOEXEC); err != nil {
		return
	}
	unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	d.pipe = fds
}

func (l *Loop) fail(p *Pair, side int, err error) {
	if side == 0 {
		p.res.ClientErr = err
	} else {
		p.res.UpstreamErr = err
	}
	l.close(p)
}

// close ends p: both sockets closed (a reset if bytes were left unread),
// its pipes kept for the next stream when empty, Ended called.
func (l *Loop) close(p *Pair) {
	if p.state == stateClosed || p.state == stateDetached || p.state == stateFree {
		return
	}
	p.state = stateClosed
	for i := range p.fd {
		if p.fd[i] >= 0 {
			unix.Close(p.fd[i])
			p.fd[i] = -1
		}
		l.dropPipe(&p.d[i])
	}
	l.unslot(p)
	l.pairs--
	p.res.Up, p.res.Down = p.d[0].n, p.d[1].n
	p.Handler.Ended(p, p.res)
}

func (l *Loop) dropPipe(d *direction) {
	if d.pipe[0] == 0 {
		return
	}
	if d.inPipe == 0 && len(l.pipes) < maxFreePipes {
		l.pipes = append(l.pipes, d.pipe)
	} else {
		unix.Close(d.pipe[0])
		unix.Close(d.pipe[1])
	}
	d.pipe, d.inPipe = [2]int{}, 0
}

// CloseAll closes every pair, as cut (on the loop).
func (l *Loop) CloseAll() { l.closeAll(true) }

func (l *Loop) closeAll(cut bool) {
	for i := range l.slots {
		if p := l.slots[i].pair; p != nil {
			p.res.Cut = cut
			l.close(p)
		}
	}
}

// Each calls f for every pair the loop holds (on the loop); f may Detach
// or close the pair it is given.
func (l *Loop) Each(f func(*Pair)) {
	for i := range l.slots {
		if p := l.slots[i].pair; p != nil {
			f(p)
		}
	}
}

// FD is the pair's client (0) or upstream (1) socket, -1 once closed.
func (p *Pair) FD(i int) int { return p.fd[i] }

// Counts are the bytes p moved each way so far.
func (p *Pair) Counts() (up, down int64) { return p.d[0].n, p.d[1].n }

// Bulk reports whether a direction of p switched to splicing: it carries a
// stream, not messages.
func (p *Pair) Bulk() bool { return p.bulk }

// Detach takes p off the loop if it is quiet (on the loop): connected, no
// FIN seen either way, no byte held by the loop or unread in either
// socket's receive queue, and for a stream none unsent either. It returns
// both sockets, now the caller's, which the loop no longer watches; false
// leaves p as it was. For a takeover: the successor relays it on.
func (l *Loop) Detach(p *Pair) (client, upstream int, ok bool) {
	if p.state != stateRelaying {
		return -1, -1, false
	}
	for i := range p.d {
		if p.d[i].eof || p.d[i].held() {
			return -1, -1, false
		}
	}
	for _, fd := range p.fd {
		in, err := unix.IoctlGetInt(fd, unix.SIOCINQ)
		if err != nil || in != 0 {
			return -1, -1, false
		}
		if p.bulk {
			out, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
			if err != nil || out != 0 {
				return -1, -1, false
			}
		}
	}
	for i := range p.fd {
		unix.EpollCtl(l.ep, unix.EPOLL_CTL_DEL, p.fd[i], nil)
		l.dropPipe(&p.d[i])
	}
	p.state = stateDetached
	l.unslot(p)
	l.pairs--
	client, upstream = p.fd[0], p.fd[1]
	p.fd = [2]int{-1, -1}
	return client, upstream, true
}

func write(fd int, b []byte) (int, syscall.Errno) {
	for {
		n, _, e := syscall.RawSyscall(unix.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), 0
	}
}

func splice(from, to, n int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(unix.SYS_SPLICE, uintptr(from), 0, uintptr(to), 0, uintptr(n), unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
	return int(r), e
}

// soError is the socket's pending error (SO_ERROR), ECONNRESET if none.
func soError(fd int) error {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if v == 0 {
		return unix.ECONNRESET
	}
	return syscall.Errno(v)
}
