package h2

import (
	"bytes"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weir-mesh/weir/proxy/route"
)

// FuzzFrameProxy sends a client's frames, built from the input, to the
// frame engine over a real loopback connection, while another client
// keeps one connection through the same proxy (and the same pooled
// upstream connection) and makes a request per input. Whatever the
// frames hold (any type, flags, stream id and payload: malformed
// HEADERS, HPACK garbage, CONTINUATION without an end, WINDOW_UPDATE
// overflows, SETTINGS with bad values, DATA beyond the window), the agent
// must not crash, and the other client's connection must stay up and its
// request answered correctly.
//
// The input is read as a list of frames: type, flags, stream id (0-7, so
// idle, open, closed and even ids all occur), payload length, payload.
// The seeds are well-formed requests: GET, POST with a body and
// trailers, a header block split over CONTINUATION, control frames.
func FuzzFrameProxy(f *testing.F) {
	web, _ := echoServer(f, "web")
	snap := mustBuild(f, route.Config{Services: []route.Service{
		{Name: "front", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(web)},
	}})
	p := newTestProxy(f, snap, Options{Engine: EngineFrames})
	good, dials := h2cClient(f, p.addr)

	var hb bytes.Buffer
	enc := hpack.NewEncoder(&hb)
	block := func(fields ...string) []byte {
		hb.Reset()
		for i := 0; i+1 < len(fields); i += 2 {
			enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
		}
		return append([]byte(nil), hb.Bytes()...)
	}
	frame := func(t http2.FrameType, flags http2.Flags, id byte, payload []byte) []byte {
		return append([]byte{byte(t), byte(flags), id, byte(len(payload))}, payload...)
	}
	get := block(":method", "GET", ":scheme", "http", ":authority", "svc.test", ":path", "/fuzz")
	post := block(":method", "POST", ":scheme", "http", ":authority", "svc.test", ":path", "/up", "content-type", "application/grpc")
	f.Add(frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 1, get))
	f.Add(bytes.Join([][]byte{
		frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 3, post),
		frame(http2.FrameData, 0, 3, []byte("hello")),
		frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders|http2.FlagHeadersEndStream, 3, block("x-trailer", "t")),
	}, nil))
	f.Add(bytes.Join([][]byte{
		frame(http2.FrameHeaders, http2.FlagHeadersEndStream, 5, get[:3]),
		frame(http2.FrameContinuation, http2.FlagHeadersEndHeaders, 5, get[3:]),
	}, nil))
	f.Add(bytes.Join([][]byte{
		frame(http2.FrameSettings, 0, 0, []byte{0, 4, 0x7f, 0xff, 0xff, 0xff}),
		frame(http2.FramePing, 0, 0, []byte("12345678")),
		frame(http2.FrameWindowUpdate, 0, 0, []byte{0x7f, 0xff, 0xff, 0xff}),
		frame(http2.FrameHeaders, http2.FlagHeadersEndHeaders, 1, get),
		frame(http2.FrameRSTStream, 0, 1, []byte{0, 0, 0, 8}),
	}, nil))

	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := net.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var out bytes.Buffer
		out.WriteString(http2.ClientPreface)
		fr := http2.NewFramer(&out, nil)
		fr.WriteSettings()
		for len(data) >= 4 {
			typ, flags, id, n := http2.FrameType(data[0]%10), http2.Flags(data[1]), uint32(data[2]%8), int(data[3])
			data = data[4:]
			n = min(n, len(data))
			fr.WriteRawFrame(typ, flags, id, data[:n])
			data = data[n:]
		}
		go io.Copy(io.Discard, c)
		c.SetWriteDeadline(time.Now().Add(5 * time.Second))
		c.Write(out.Bytes())

		res, err := good.Get("http://svc.test/good")
		if err != nil {
			t.Fatalf("the other connection's request failed: %v", err)
		}
		if body := readAll(t, res); res.StatusCode != 200 || !bytes.Contains([]byte(body), []byte(`"URI":"/good"`)) {
			t.Fatalf("the other connection's request: %d %q", res.StatusCode, body)
		}
		if n := dials.Load(); n != 1 {
			t.Fatalf("the other client dialled %d times: its connection broke", n)
		}
	})
}
