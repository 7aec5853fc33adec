package redis

import (
	"bytes"
	"errors"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// fuzzMax keeps the fuzzer's frame bound small, so ErrFrameTooLarge is
// reachable.
const fuzzMax = 4096

// FuzzDecode checks, for commands and replies: no panic; a decoded frame
// is a prefix of the input whose arguments can all be read; decoding the
// frame alone gives the same length; every proper prefix of it needs more
// with a hint above the prefix and not beyond the frame (the hint is a
// lower bound), and none of them is too large; decoding into a spare
// frame (rpc.Reuser) gives the same frame.
func FuzzDecode(f *testing.F) {
	f.Add(false, []byte("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"))
	f.Add(true, []byte("*2\r\n$1\r\na\r\n%1\r\n+k\r\n:1\r\n"))
	f.Fuzz(func(t *testing.T, server bool, b []byte) {
		from := rpc.Client
		if server {
			from = rpc.Server
		}
		if len(b) == 0 || len(b) > 2*fuzzMax {
			return
		}
		fr, n, err := Codec{}.Decode(b, from, fuzzMax)
		if server {
			// The fast path for simple replies decides as the walk does.
			wf, wn, werr := walkReply(nil, b, fuzzMax)
			if wn != n || werr != err || (err == nil && !sameFrame(wf, fr.(*Frame))) {
				t.Fatalf("fast path: %v, %d, %v; the walk: %v, %d, %v", fr, n, err, wf, wn, werr)
			}
		}
		if err != nil {
			if errors.Is(err, rpc.ErrNeedMore) && n <= len(b) {
				t.Fatalf("need more with hint %d for %d bytes", n, len(b))
			}
			return
		}
		if n <= 0 || n > len(b) || !bytes.Equal(fr.Bytes(), b[:n]) {
			t.Fatalf("frame of %d bytes from %d", n, len(b))
		}
		rf := fr.(*Frame)
		for i := range rf.Args() {
			if a, w := rf.Arg(i), argWalk(rf, i); !bytes.Equal(a, w) {
				t.Fatalf("argument %d: %q, walking the frame %q", i, a, w)
			}
		}
		fr.Attr(AttrCommand)
		fr.Attr(AttrKey)
		Codec{}.Pins(fr)
		Codec{}.BalanceKey(fr)
		if _, n2, err := (Codec{}).Decode(b[:n], from, fuzzMax); err != nil || n2 != n {
			t.Fatalf("alone: %d, %v; in context %d", n2, err, n)
		}
		// Into a frame given back (a spare that last held another
		// message): the same frame as a fresh one.
		spare, _, _ := Codec{}.Decode([]byte("SET k v\r\n"), rpc.Client, fuzzMax)
		if again, n3, err := (Codec{}).DecodeInto(spare, b, from, fuzzMax); err != nil || n3 != n || !sameFrame(again.(*Frame), rf) {
			t.Fatalf("into a spare: %+v (%d, %v), fresh %+v", again, n3, err, rf)
		}
		for _, k := range []int{n - 1, n / 2, 1} {
			if k <= 0 || k >= n {
				continue
			}
			_, h, err := Codec{}.Decode(b[:k], from, fuzzMax)
			if !errors.Is(err, rpc.ErrNeedMore) || h <= k || h > n {
				t.Fatalf("prefix %d of a %d-byte frame: hint %d, %v", k, n, h, err)
			}
		}
	})
}

// sameFrame reports whether two frames hold the same message.
func sameFrame(a, b *Frame) bool {
	return bytes.Equal(a.raw, b.raw) && a.kind == b.kind && a.nargs == b.nargs && a.inline == b.inline && a.push == b.push &&
		a.nameAt == b.nameAt && a.nameLen == b.nameLen
}

// argWalk is argument i of an array command found by walking its bytes
// from the start, as Arg did before the name's place was kept.
func argWalk(f *Frame, i int) []byte {
	if f.inline {
		return inlineArg(f.raw, i)
	}
	p := bytes.IndexByte(f.raw, '\n') + 1 // *<n>
	for j := 0; ; j++ {
		n, q := readLen(f.raw, p+1) // $<len> CRLF
		if j == i {
			return f.raw[q : q+n]
		}
		p = q + n + 2
	}
}
