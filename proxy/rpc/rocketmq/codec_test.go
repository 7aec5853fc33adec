package rocketmq

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// jsonCmd encodes a command the way RocketMQ's clients do (JSON header),
// with encoding/json rather than the codec's own writer.
func jsonCmd(code, opaque, flag int32, ext map[string]string, body []byte) []byte {
	h, err := json.Marshal(map[string]any{
		"code": code, "language": "GO", "version": 317, "opaque": opaque,
		"flag": flag, "remark": "", "extFields": ext,
	})
	if err != nil {
		panic(err)
	}
	return frame(JSON, h, body)
}

// binCmd encodes a ROCKETMQ binary-header command.
func binCmd(code int16, opaque, flag int32, remark string, ext [][2]string, body []byte) []byte {
	var h []byte
	h = binary.BigEndian.AppendUint16(h, uint16(code))
	h = append(h, 9) // language GO
	h = binary.BigEndian.AppendUint16(h, 317)
	h = binary.BigEndian.AppendUint32(h, uint32(opaque))
	h = binary.BigEndian.AppendUint32(h, uint32(flag))
	h = binary.BigEndian.AppendUint32(h, uint32(len(remark)))
	h = append(h, remark...)
	var e []byte
	for _, kv := range ext {
		e = binary.BigEndian.AppendUint16(e, uint16(len(kv[0])))
		e = append(e, kv[0]...)
		e = binary.BigEndian.AppendUint32(e, uint32(len(kv[1])))
		e = append(e, kv[1]...)
	}
	h = binary.BigEndian.AppendUint32(h, uint32(len(e)))
	h = append(h, e...)
	return frame(RocketMQ, h, body)
}

func decode(t *testing.T, b []byte) *Frame {
	t.Helper()
	f, n, err := Codec{}.Decode(b, rpc.Client, 1<<20)
	if err != nil || n != len(b) {
		t.Fatalf("decode: %d of %d bytes, %v", n, len(b), err)
	}
	return f.(*Frame)
}

func TestDecodeJSONRequest(t *testing.T) {
	b := jsonCmd(CodePullMessage, 7, 0, map[string]string{
		"topic": "orders", "consumerGroup": "g1", "queueId": "3", "bname": "broker-b",
		"subscription": "tag\u0001x",
	}, nil)
	f := decode(t, b)
	if f.Kind() != rpc.Request || f.ID() != 7 || f.Code() != CodePullMessage {
		t.Fatalf("kind %v id %d code %d", f.Kind(), f.ID(), f.Code())
	}
	for name, want := range map[string]string{
		AttrService: "orders", AttrTopic: "orders", AttrGroup: "g1", AttrMethod: "PULL_MESSAGE",
		AttrCode: "11", AttrBrokerName: "broker-b", "queueId": "3", "subscription": "tag\u0001x",
	} {
		if got := string(f.Attr(name)); got != want {
			t.Errorf("Attr(%s) = %q, want %q", name, got, want)
		}
	}
}

func TestDecodeKinds(t *testing.T) {
	if f := decode(t, jsonCmd(CodeUpdateConsumerOffset, 1, flagOneway, nil, nil)); f.Kind() != rpc.Oneway {
		t.Errorf("oneway flag: %v", f.Kind())
	}
	if f := decode(t, jsonCmd(0, 1, flagResponse, nil, []byte("x"))); f.Kind() != rpc.Response || string(f.Body()) != "x" {
		t.Errorf("response: %v %q", f.Kind(), f.Body())
	}
	if f := decode(t, jsonCmd(3, 1, flagResponse, nil, nil)); (Codec{}).Status(f) != "3" {
		t.Errorf("status %q", (Codec{}).Status(f))
	}
}

