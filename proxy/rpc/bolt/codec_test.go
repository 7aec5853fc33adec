package bolt

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// headers encodes SOFA's simple map.
func headers(kvs ...string) []byte {
	var b []byte
	for _, s := range kvs {
		b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return b
}

const className = "com.alipay.sofa.rpc.core.request.SofaRequest"

// command builds a v1 or v2 request (typ 1 or 2) or response (typ 0);
// crc adds a CRC32 to a v2 frame.
func command(version byte, typ byte, cmd uint16, id uint32, hdr, content []byte, crc bool) []byte {
	l := v1Request
	switch {
	case version == 1 && typ == typeResponse:
		l = v1Response
	case version == 2 && typ == typeResponse:
		l = v2Response
	case version == 2:
		l = v2Request
	}
	b := make([]byte, l.size)
	b[0] = version
	if version == 2 {
		b[1] = 2 // ver1
		if crc {
			b[l.swtch] = 1
		}
	}
	b[l.typ] = typ
	binary.BigEndian.PutUint16(b[l.cmd:], cmd)
	binary.BigEndian.PutUint32(b[l.id:], id)
	b[l.codec] = 1
	cls := className
	if typ == typeResponse {
		cls = ""
	}
	binary.BigEndian.PutUint16(b[l.lens:], uint16(len(cls)))
	binary.BigEndian.PutUint16(b[l.lens+2:], uint16(len(hdr)))
	binary.BigEndian.PutUint32(b[l.lens+4:], uint32(len(content)))
	b = append(b, cls...)
	b = append(b, hdr...)
	b = append(b, content...)
	if crc {
		b = binary.BigEndian.AppendUint32(b, crc32.ChecksumIEEE(b))
	}
	return b
}

func decode(t *testing.T, b []byte) *Frame {
	t.Helper()
	f, n, err := Codec{}.Decode(b, rpc.Client, 1<<20)
	if err != nil || n != len(b) {
		t.Fatalf("decode: n=%d of %d: %v", n, len(b), err)
	}
	return f.(*Frame)
}

func TestRequestAttributes(t *testing.T) {
	for _, version := range []byte{1, 2} {
		b := command(version, typeRequest, cmdRequest, 9, headers("service", "com.weir.Pay:1.0", "sofa_head_method_name", "pay", "zone", "gz"), []byte{0x4f, 1, 2}, version == 2)
		f := decode(t, b)
		if f.Kind() != rpc.Request || f.ID() != 9 {
			t.Fatalf("v%d: kind %v id %d", version, f.Kind(), f.ID())
		}
		for name, want := range map[string]string{AttrService: "com.weir.Pay:1.0", AttrMethod: "pay", AttrClass: className, "zone": "gz"} {
			if got := string(f.Attr(name)); got != want {
				t.Errorf("v%d: Attr(%q) = %q, want %q", version, name, got, want)
			}
		}
		f.SetID(77)
		if f.ID() != 77 {
			t.Fatalf("v%d: id %d after SetID", version, f.ID())
		}
		if version == 2 {
			n := len(b) - 4
			if binary.BigEndian.Uint32(b[n:]) != crc32.ChecksumIEEE(b[:n]) {
				t.Fatal("v2: CRC32 not recomputed after SetID")
			}
		}
	}
}

func TestKindsAndReplies(t *testing.T) {
	hb := decode(t, command(1, typeRequest, cmdHeartbeat, 5, nil, nil, false))
	if hb.Kind() != rpc.Heartbeat {
		t.Fatalf("heartbeat kind %v", hb.Kind())
	}
	ack := decode(t, Codec{}.HeartbeatReply(hb))
	if ack.Kind() != rpc.Response || ack.ID() != 5 || binary.BigEndian.Uint16(ack.raw[ack.l.cmd:]) != cmdHeartbeat {
		t.Fatalf("heartbeat ack % x", ack.raw)
	}
	if f := decode(t, command(2, typeOneway, cmdRequest, 6, nil, []byte{1}, false)); f.Kind() != rpc.Oneway {
		t.Fatalf("oneway kind %v", f.Kind())
	}
	req := decode(t, command(2, typeRequest, cmdRequest, 8, nil, []byte{1}, true))
	e := decode(t, Codec{}.ErrorReply(req, errors.New("no endpoint")))
	if e.Kind() != rpc.Response || e.ID() != 8 || (Codec{}).Status(e) != "2" {
		t.Fatalf("error reply % x", e.raw)
	}
	if s := (Codec{}).Status(decode(t, Codec{}.ErrorReply(req, rpc.ErrResponseTimeout))); s != "7" {
		t.Fatalf("timeout status %s", s)
	}
	if s := (Codec{}).Status(decode(t, command(1, typeResponse, cmdResponse, 1, nil, []byte{1}, false))); s != "ok" {
		t.Fatalf("success status %s", s)
	}
}

func TestFraming(t *testing.T) {
	b := command(1, typeRequest, cmdRequest, 1, headers("service", "x"), []byte{1, 2, 3}, false)
	for i := 0; i < len(b); i++ {
		_, n, err := Codec{}.Decode(b[:i], rpc.Client, 1<<20)
		if !errors.Is(err, rpc.ErrNeedMore) || n <= i || n > len(b) {
			t.Fatalf("prefix %d: n=%d, %v", i, n, err)
		}
	}
	for _, bad := range [][]byte{{3}, {1, 7}, {2, 2, 9}} {
		if _, _, err := (Codec{}).Decode(bad, rpc.Client, 1<<20); !errors.Is(err, ErrNotBolt) {
			t.Errorf("% x: %v", bad, err)
		}
	}
	big := command(1, typeRequest, cmdRequest, 1, nil, nil, false)
	binary.BigEndian.PutUint32(big[18:], 1<<30)
	if _, _, err := (Codec{}).Decode(big, rpc.Client, 1<<20); !errors.Is(err, rpc.ErrFrameTooLarge) {
		t.Fatalf("large: %v", err)
	}
}

// TestBusy: SERVER_THREADPOOL_BUSY is the retryable "busy"; the agent's
// timeout reply (status 7 for a route's timeout too) is not.
func TestBusy(t *testing.T) {
	for _, version := range []byte{1, 2} {
		req := decode(t, command(version, typeRequest, cmdRequest, 8, nil, []byte{1}, false))
		if !(Codec{}).Busy(decode(t, response(req, cmdResponse, StatusThreadPoolBusy))) {
			t.Fatalf("v%d: status 4 is not busy", version)
		}
		e := decode(t, Codec{}.ErrorReply(req, rpc.ErrRequestTimeout))
		if (Codec{}).Busy(e) || (Codec{}).Status(e) != "7" {
			t.Fatalf("v%d: route timeout reply: busy %v, status %s", version, (Codec{}).Busy(e), (Codec{}).Status(e))
		}
	}
}
