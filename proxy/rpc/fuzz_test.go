package rpc

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"
)

// lenCodec frames a 2-byte big-endian length and that many bytes: the
// smallest codec that exercises the frame reader's need-more, buffer
// growth and size limit.
type lenCodec struct{}

type lenFrame struct{ raw []byte }

func (f *lenFrame) Kind() Kind         { return Request }
func (f *lenFrame) Bytes() []byte      { return f.raw }
func (f *lenFrame) ID() uint64         { return 0 }
func (f *lenFrame) SetID(uint64)       {}
func (f *lenFrame) Attr(string) []byte { return nil }
func (lenCodec) Name() string          { return "fuzz-len" }
func (lenCodec) IDWidth() int          { return 0 }
func (lenCodec) Decode(b []byte, _ Side, max int) (Frame, int, error) {
	if len(b) < 2 {
		return nil, 2, ErrNeedMore
	}
	n := 2 + int(binary.BigEndian.Uint16(b))
	if n > max {
		return nil, 0, ErrFrameTooLarge
	}
	if len(b) < n {
		return nil, n, ErrNeedMore
	}
	return &lenFrame{raw: b[:n:n]}, n, nil
}

var fuzzLen = Register(lenCodec{}, 40000)

// chunked reads its data in chunks of the sizes the fuzzer picks.
type chunked struct {
	data  []byte
	sizes []byte
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := len(c.data)
	if len(c.sizes) > 0 {
		n = min(n, int(c.sizes[0])+1)
		c.sizes = c.sizes[1:]
	}
	n = copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzFrameReader: however the bytes arrive, and whether frames are read
// one by one or a buffer's worth at a time (some put back unread), the
// frames read back are the input's frames byte for byte, in order, each
// still intact after later
// reads (frames alias the buffer, which must never be overwritten), and
// the reader ends with EOF, an unexpected EOF inside a frame, or the size
// limit — never a panic.
func FuzzFrameReader(f *testing.F) {
	f.Add([]byte{0, 3, 'a', 'b', 'c', 0, 0, 0, 1, 'x'}, []byte{0, 1, 2})
	f.Add([]byte{0xff, 0xff, 1}, []byte{})
	f.Add([]byte{0, 5, 'a'}, []byte{0})
	f.Fuzz(func(t *testing.T, data, sizes []byte) {
		fr := &frameReader{r: &chunked{data: data, sizes: sizes}, p: fuzzLen, side: Client}
		fr.r = &chunked{data: data, sizes: sizes}
		var frames [][]byte
		var copies [][]byte
		for {
			fm, err := fr.next()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrFrameTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				break
			}
			// As readers do: the frames already buffered as one batch;
			// now and then the ones after the first put back unread, as
			// a pinned request does (read again, the same bytes).
			batch, end := [][]byte{fm.Bytes()}, fr.start
			for {
				g := fr.nextBuffered()
				if g == nil {
					break
				}
				batch = append(batch, g.Bytes())
			}
			if len(batch) > 1 && len(frames)%3 == 1 {
				fr.unread(end, len(batch)-1)
				batch = batch[:1]
			}
			for _, b := range batch {
				frames = append(frames, b)
				copies = append(copies, bytes.Clone(b))
			}
		}
		var joined []byte
		for i := range frames {
			if !bytes.Equal(frames[i], copies[i]) {
				t.Fatalf("frame %d changed after later reads", i)
			}
			joined = append(joined, frames[i]...)
		}
		if !bytes.HasPrefix(data, joined) {
			t.Fatalf("frames are not the input's prefix")
		}
	})
}
