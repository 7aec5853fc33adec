package h2

import (
	"bytes"
	"crypto/rand"
	"math"
	"net"
	"sync"

	"golang.org/x/net/http2"
)

// drainConn is the downstream connection as the HTTP/2 server sees it. It
// adds the first step of a graceful drain, which the server lacks (it only
// sends one GOAWAY, naming the last stream it saw, so a stream the client
// opened meanwhile is lost): a GOAWAY with the highest stream id plus a
// PING, slipped between two of the server's frames, and it tells when the
// client answers that PING. To do so it follows the frame boundaries of
// both directions; it never changes a byte the server reads or writes.
type drainConn struct {
	net.Conn

	// Guarded by wmu: the server's frame writer goroutine writes, the
	// drain goroutine injects.
	wmu     sync.Mutex
	wcur    frameCursor
	wframes int    // frames the server has written (its SETTINGS comes first)
	pending []byte // frames to write at the next boundary

	// Owned by the server's frame reader goroutine (the only reader).
	preface int // client preface bytes still to pass
	rcur    frameCursor
	ping    [8]byte // payload of the PING ack being read
	pingN   int

	// Set by startDrain before the PING can be answered.
	mu       sync.Mutex
	pingData [8]byte
	acked    chan struct{} // closed when the client answers our PING
}

func newDrainConn(c net.Conn) *drainConn {
	return &drainConn{Conn: c, preface: len(http2.ClientPreface)}
}

// startDrain sends (now, or right after the server's frame being written)
// GOAWAY with the highest stream id and no error, and a PING; the channel
// closes when the client acknowledges the PING, which proves it has seen
// the GOAWAY.
func (c *drainConn) startDrain() <-chan struct{} {
	c.mu.Lock()
	if c.acked != nil {
		c.mu.Unlock()
		return c.acked
	}
	rand.Read(c.pingData[:])
	c.acked = make(chan struct{})
	data, acked := c.pingData, c.acked
	c.mu.Unlock()

	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	fr.WriteGoAway(math.MaxInt32, http2.ErrCodeNo, nil)
	fr.WritePing(false, data)

	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.wframes > 0 && c.wcur.between() {
		c.Conn.Write(b.Bytes()) // an error ends the connection, which the server sees
	} else {
		c.pending = b.Bytes()
	}
	return acked
}

func (c *drainConn) Write(p []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.pending == nil {
		n, err := c.Conn.Write(p)
		_, f := c.wcur.advance(p[:n], false)
		c.wframes += f
		return n, err
	}
	total := 0
	for {
		if c.pending != nil && c.wframes > 0 && c.wcur.between() {
			if _, err := c.Conn.Write(c.pending); err != nil {
				return total, err
			}
			c.pending = nil
		}
		if len(p) == 0 {
			return total, nil
		}
		k, f := c.wcur.advance(p, c.pending != nil)
		n, err := c.Conn.Write(p[:k])
		total += n
		c.wframes += f
		if err != nil {
			return total, err
		}
		p = p[k:]
	}
}

func (c *drainConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.observe(p[:n])
	return n, err
}

// observe follows the client's frames to spot the PING ack.
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
				c.pingAcked()
			}
			c.rcur.end()
		}
	}
}

func (c *drainConn) pingAcked() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.acked != nil && c.ping == c.pingData {
		select {
		case <-c.acked:
		default:
			close(c.acked)
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
