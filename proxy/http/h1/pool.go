package h1

import (
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/proxy/rawsock"
)

// Pool holds one pod's idle upstream HTTP/1.1 connections, per endpoint
// address. A connection goes back to the pool only after an exchange both
// sides framed cleanly and neither asked to close; it is taken again for
// the same address, newest first (the warmest, and the least likely to
// have been closed by the server). A request that could not be sent again
// (not idempotent, or its body streamed) takes one only after a
// non-blocking peek showed the server has not closed it meanwhile; the
// others skip that syscall, and if the connection turns out dead before
// any response byte, they are sent again on a fresh connection. At most MaxIdlePerEndpoint are kept
// per address (the oldest is closed first) and none longer than
// IdleTimeout. A Pool also carries the Options of every connection served
// with it. It is safe for concurrent use; its zero value is not usable:
// call NewPool.
type Pool struct {
	opt  Options
	mu   sync.Mutex
	idle map[netip.AddrPort][]*upConn // oldest first
	shut bool
	stop chan struct{}
	done chan struct{}
}

// NewPool makes a pool with opt's zero fields set to their defaults. It
// starts one goroutine that closes expired idle connections; Close stops
// it.
func NewPool(opt Options) *Pool {
	p := &Pool{
		opt:  opt.withDefaults(),
		idle: map[netip.AddrPort][]*upConn{},
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go p.janitor()
	return p
}

// Close closes every idle connection and stops pooling: connections handed
// back later are closed. Connections in use are not touched.
func (p *Pool) Close() {
	p.mu.Lock()
	if p.shut {
		p.mu.Unlock()
		return
	}
	p.shut = true
	idle := p.idle
	p.idle = nil
	p.mu.Unlock()
	close(p.stop)
	<-p.done
	for _, cs := range idle {
		for _, uc := range cs {
			uc.close()
		}
	}
}

// Idle reports how many connections the pool holds for addr (for tests and
// the admin dump).
func (p *Pool) Idle(addr netip.AddrPort) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle[addr])
}

// get returns an idle connection to addr, or nil. With check, it first
// peeks to make sure the server has not closed it (one syscall); without,
// the caller must cope with a stale connection, which it can when the
// request may be sent again (idempotent, body not streamed).
func (p *Pool) get(addr netip.AddrPort, check bool) *upConn {
	for {
		p.mu.Lock()
		cs := p.idle[addr]
		if len(cs) == 0 {
			p.mu.Unlock()
			return nil
		}
		uc := cs[len(cs)-1]
		cs[len(cs)-1] = nil
		p.idle[addr] = cs[:len(cs)-1]
		p.mu.Unlock()
		if nanotime()-uc.idleSince < int64(p.opt.IdleTimeout) && (!check || uc.alive()) {
			uc.reused = true
			return uc
		}
		uc.close()
	}
}

// put hands back a connection after a clean exchange; it must hold no
// unconsumed bytes.
func (p *Pool) put(uc *upConn) {
	uc.rd.release()
	uc.idleSince = nanotime()
	p.mu.Lock()
	if p.shut {
		p.mu.Unlock()
		uc.close()
		return
	}
	cs := p.idle[uc.addr]
	var evict *upConn
	if len(cs) >= p.opt.MaxIdlePerEndpoint {
		evict = cs[0]
		copy(cs, cs[1:])
		cs = cs[:len(cs)-1]
	}
	p.idle[uc.addr] = append(cs, uc)
	p.mu.Unlock()
	if evict != nil {
		evict.close()
	}
}

// janitor closes connections idle longer than IdleTimeout, so an endpoint
// no longer used does not keep sockets open on both ends.
func (p *Pool) janitor() {
	defer close(p.done)
	t := time.NewTicker(max(p.opt.IdleTimeout/4, 100*time.Millisecond))
	defer t.Stop()
	var expired []*upConn
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
		}
		limit := nanotime() - int64(p.opt.IdleTimeout)
		p.mu.Lock()
		for addr, cs := range p.idle {
			n := 0
			for n < len(cs) && cs[n].idleSince < limit {
				n++
			}
			if n == 0 {
				continue
			}
			expired = append(expired, cs[:n]...)
			if n == len(cs) {
				delete(p.idle, addr)
				continue
			}
			rest := copy(cs, cs[n:])
			clear(cs[rest:])
			p.idle[addr] = cs[:rest]
		}
		p.mu.Unlock()
		for i, uc := range expired {
			uc.close()
			expired[i] = nil
		}
		expired = expired[:0]
	}
}

// upConn is one upstream connection, pooled or in use by one exchange.
type upConn struct {
	c         *net.TCPConn
	raw       syscall.RawConn
	io        rawsock.Conn // reads and writes c with raw system calls
	addr      netip.AddrPort
	rd        reader
	idleSince int64 // nanotime when pooled
	reused    bool  // taken from the pool (else freshly dialled)
	// coarseDL is the coarse response header deadline set on c
	// (headReadDeadline); zero when another one was set since.
	coarseDL time.Time
	peekOK   bool
	peekFn   func(fd uintptr) // made once: Control's argument, so a peek allocates nothing
}

func newUpConn(c *net.TCPConn, addr netip.AddrPort) *upConn {
	uc := &upConn{c: c, addr: addr}
	uc.io.Reset(c)
	uc.rd = reader{c: &uc.io, size: mediumBuf}
	uc.raw = uc.io.RawConn()
	uc.peekFn = func(fd uintptr) {
		// One byte, MSG_PEEK|MSG_DONTWAIT: EAGAIN means open and quiet;
		// EOF, an error or unsolicited bytes mean it cannot serve a request.
		// Raw, as every call on these sockets (proxy/rawsock): it never blocks.
		var b [1]byte
		_, _, errno := unix.RawSyscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
		uc.peekOK = errno == unix.EAGAIN || errno == unix.EWOULDBLOCK
	}
	return uc
}

// alive peeks at the socket without blocking and without reading.
func (uc *upConn) alive() bool {
	if uc.raw == nil {
		return false
	}
	uc.peekOK = false
	if err := uc.raw.Control(uc.peekFn); err != nil {
		return false
	}
	return uc.peekOK
}

// setReadDeadline sets an exact read deadline; the next coarse one is set
// again.
func (uc *upConn) setReadDeadline(t time.Time) {
	uc.c.SetReadDeadline(t)
	uc.coarseDL = time.Time{}
}

func (uc *upConn) close() {
	uc.rd.release()
	uc.c.Close()
}

// epoch makes nanotime monotonic.
var epoch = time.Now()

func nanotime() int64 { return int64(time.Since(epoch)) }
