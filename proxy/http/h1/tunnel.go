package h1

import (
	"io"
	"net"
	"sync"
	"time"
)

// closeWriter is a connection that can half-close: *net.TCPConn, and a
// sniffer's replaying connection that passes it on.
type closeWriter interface {
	CloseWrite() error
}

// tunnel relays bytes both ways between the client and uc after a 101
// Switching Protocols or a 2xx answer to CONNECT, until both directions
// are done. Bytes already buffered on either side (sent right behind the
// heads) go first. When one side finishes sending, the other side's write
// half is closed so half-closed protocols still get their answers; a
// client connection that cannot half-close is closed when the upstream is
// done. An error in either direction ends both. Between two *net.TCPConn
// the kernel splices.
//
// A tunnel's end says nothing of the endpoint's health (the upgraded
// protocol is not ours to judge), so it reports nothing.
func (s *server) tunnel(uc *upConn) {
	if b := uc.rd.buffered(); len(b) > 0 {
		if _, err := s.down.Write(b); err != nil {
			return
		}
	}
	if b := s.dr.buffered(); len(b) > 0 {
		if _, err := uc.c.Write(b); err != nil {
			return
		}
	}
	uc.rd.release()
	s.dr.release()
	s.down.SetReadDeadline(time.Time{})
	uc.c.SetReadDeadline(time.Time{})

	var (
		wg   sync.WaitGroup
		once sync.Once
	)
	abort := func() {
		once.Do(func() {
			s.down.SetDeadline(aLongTimeAgo)
			uc.c.SetDeadline(aLongTimeAgo)
		})
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		if !(tunnelHalf{dst: s.down, src: uc.c}).run() {
			abort()
		}
	}()
	if !(tunnelHalf{dst: uc.c, src: s.down}).run() {
		abort()
	}
	wg.Wait()
}

// tunnelHalf is one direction of a tunnel, a named type so goroutine stacks
// say what they are doing.
type tunnelHalf struct {
	dst, src net.Conn
}

// run copies until the source's EOF, then half-closes the destination;
// false when the copy failed.
func (t tunnelHalf) run() bool {
	if _, err := io.Copy(t.dst, t.src); err != nil {
		return false
	}
	if cw, ok := t.dst.(closeWriter); ok {
		return cw.CloseWrite() == nil
	}
	// No half-close: closing is the only way to say we are done.
	t.dst.Close()
	return true
}
