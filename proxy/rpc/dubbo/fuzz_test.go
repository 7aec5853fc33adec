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
// every attribute can be asked for, and an id set is the id read.
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
		for _, name := range []string{AttrService, AttrInterface, AttrMethod, AttrGroup, AttrVersion, AttrDubboVersion, "x"} {
			fr.Attr(name)
		}
		fr.SetID(0x0102030405060708)
		if fr.ID() != 0x0102030405060708 {
			t.Fatalf("id %x after SetID", fr.ID())
		}
	})
}
