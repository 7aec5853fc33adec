package sniff

import (
	"errors"
	"io"
	"net"
	"time"
)

// Conn is a connection after Detect: reads return the bytes Detect consumed
// first, then continue from the underlying connection, so whatever handles
// the connection next sees the client's stream from its first byte.
//
// An L4 relay that wants splice writes Buffered() upstream itself and then
// relays TCP() directly; io.Copy(dst, conn) does the same on its own (see
// WriteTo). Like any net.Conn, reads must not run concurrently with each
// other; writes, Close and deadlines go straight to the underlying
// connection.
type Conn struct {
	c   net.Conn
	tcp *net.TCPConn // c, if it is one
	buf []byte       // sniffed bytes not read yet; nil once drained
	// noSplice: WriteTo never splices (Options.NoSplice).
	noSplice bool
}

func newConn(c net.Conn) *Conn {
	tcp, _ := c.(*net.TCPConn)
	return &Conn{c: c, tcp: tcp}
}

// Buffered returns the sniffed bytes that reads have not returned yet. It
// does not consume them; the slice is valid until the next Read or WriteTo
// and must not be modified.
func (c *Conn) Buffered() []byte { return c.buf }

// TCP returns the underlying *net.TCPConn, or nil if Detect was given some
// other net.Conn. Reading from it skips Buffered().
func (c *Conn) TCP() *net.TCPConn { return c.tcp }

// NetConn returns the underlying connection. Reading from it skips
// Buffered().
func (c *Conn) NetConn() net.Conn { return c.c }

// Read returns buffered bytes while there are any (without also reading
// from the connection, so it never blocks while holding data), then reads
// from the connection.
func (c *Conn) Read(p []byte) (int, error) {
	if len(c.buf) == 0 {
		return c.c.Read(p)
	}
	n := copy(p, c.buf)
	c.buf = c.buf[n:]
	if len(c.buf) == 0 {
		c.buf = nil // let the sniffed bytes go
	}
	return n, nil
}

// WriteTo writes the buffered bytes to w and then copies the rest of the
// connection. For a TCP connection the rest goes through
// (*net.TCPConn).WriteTo, so io.Copy to another TCP connection splices
// (unless Options.NoSplice said not to: then read and write).
func (c *Conn) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(c.buf) > 0 {
		n, err := w.Write(c.buf)
		total += int64(n)
		c.buf = c.buf[n:]
		if err != nil {
			return total, err
		}
		c.buf = nil
	}
	var (
		n   int64
		err error
	)
	if c.tcp != nil && !c.noSplice {
		n, err = c.tcp.WriteTo(w)
	} else {
		n, err = io.Copy(w, onlyReader{c.c})
	}
	return total + n, err
}

// onlyReader hides every method but Read, so io.Copy does not come back to
// a WriteTo.
type onlyReader struct{ io.Reader }

// Write writes to the underlying connection.
func (c *Conn) Write(p []byte) (int, error) { return c.c.Write(p) }

// Close closes the underlying connection. It leaves the buffer alone, so
// it may run concurrently with a Read (as a relay's abort does).
func (c *Conn) Close() error { return c.c.Close() }

// CloseWrite half-closes the underlying connection's sending side, so a
// relay can pass the client's EOF on; it fails with errors.ErrUnsupported
// if the connection cannot half-close.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.ErrUnsupported
}

// CloseRead shuts down the underlying connection's receiving side; bytes
// still buffered can be read. It fails with errors.ErrUnsupported if the
// connection cannot half-close.
func (c *Conn) CloseRead() error {
	if cr, ok := c.c.(interface{ CloseRead() error }); ok {
		return cr.CloseRead()
	}
	return errors.ErrUnsupported
}

// LocalAddr is the underlying connection's.
func (c *Conn) LocalAddr() net.Addr { return c.c.LocalAddr() }

// RemoteAddr is the underlying connection's.
func (c *Conn) RemoteAddr() net.Addr { return c.c.RemoteAddr() }

// SetDeadline sets the underlying connection's deadlines; buffered bytes
// are returned regardless.
func (c *Conn) SetDeadline(t time.Time) error { return c.c.SetDeadline(t) }

// SetReadDeadline sets the underlying connection's read deadline; buffered
// bytes are returned regardless.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.c.SetReadDeadline(t) }

// SetWriteDeadline sets the underlying connection's write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.c.SetWriteDeadline(t) }

var (
	_ net.Conn    = (*Conn)(nil)
	_ io.WriterTo = (*Conn)(nil)
)
