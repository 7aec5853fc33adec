package rpc

import (
	"bytes"
	"testing"
)

// TestReadBufferFreedOnce: a read buffer is free for reuse exactly when
// its reader has moved on and every frame it lent was released, in any
// order, before or after the move; one frame never released keeps it.
func TestReadBufferFreedOnce(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after int // releases before and after retire
		lent          int64
		free          bool
	}{
		{"all released before retire", 3, 0, 3, true},
		{"all released after retire", 0, 3, 3, true},
		{"mixed", 1, 2, 3, true},
		{"nothing lent", 0, 0, 0, true},
		{"one kept", 1, 1, 3, false},
	} {
		for _, batched := range []bool{false, true} {
			rb := &readBuf{}
			release := func(k int) {
				if !batched {
					for range k {
						rb.release()
					}
					return
				}
				var r releases
				for range k {
					r.add(rb)
					r.add(nil) // no buffer: not counted
				}
				r.flush()
			}
			release(tc.before)
			rb.retire(tc.lent)
			release(tc.after)
			if free := rb.refs.Load() == 0; free != tc.free {
				t.Errorf("%s (batched %v): refs %d, free %v, want %v", tc.name, batched, rb.refs.Load(), free, tc.free)
			}
		}
	}
}

// TestReadBufferReused: a reader whose frames are all released reads into
// a buffer it used before once it runs out of room, and frames still held
// keep their bytes while later reads fill other buffers.
func TestReadBufferReused(t *testing.T) {
	p := &Protocol{Codec: lineCodec{}, maxFrame: 1 << 20}
	var in bytes.Buffer
	line := bytes.Repeat([]byte{'x'}, 999)
	const lines = 200 // about 12 buffers' worth
	for i := range lines {
		line[0] = byte('a' + i%26)
		in.Write(line)
		in.WriteByte('\n')
	}
	fr := frameReader{r: &in, p: p, side: Client}
	seen := map[*readBuf]bool{}
	var (
		kept Frame
		prev *readBuf
	)
	keptFirst := byte(0)
	reused := false
	for i := range lines {
		f, err := fr.next()
		if err != nil {
			t.Fatalf("line %d: %v", i, err)
		}
		if got := f.Bytes()[0]; got != byte('a'+i%26) || len(f.Bytes()) != 1000 {
			t.Fatalf("line %d: starts %q, %d bytes", i, got, len(f.Bytes()))
		}
		if fr.cur != prev {
			// A buffer the reader moved to: reused if it had one before
			// (sync.Pool may drop some, never all of a dozen).
			reused = reused || seen[fr.cur]
			seen[fr.cur], prev = true, fr.cur
		}
		if i == 5 {
			kept, keptFirst = f, f.Bytes()[0] // held: its buffer is never reused
			continue
		}
		fr.cur.release()
	}
	if !reused {
		t.Errorf("%d buffers for %d lines: none reused", len(seen), lines)
	}
	if kept.Bytes()[0] != keptFirst || !bytes.Equal(kept.Bytes()[1:999], line[1:999]) {
		t.Errorf("a held frame's bytes changed: %q…", kept.Bytes()[:8])
	}
}

// lineCodec frames newline-terminated lines: the least a codec can be.
type lineCodec struct{}

func (lineCodec) Name() string { return "line" }
func (lineCodec) IDWidth() int { return 0 }
func (lineCodec) Decode(b []byte, _ Side, _ int) (Frame, int, error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		return nil, len(b) + 1, ErrNeedMore
	}
	return lineFrame(b[: i+1 : i+1]), i + 1, nil
}

type lineFrame []byte

func (f lineFrame) Kind() Kind         { return Request }
func (f lineFrame) Bytes() []byte      { return f }
func (f lineFrame) ID() uint64         { return 0 }
func (f lineFrame) SetID(uint64)       {}
func (f lineFrame) Attr(string) []byte { return nil }
