package sniff

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// Defaults for Options.
const (
	// DefaultTimeout is long enough for a client on the same node or in the
	// same zone to send its first flight, and short enough that a
	// server-first protocol on an undeclared port waits only this long
	// before being relayed as opaque TCP.
	DefaultTimeout = 100 * time.Millisecond
	// DefaultMaxBytes holds one full TLS record (header and the largest
	// plaintext fragment), so any real ClientHello fits; an HTTP/1 request
	// line longer than this is relayed as opaque TCP.
	DefaultMaxBytes = recordHeaderLen + maxRecordLen
)

// maxScanned bounds the bytes matchers look at in one Detect, about a
// millisecond of CPU. Matchers rescan from the first byte after every read,
// so a client dribbling a byte per segment would otherwise cost CPU
// quadratic in the cap (16 KiB a byte at a time: about 0.2 s). Real first
// flights stay far below: a ClientHello at the cap arriving in full-sized
// segments is scanned about 12 times 8 KiB on average.
const maxScanned = 1 << 20

// Options bound one Detect.
type Options struct {
	// Timeout is how long Detect waits for the client to send enough to
	// decide. Zero or negative skips sniffing: Detect returns Skipped at
	// once without reading. Callers usually want DefaultTimeout and pass
	// zero for ports whose protocol is declared.
	Timeout time.Duration
	// MaxBytes caps the bytes read while sniffing; undecided at the cap
	// means Unknown. Zero means DefaultMaxBytes. Larger values cost an
	// allocation per Detect (the pool holds default-sized buffers).
	MaxBytes int
	// Metrics, if not nil, counts outcomes and times detection.
	Metrics *Metrics
	// NoSplice makes the returned Conn's WriteTo copy with read and write,
	// never splice: for a socket in an eBPF sockmap, whose peer's bytes
	// arrive in a queue splice does not see.
	NoSplice bool
}

// bufs holds DefaultMaxBytes-sized sniff buffers. A buffer is used only
// while Detect runs; the bytes that must outlive it are copied out.
var bufs = sync.Pool{New: func() any { b := make([]byte, DefaultMaxBytes); return &b }}

// Detect reads from c until a matcher decides, MaxBytes have been read, the
// client closes its side, or the deadline passes, and says which protocol
// the client speaks. Nothing is lost: the returned Conn replays every byte
// read before reading more from c, and is never nil (it owns c: closing it
// closes c).
//
// Detect sets a read deadline on c while sniffing and clears it before
// returning, so the rest of the connection has none. The error is non-nil
// only if reading or setting the deadline failed (never for a timeout or
// EOF, which are outcomes); the caller should then close the Conn.
func Detect(c net.Conn, opts Options) (Result, *Conn, error) {
	start := time.Now()
	conn := newConn(c)
	conn.noSplice = opts.NoSplice
	if opts.Timeout <= 0 {
		res := Result{Protocol: Skipped}
		opts.Metrics.observe(Skipped, 0)
		return res, conn, nil
	}
	res, err := conn.sniff(start, opts)
	res.Elapsed = time.Since(start)
	if err != nil {
		opts.Metrics.failed(res.Elapsed)
		return res, conn, err
	}
	opts.Metrics.observe(res.Protocol, res.Elapsed)
	return res, conn, nil
}

// sniff is Detect's read loop. It leaves the bytes read in conn.buf.
func (conn *Conn) sniff(start time.Time, opts Options) (Result, error) {
	var res Result
	if err := conn.c.SetReadDeadline(start.Add(opts.Timeout)); err != nil {
		return res, fmt.Errorf("sniff: set read deadline: %w", err)
	}
	limit := opts.MaxBytes
	if limit <= 0 {
		limit = DefaultMaxBytes
	}
	var buf []byte
	if limit <= DefaultMaxBytes {
		p := bufs.Get().(*[]byte)
		defer bufs.Put(p)
		buf = (*p)[:limit]
	} else {
		buf = make([]byte, limit)
	}

	var (
		n, scanned int
		decided    bool
		rerr       error
	)
	for !decided && rerr == nil && n < limit && scanned < maxScanned {
		var m int
		m, rerr = conn.c.Read(buf[n:])
		if m > 0 {
			n += m
			scanned += n
			res, decided = decide(buf[:n])
		}
	}
	if n > 0 {
		conn.buf = append([]byte(nil), buf[:n]...)
	}
	// Clear the deadline whatever happened, so that the connection blocks
	// normally from here on, also after a Timeout.
	if err := conn.c.SetReadDeadline(time.Time{}); err != nil {
		return res, fmt.Errorf("sniff: clear read deadline: %w", err)
	}
	switch {
	case decided:
		// If the deciding read also returned an error (a TCPConn never
		// does both), the next read from c repeats it or EOF.
	case rerr == nil, rerr == io.EOF:
		res.Protocol = Unknown // at a cap, or all the client will ever send
	case errors.Is(rerr, os.ErrDeadlineExceeded):
		res.Protocol = Timeout
	default:
		return res, fmt.Errorf("sniff: read: %w", rerr)
	}
	return res, nil
}