func TestBrokerNameSources(t *testing.T) {
	v2 := decode(t, jsonCmd(CodeSendMessageV2, 1, 0, map[string]string{"a": "pg", "b": "orders", "n": "broker-a"}, []byte("m")))
	if string(v2.Attr(AttrTopic)) != "orders" || string(v2.Attr(AttrGroup)) != "pg" || string(v2.Attr(AttrBrokerName)) != "broker-a" {
		t.Errorf("v2 send: topic %q group %q broker %q", v2.Attr(AttrTopic), v2.Attr(AttrGroup), v2.Attr(AttrBrokerName))
	}
	ack := decode(t, jsonCmd(CodeAckMessage, 1, 0, map[string]string{"extraInfo": "0 1700000000000 60000 0 0 broker-b 2 17"}, nil))
	if got := string(ack.Attr(AttrBrokerName)); got != "broker-b" {
		t.Errorf("ack broker from extraInfo: %q", got)
	}
	short := decode(t, jsonCmd(CodeAckMessage, 1, 0, map[string]string{"extraInfo": "0 1 2"}, nil))
	if got := short.Attr(AttrBrokerName); got != nil {
		t.Errorf("short extraInfo: %q", got)
	}
	pull := decode(t, jsonCmd(CodePullMessage, 1, 0, map[string]string{"extraInfo": "0 1 2 3 4 broker-b 2 17"}, nil))
	if got := pull.Attr(AttrBrokerName); got != nil {
		t.Errorf("extraInfo read for a pull: %q", got)
	}
}

func TestDecodeBinary(t *testing.T) {
	b := binCmd(CodeQueryConsumerOffset, -5, 0, "r", [][2]string{{"topic", "t"}, {"bname", "broker-a"}}, []byte{1, 2})
	f := decode(t, b)
	if f.ID() != uint64(uint32(0xfffffffb)) || string(f.Attr(AttrBrokerName)) != "broker-a" || f.Remark() != "r" || !bytes.Equal(f.Body(), []byte{1, 2}) {
		t.Fatalf("id %x broker %q remark %q body %v", f.ID(), f.Attr(AttrBrokerName), f.Remark(), f.Body())
	}
	f.SetID(0x01020304)
	g := decode(t, f.Bytes())
	if g.ID() != 0x01020304 || string(g.Attr(AttrTopic)) != "t" {
		t.Fatalf("after SetID: id %x topic %q", g.ID(), g.Attr(AttrTopic))
	}
}

// TestSetIDJSON: shorter ids are padded in place; a longer one rebuilds
// the frame, which stays a valid command with the same header and body,
// and later ids of any length fit in place.
func TestSetIDJSON(t *testing.T) {
	b := jsonCmd(CodeSendMessage, 123456, 0, map[string]string{"topic": "t"}, []byte("body"))
	f := decode(t, b)
	f.SetID(5)
	if !bytes.Equal(f.Bytes(), b) && len(f.Bytes()) != len(b) {
		t.Fatal("shorter id changed the length")
	}
	for _, id := range []uint64{5, 0xffffffff, 1 << 31, 42, 2147483647} {
		f.SetID(id)
		var h struct {
			Opaque    int32             `json:"opaque"`
			ExtFields map[string]string `json:"extFields"`
		}
		g := decode(t, f.Bytes())
		if err := json.Unmarshal(g.raw[8:g.bodyAt], &h); err != nil {
			t.Fatalf("id %d: header %q: %v", id, g.raw[8:g.bodyAt], err)
		}
		if g.ID() != id || uint64(uint32(h.Opaque)) != id || h.ExtFields["topic"] != "t" || string(g.Body()) != "body" || string(f.Attr(AttrTopic)) != "t" {
			t.Fatalf("id %d: got %d/%d, ext %v, body %q", id, g.ID(), h.Opaque, h.ExtFields, g.Body())
		}
	}
}

func TestMalformed(t *testing.T) {
	for name, b := range map[string][]byte{
		"serialize type":    append([]byte{0, 0, 0, 4, 2, 0, 0, 0}, []byte{}...),
		"header past frame": {0, 0, 0, 4, 0, 0, 0, 9},
		"not json":          frame(JSON, []byte("{code:1}"), nil),
		"no opaque":         frame(JSON, []byte(`{"code":1}`), nil),
		"trailing":          frame(JSON, []byte(`{"code":1,"opaque":1}x`), nil),
		"big code":          frame(JSON, []byte(`{"code":99999999999,"opaque":1}`), nil),
		"short binary":      frame(RocketMQ, []byte{0, 1}, nil),
	} {
		if _, _, err := (Codec{}).Decode(b, rpc.Client, 1<<20); !errors.Is(err, ErrNotRocketMQ) {
			t.Errorf("%s: %v", name, err)
		}
	}
	big := []byte{0x10, 0, 0, 0, 0, 0, 0, 10}
	if _, _, err := (Codec{}).Decode(big, rpc.Client, 1<<20); !errors.Is(err, rpc.ErrFrameTooLarge) {
		t.Errorf("large: %v", err)
	}
}

