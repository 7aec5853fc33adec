package bolt

import (
	"bytes"
	"errors"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// FuzzDecode: no panic on any input; a frame is a prefix of the input;
// every proper prefix needs more with a hint above it and not past the
// frame; attributes can be asked for; an id set is the id read.
func FuzzDecode(f *testing.F) {
	f.Add(command(1, typeRequest, cmdRequest, 1, headers("service", "com.weir.Pay:1.0"), []byte{1}, false))
	f.Add(command(2, typeRequest, cmdRequest, 2, headers("sofa_head_method_name", "m"), nil, true))
	f.Add(command(1, typeRequest, cmdHeartbeat, 3, nil, nil, false))
	f.Add(command(2, typeResponse, cmdResponse, 4, nil, []byte{1, 2}, false))
	const max = 4096
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 2*max {
			return
		}
		fr, n, err := Codec{}.Decode(b, rpc.Client, max)
		if err != nil {
			if errors.Is(err, rpc.ErrNeedMore) && n <= len(b) {
				t.Fatalf("need more with hint %d for %d bytes", n, len(b))
			}
			return
		}
		if n > len(b) || !bytes.Equal(fr.Bytes(), b[:n]) {
			t.Fatalf("frame of %d bytes from %d", n, len(b))
		}
		for i := range n {
			if _, m, err := (Codec{}).Decode(b[:i], rpc.Client, max); !errors.Is(err, rpc.ErrNeedMore) || m <= i || m > n {
				t.Fatalf("prefix %d of %d: hint %d, %v", i, n, m, err)
			}
		}
		for _, name := range []string{AttrService, AttrMethod, AttrClass, "x"} {
			fr.Attr(name)
		}
		fr.SetID(0x01020304)
		if fr.ID() != 0x01020304 {
			t.Fatalf("id %x after SetID", fr.ID())
		}
		if fr.Kind() == rpc.Heartbeat {
			Codec{}.HeartbeatReply(fr)
		}
		Codec{}.ErrorReply(fr, errors.New("x"))
	})
}
