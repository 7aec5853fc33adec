package h2

import (
	"bytes"
	"crypto/rand"
	"math"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// drainConn is the downstream connection as the HTTP/2 server sees it. It
// adds the first steps of a graceful drain, which the server lacks (it
// only sends one GOAWAY, naming the last stream it saw, so a stream the
// client opened meanwhile is lost), by slipping frames of its own between
// two of the server's and telling when the client answers a PING of its
// own. To do so it follows the frame boundaries of both directions; it
// never changes a byte the server reads or writes, though it may hold the
// server's writes back for a while (see barrier).
type drainConn struct {
	net.Conn

	// Guarded by wmu: the server's frame writer goroutine writes, the
	// drain goroutine injects; wcond wakes a write held at a barrier.
	wmu     sync.Mutex
	wcond   sync.Cond
	wcur    frameCursor
	wframes int    // frames the server has written (its SETTINGS comes first)
	pending []byte // frames to write at the next boundary
	hold    bool   // once pending is out, the server's frames wait
	closed  bool

	// Owned by the server's frame reader goroutine (the only reader).
	preface int // client preface bytes still to pass
	rcur    frameCursor
	ping    [8]byte // payload of the PING ack being read
	pingN   int

	pings pingSet
}

func newDrainConn(c net.Conn) *drainConn {
	dc := &drainConn{Conn: c, preface: len(http2.ClientPreface)}
	dc.wcond.L = &dc.wmu
	return dc
}

// barrier is the first step of a drain: a PING, after which the server's
// frames are held until goAway. Its answer proves the client has read
// every frame written before it and sent what it wrote in reply, so the
// GOAWAY that follows reaches a client with no request in hand that it
// meant to send: clients that open a stream when another ends (h2load, or
// any nghttp2 application submitting from its stream-close callback) only
// send it after the read that brought the end, and a GOAWAY read in that
// same read makes nghttp2 drop it as refused, which such a client counts
// as a failed request instead of sending it again.
func (c *drainConn) barrier() <-chan struct{} {
	var b bytes.Buffer
	acked := c.writePing(http2.NewFramer(&b, nil), &b)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.hold = true
	c.inject(b.Bytes())
	return acked
}

// goAway sends (now, or at the next frame boundary if the barrier PING
// itself is still waiting for one) a GOAWAY with the highest stream id and
// no error, and a PING, then lets the server's frames go again; the
// channel closes when the client answers that PING, which proves it has
// seen the GOAWAY.
func (c *drainConn) goAway() <-chan struct{} {
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	fr.WriteGoAway(math.MaxInt32, http2.ErrCodeNo, nil)
	acked := c.writePing(fr, &b)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.inject(b.Bytes())
	c.hold = false
	c.wcond.Broadcast()
	return acked
}

// writePing frames a PING with a fresh payload into b and returns the
// channel its answer closes.
func (c *drainConn) writePing(fr *http2.Framer, b *bytes.Buffer) <-chan struct{} {
	data, acked := c.pings.add()
	fr.WritePing(false, data)
	return acked
}

// pingSet is the PINGs a drain sent and waits to see answered.
type pingSet struct {
	mu sync.Mutex
	m  map[[8]byte]chan struct{}
}

// add makes a PING payload not in use and the channel its answer closes.
func (p *pingSet) add() ([8]byte, <-chan struct{}) {
	var data [8]byte
	acked := make(chan struct{})
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[[8]byte]chan struct{}{}
	}
	for {
		rand.Read(data[:])
		if _, dup := p.m[data]; !dup {
			break
		}
	}
	p.m[data] = acked
	return data, acked
}

// acked takes a PING answer: the channel of ours it answers closes.
func (p *pingSet) acked(data [8]byte) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if acked, ok := p.m[data]; ok {
		close(acked)
		delete(p.m, data)
	}
}

// waitAnswer waits for a drain step's PING answer (acked), at most
// timeout; false when the connection ended first (served).
func waitAnswer(acked, served <-chan struct{}, timeout time.Duration) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-acked:
	case <-t.C:
	case <-served:
		return false
	}
	return true
}