func TestErrorReply(t *testing.T) {
	req := decode(t, jsonCmd(CodeSendMessage, 77, 0, nil, nil))
	f := decode(t, Codec{}.ErrorReply(req, errors.New(`no "endpoint"`)))
	if f.Kind() != rpc.Response || f.ID() != 77 || f.Code() != CodeSystemError || f.Remark() != `weir: no "endpoint"` {
		t.Fatalf("kind %v id %d code %d remark %q", f.Kind(), f.ID(), f.Code(), f.Remark())
	}
	if (Codec{}).ErrorReply(nil, errors.New("x")) != nil {
		t.Fatal("reply without a request")
	}
}

func TestRouteRewriter(t *testing.T) {
	// The Java name server writes broker ids as bare numbers.
	body := []byte(`{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911",1:"10.0.0.2:10911"},"brokerName":"broker-a","cluster":"c"},` +
		`{"brokerAddrs":{"0":"10.0.0.3:10911"},"brokerName":"broker-b","cluster":"c"}],"queueDatas":[{"brokerName":"broker-a","perm":6}]}`)
	req := decode(t, jsonCmd(CodeGetRouteInfoByTopic, 9, 0, map[string]string{"topic": "t"}, nil))
	resp := decode(t, Response(9, CodeSuccess, "", nil, body))
	got := decode(t, RouteRewriter("10.96.0.9:9876")(req, resp))
	want := `{"brokerDatas":[{"brokerAddrs":{0:"10.96.0.9:9876",1:"10.96.0.9:9876"},"brokerName":"broker-a","cluster":"c"},` +
		`{"brokerAddrs":{"0":"10.96.0.9:9876"},"brokerName":"broker-b","cluster":"c"}],"queueDatas":[{"brokerName":"broker-a","perm":6}]}`
	if string(got.Body()) != want || got.ID() != 9 {
		t.Fatalf("rewritten:\n%s\nwant\n%s", got.Body(), want)
	}
	// Other answers, failed ones and malformed bodies go back as read.
	for i, c := range []struct{ req, resp []byte }{
		{jsonCmd(CodePullMessage, 9, 0, nil, nil), Response(9, CodeSuccess, "", nil, body)},
		{jsonCmd(CodeGetRouteInfoByTopic, 9, 0, nil, nil), Response(9, 17, "no topic", nil, body)},
		{jsonCmd(CodeGetRouteInfoByTopic, 9, 0, nil, nil), Response(9, CodeSuccess, "", nil, []byte(`{"brokerAddrs":{0:1}}`))},
	} {
		r := decode(t, c.resp)
		if out := RouteRewriter("x:1")(decode(t, c.req), r); !bytes.Equal(out, c.resp) {
			t.Errorf("case %d rewritten: %s", i, out)
		}
	}
}

func ExampleRouteRewriter() {
	body := []byte(`{"brokerDatas":[{"brokerAddrs":{0:"10.0.0.1:10911"},"brokerName":"a"}]}`)
	f, _, _ := Codec{}.Decode(Response(1, 0, "", nil, body), rpc.Server, 1<<20)
	r, _, _ := Codec{}.Decode(jsonCmd(CodeGetRouteInfoByTopic, 1, 0, nil, nil), rpc.Client, 1<<20)
	out, _, _ := Codec{}.Decode(RouteRewriter("10.96.0.9:9876")(r, f), rpc.Server, 1<<20)
	fmt.Println(string(out.(*Frame).Body()))
	// Output: {"brokerDatas":[{"brokerAddrs":{0:"10.96.0.9:9876"},"brokerName":"a"}]}
}

