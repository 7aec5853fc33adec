package rocketmq

import (
	"bytes"
	"errors"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// FuzzDecode: no panic on any input; a frame is a prefix of the input;
// every proper prefix needs more with a hint above it and not past the
// frame; attributes can be asked for; an id set is the id read, and the
// frame with it decodes again to the same code and kind; route rewriting
// never breaks a frame.
func FuzzDecode(f *testing.F) {
	f.Add(jsonCmd(CodePullMessage, 1, 0, map[string]string{"topic": "t", "bname": "broker-a"}, nil))
	f.Add(jsonCmd(CodeAckMessage, 2, 0, map[string]string{"extraInfo": "0 1 2 3 4 broker-b 1 9"}, nil))
	f.Add(jsonCmd(CodeSendMessageV2, -3, flagOneway, map[string]string{"b": "t", "n": "b"}, []byte("m")))
	f.Add(Response(4, 0, "", nil, []byte(`{"brokerDatas":[{"brokerAddrs":{0:"1.2.3.4:5"}}]}`)))
	f.Add(binCmd(CodeQueryConsumerOffset, 5, 0, "r", [][2]string{{"topic", "t"}}, []byte{1}))
	const max = 4096
	route := jsonCmd(CodeGetRouteInfoByTopic, 1, 0, nil, nil)
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
		for _, name := range []string{AttrService, AttrGroup, AttrMethod, AttrBrokerName, "x"} {
			fr.Attr(name)
		}
		f := fr.(*Frame)
		f.Remark()
		if f.Kind() == rpc.Response {
			rq, _, _ := Codec{}.Decode(route, rpc.Client, max)
			out := RouteRewriter("10.0.0.1:9876")(rq, fr)
			if _, _, err := (Codec{}).Decode(out, rpc.Server, 1<<20); err != nil {
				t.Fatalf("rewritten route reply does not decode: %v", err)
			}
		}
		code, kind := f.Code(), f.Kind()
		f.SetID(0x81020304)
		g, _, err := Codec{}.Decode(f.Bytes(), rpc.Client, 1<<20)
		if err != nil || g.ID() != 0x81020304 || g.(*Frame).Code() != code || g.Kind() != kind {
			t.Fatalf("after SetID: %v", err)
		}
		Codec{}.ErrorReply(fr, errors.New("x"))
	})
}