// inject writes frames now if the server is between frames, else queues
// them for the next boundary. wmu is held.
func (c *drainConn) inject(frames []byte) {
	if c.pending == nil && c.wframes > 0 && c.wcur.between() {
		c.Conn.Write(frames) // an error ends the connection, which the server sees
		return
	}
	c.pending = append(c.pending, frames...)
}

func (c *drainConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	for {
		if c.wframes > 0 && c.wcur.between() {
			if c.pending != nil {
				if _, err := c.Conn.Write(c.pending); err != nil {
					return total, err
				}
				c.pending = nil
			}
			for c.hold && !c.closed && len(p) > 0 {
				c.wcond.Wait()
			}
			if c.closed {
				return total, net.ErrClosed
			}
		}
		if len(p) == 0 {
			return total, nil
		}
		// Stop at the next frame end when something waits for it.
		k, f := c.wcur.advance(p, c.pending != nil || c.hold)
		n, err := c.Conn.Write(p[:k])
		total += n
		c.wframes += f
		if err != nil {
			return total, err
		}
		p = p[k:]
	}
}

// Close also releases a write held at a barrier.
func (c *drainConn) Close() error {
	err := c.Conn.Close()
	c.wmu.Lock()
	c.closed = true
	c.wcond.Broadcast()
	c.wmu.Unlock()
	return err
}

func (c *drainConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.observe(p[:n])
	return n, err
}

// observe follows the client's frames to spot PING acks.
func (c *drainConn) observe(p []byte) {
	if c.preface > 0 {
		k := min(c.preface, len(p))
		c.preface -= k
		p = p[k:]
	}
	for len(p) > 0 {
		if c.rcur.inHeader() {
			k := c.rcur.header(p)
			p = p[k:]
			if c.rcur.inHeader() {
				return
			}
			c.pingN = 0
			if c.rcur.rem == 0 {
				c.rcur.end()
			}
			continue
		}
		k := min(c.rcur.rem, len(p))
		if c.rcur.isPingAck() {
			c.pingN += copy(c.ping[c.pingN:], p[:k])
		}
		c.rcur.rem -= k
		p = p[k:]
		if c.rcur.rem == 0 {
			if c.rcur.isPingAck() && c.pingN == len(c.ping) {
				c.pings.acked(c.ping)
			}
			c.rcur.end()
		}
	}
}

// frameCursor follows frame boundaries in a byte stream of HTTP/2 frames
// (RFC 9113 §4.1: a 9-byte header whose first 3 bytes are the payload
// length).
type frameCursor struct {
	hdr  [9]byte
	nhdr int // header bytes seen of the current frame; 9 once in the payload
	rem  int // payload bytes left
}

func (c *frameCursor) between() bool  { return c.nhdr == 0 }
func (c *frameCursor) inHeader() bool { return c.nhdr < len(c.hdr) }
func (c *frameCursor) end()           { c.nhdr, c.rem = 0, 0 }

// header takes header bytes from p; once complete, rem is the payload
// length.
func (c *frameCursor) header(p []byte) int {
	k := copy(c.hdr[c.nhdr:], p)
	c.nhdr += k
	if c.nhdr == len(c.hdr) {
		c.rem = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
	}
	return k
}

// isPingAck: the current frame is a PING with ACK and an 8-byte payload.
func (c *frameCursor) isPingAck() bool {
	return http2.FrameType(c.hdr[3]) == http2.FramePing && http2.Flags(c.hdr[4])&http2.FlagPingAck != 0 &&
		c.hdr[0] == 0 && c.hdr[1] == 0 && c.hdr[2] == 8
}

// advance moves over p, returning how many bytes it consumed and how many
// frames ended; with stop it stops at the first frame end.
func (c *frameCursor) advance(p []byte, stop bool) (n, frames int) {
	for n < len(p) {
		if c.inHeader() {
			n += c.header(p[n:])
			if c.inHeader() || c.rem > 0 {
				continue
			}
		} else {
			k := min(c.rem, len(p)-n)
			c.rem -= k
			n += k
			if c.rem > 0 {
				continue
			}
		}
		c.end()
		frames++
		if stop {
			return n, frames
		}
	}
	return n, frames
}