func TestServerRequestReply(t *testing.T) {
	notify := decode(t, jsonCmd(40, 9, flagOneway, map[string]string{"consumerGroup": "g"}, nil))
	if b := (Codec{}).ServerRequestReply(notify); b != nil {
		t.Fatalf("one-way notification answered: %q", b)
	}
	info := decode(t, jsonCmd(307, 10, 0, nil, nil))
	f := decode(t, Codec{}.ServerRequestReply(info))
	if f.Kind() != rpc.Response || f.ID() != 10 || f.Code() != CodeNotSupported {
		t.Fatalf("answer to a broker's request: kind %v id %d code %d", f.Kind(), f.ID(), f.Code())
	}
}

func TestChangeInvisibleBroker(t *testing.T) {
	f := decode(t, jsonCmd(CodeChangeInvisibleTime, 1, 0, map[string]string{"extraInfo": "0 1 2 3 4 broker-c 2 17", "topic": "t"}, nil))
	if got := string(f.Attr(AttrBrokerName)); got != "broker-c" || string(f.Attr(AttrMethod)) != "CHANGE_MESSAGE_INVISIBLETIME" {
		t.Fatalf("broker %q method %q", got, f.Attr(AttrMethod))
	}
}

func TestBodyBrokerName(t *testing.T) {
	lock := decode(t, jsonCmd(CodeLockBatchMQ, 1, 0, nil, []byte(`{"consumerGroup":"g","clientId":"c","mqSet":[{"topic":"t","brokerName": "broker-b","queueId":1}]}`)))
	batch := decode(t, jsonCmd(CodeBatchAckMessage, 2, 0, nil, []byte(`{"brokerName":"broker-a","acks":[]}`)))
	named := decode(t, jsonCmd(CodeUnlockBatchMQ, 3, 0, map[string]string{"bname": "broker-c"}, []byte(`{"mqSet":[{"brokerName":"broker-b"}]}`)))
	none := decode(t, jsonCmd(CodeLockBatchMQ, 4, 0, nil, []byte(`{"mqSet":[]}`)))
	pull := decode(t, jsonCmd(CodePullMessage, 5, 0, nil, []byte(`{"brokerName":"broker-a"}`)))
	for f, want := range map[*Frame]string{lock: "broker-b", batch: "broker-a", named: "broker-c", none: "", pull: ""} {
		if got := string(f.Attr(AttrBrokerName)); got != want {
			t.Errorf("code %d: broker %q, want %q", f.Code(), got, want)
		}
	}
}

// TestBusyAndRetryable: SYSTEM_BUSY is the retryable "busy"; a request
// naming its broker may not move to another, a send or a request naming
// none may.
func TestBusyAndRetryable(t *testing.T) {
	if !(Codec{}).Busy(decode(t, Response(3, CodeSystemBusy, "busy", nil, nil))) {
		t.Fatal("SYSTEM_BUSY is not busy")
	}
	if (Codec{}).Busy(decode(t, Response(3, CodeSystemError, "x", nil, nil))) {
		t.Fatal("SYSTEM_ERROR is busy")
	}
	for _, tc := range []struct {
		code int32
		ext  map[string]string
		want bool
	}{
		{CodePullMessage, map[string]string{"topic": "t", "bname": "broker-a"}, false},
		{CodeAckMessage, map[string]string{"topic": "t", "extraInfo": "0 1 2 3 4 broker-b 5 6"}, false},
		{CodeSendMessageV2, map[string]string{"b": "t", "n": "broker-a"}, true},
		{CodeGetRouteInfoByTopic, map[string]string{"topic": "t"}, true},
		{CodeHeartbeat, nil, true},
	} {
		f := decode(t, jsonCmd(tc.code, 1, 0, tc.ext, nil))
		if got := (Codec{}).Retryable(f); got != tc.want {
			t.Errorf("code %d %v: retryable %v, want %v (brokerName %q)", tc.code, tc.ext, got, tc.want, f.Attr(AttrBrokerName))
		}
	}
}
