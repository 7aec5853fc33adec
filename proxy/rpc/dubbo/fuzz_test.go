package dubbo

import (
	"bytes"
	"errors"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

const fuzzMax = 4096

// FuzzDecode checks the header framing and the lazy body decoder: no
// panic on any input; a frame is a prefix of the input and decodes alone
// to the same length; a proper prefix needs more with a hint above it;
// every attribute can be asked for, a decode into a spare frame equals a
// fresh one, and an id set is the id read.
func FuzzDecode(f *testing.F) {
	f.Add(false, request(1, reqFlags, "org.weir.Greeter", "1.0", "Hello", "Ljava/lang/String;", appendString(nil, "bob"), "group", "gold"))
	f.Add(false, message(flagRequest|flagTwoWay|flagEvent|Hessian2, 0, 2, []byte{'N'}))
	f.Add(true, message(Hessian2, 20, 3, []byte{0x91, 'N'}))
	f.Add(false, request(4, reqFlags, "s", "", "m", "[ILjava/util/Map;", []byte{0x78, 'H', 0x01, 'k', 'N', 'Z'}))
	f.Fuzz(func(t *testing.T, server bool, b []byte) {
		if len(b) > 2*fuzzMax {
			return
		}
		from := rpc.Client
		if server {
			from = rpc.Server
		}
		fr, n, err := Codec{}.Decode(b, from, fuzzMax)
		if err != nil {
			if errors.Is(err, rpc.ErrNeedMore) && n <= len(b) {
				t.Fatalf("need more with hint %d for %d bytes", n, len(b))
			}
			return
		}
		if n < headerLen || n > len(b) || !bytes.Equal(fr.Bytes(), b[:n]) {
			t.Fatalf("frame of %d bytes from %d", n, len(b))
		}
		for i := range n {
			if _, m, err := (Codec{}).Decode(b[:i], from, fuzzMax); !errors.Is(err, rpc.ErrNeedMore) || m <= i || m > n {
				t.Fatalf("prefix %d of %d: hint %d, %v", i, n, m, err)
			}
		}
		// Into a frame given back (rpc.Reuser) that held another message,
		// attachments decoded: the same frame as a fresh decode.
		spare, _, _ := Codec{}.Decode(request(9, reqFlags, "s", "", "m", "", nil, "group", "gold"), rpc.Client, fuzzMax)
		spare.Attr(AttrGroup)
		again, n2, err := Codec{}.DecodeInto(spare, b, from, fuzzMax)
		if err != nil || n2 != n || again.Kind() != fr.Kind() || !bytes.Equal(again.Bytes(), fr.Bytes()) {
			t.Fatalf("into a spare: %d bytes, kind %v, %v; fresh: %d, %v", n2, again.Kind(), err, n, fr.Kind())
		}
		for _, name := range []string{AttrService, AttrInterface, AttrMethod, AttrGroup, AttrVersion, AttrDubboVersion, "x"} {
			if a, b := fr.Attr(name), again.Attr(name); !bytes.Equal(a, b) {
				t.Fatalf("attribute %s: %q fresh, %q into a spare", name, a, b)
			}
		}
		fr.SetID(0x0102030405060708)
		if fr.ID() != 0x0102030405060708 {
			t.Fatalf("id %x after SetID", fr.ID())
		}
	})
}
