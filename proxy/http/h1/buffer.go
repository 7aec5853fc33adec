package h1

import (
	"errors"
	"io"
	"sync"
)

// Read buffers come in three pooled sizes: small for a downstream
// connection (most heads are well under 1 KiB, and an idle keep-alive
// connection holds its buffer), medium for an upstream exchange (held only
// while a response streams through, so it can be larger for throughput),
// large for a head that does not fit the others (up to Limits.MaxHeadBytes;
// a limit above that is served by a buffer allocated for it).
const (
	smallBuf  = 8 << 10
	mediumBuf = 16 << 10
	largeBuf  = DefaultMaxHeadBytes + 1<<10
)

var bufPools = [3]sync.Pool{
	{New: func() any { b := make([]byte, smallBuf); return &b }},
	{New: func() any { b := make([]byte, mediumBuf); return &b }},
	{New: func() any { b := make([]byte, largeBuf); return &b }},
}

func getBuf(size int) *[]byte {
	switch {
	case size <= smallBuf:
		return bufPools[0].Get().(*[]byte)
	case size <= mediumBuf:
		return bufPools[1].Get().(*[]byte)
	case size <= largeBuf:
		return bufPools[2].Get().(*[]byte)
	}
	b := make([]byte, size)
	return &b
}

func putBuf(bp *[]byte) {
	switch len(*bp) {
	case smallBuf:
		bufPools[0].Put(bp)
	case mediumBuf:
		bufPools[1].Put(bp)
	case largeBuf:
		bufPools[2].Put(bp)
	}
}

var errBufferFull = errors.New("http/1.1: read buffer full")

// reader is a connection's read side: a pooled buffer holding bytes
// received and not yet consumed, buf[r:w]. Views into buf stay valid until
// the next fill, which may move the unconsumed bytes to the front.
type reader struct {
	c    io.Reader
	bp   *[]byte
	r, w int
	size int // buffer size to take when none is held
}

func (rd *reader) buffered() []byte { return (*rd.bp)[rd.r:rd.w] }

// hold makes sure a buffer is held.
func (rd *reader) hold() {
	if rd.bp == nil {
		rd.bp = getBuf(rd.size)
		rd.r, rd.w = 0, 0
	}
}

// release gives the buffer back; only when nothing is buffered.
func (rd *reader) release() {
	if rd.bp != nil {
		putBuf(rd.bp)
		rd.bp = nil
		rd.r, rd.w = 0, 0
	}
}

// fill reads once more into the buffer, first moving the unconsumed bytes
// to the front when the free space is at the end. It returns errBufferFull
// when the buffer holds nothing but unconsumed bytes (see grow).
func (rd *reader) fill() error {
	rd.hold()
	buf := *rd.bp
	if rd.r == rd.w {
		rd.r, rd.w = 0, 0
	} else if rd.w == len(buf) {
		if rd.r == 0 {
			return errBufferFull
		}
		rd.w = copy(buf, buf[rd.r:rd.w])
		rd.r = 0
	}
	n, err := rd.c.Read(buf[rd.w:])
	rd.w += n
	if n > 0 {
		return nil
	}
	if err == nil {
		// A Read of nothing and no error is allowed but says nothing:
		// report it as an empty read so callers loop.
		return nil
	}
	return err
}

// grow moves the unconsumed bytes into a buffer of at least size bytes;
// false if the buffer is already that large.
func (rd *reader) grow(size int) bool {
	if rd.bp != nil && len(*rd.bp) >= size {
		return false
	}
	nb := getBuf(size)
	n := 0
	if rd.bp != nil {
		n = copy(*nb, (*rd.bp)[rd.r:rd.w])
		putBuf(rd.bp)
	}
	rd.bp, rd.r, rd.w = nb, 0, n
	return true
}

// shrink goes back to a buffer of rd.size once a large one is empty.
func (rd *reader) shrink() {
	if rd.bp != nil && rd.r == rd.w && len(*rd.bp) > rd.size {
		rd.release()
	}
}
