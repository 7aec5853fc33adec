package h2

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/interop/grpc_testing"

	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// rawClient speaks HTTP/2 frame by frame, to see what the proxy sends
// (GOAWAYs, PINGs) and to send what a well-behaved client would not.
type rawClient struct {
	c      net.Conn
	fr     *http2.Framer
	hbuf   bytes.Buffer
	enc    *hpack.Encoder
	status map[uint32]string
	data   map[uint32]string
	ended  map[uint32]bool
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &rawClient{c: c, fr: http2.NewFramer(c, c), status: map[uint32]string{}, data: map[uint32]string{}, ended: map[uint32]bool{}}
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
		t.Fatal(err)
	}
	if err := rc.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return rc
}

func (rc *rawClient) get(t *testing.T, id uint32, path string) {
	t.Helper()
	if _, err := rc.c.Write(rc.getFrame(id, path)); err != nil {
		t.Fatal(err)
	}
}

// getFrame is the HEADERS frame of a GET on stream id, for a caller that
// writes it with other frames at once.
func (rc *rawClient) getFrame(id uint32, path string) []byte {
	rc.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "shop.test"}, {":path", path}} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	var b bytes.Buffer
	http2.NewFramer(&b, nil).WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: rc.hbuf.Bytes(), EndStream: true, EndHeaders: true})
	return b.Bytes()
}

// pingAck is the answer to a PING carrying data.
func pingAck(data [8]byte) []byte {
	var b bytes.Buffer
	http2.NewFramer(&b, nil).WritePing(true, data)
	return b.Bytes()
}

// until reads frames, answering SETTINGS and recording streams, until one
// satisfies match; it fails the test after 5s or on a read error.
func (rc *rawClient) until(t *testing.T, what string, match func(http2.Frame) bool) http2.Frame {
	t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		rc.record(f)
		if match(f) {
			return f
		}
	}
}

// untilEOF reads and records frames until the proxy closes the
// connection; it fails the test after 5s or on another read error.
func (rc *rawClient) untilEOF(t *testing.T) {
	t.Helper()
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Errorf("connection ended with %v, want EOF", err)
			}
			return
		}
		rc.record(f)
	}
}

func (rc *rawClient) record(f http2.Frame) {
	switch f := f.(type) {
	case *http2.SettingsFrame:
		if !f.IsAck() {
			rc.fr.WriteSettingsAck()
		}
	case *http2.MetaHeadersFrame:
		if s := f.PseudoValue("status"); s != "" {
			rc.status[f.StreamID] = s
		}
		rc.ended[f.StreamID] = rc.ended[f.StreamID] || f.StreamEnded()
	case *http2.DataFrame:
		rc.data[f.StreamID] += string(f.Data())
		rc.ended[f.StreamID] = rc.ended[f.StreamID] || f.StreamEnded()
	}
}

func (rc *rawClient) streamDone(id uint32) func(http2.Frame) bool {
	return func(http2.Frame) bool { return rc.ended[id] }
}

// TestDrainTwoStepGoAway drives a drain frame by frame, the client acting
// as h2load does: it opens a stream when another ends, but only sends it
// after the read that brought the end, together with its answers to the
// PINGs in that read. A GOAWAY arriving in such a read makes nghttp2 drop
// the request as refused (it never retries it), so the drain starts with a
// barrier PING and holds the server's frames until it is answered; the
// GOAWAY then comes before anything else.
func TestDrainTwoStepGoAway(t *testing.T) {
	started, release := make(chan struct{}), make(chan struct{})
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			close(started)
			<-release
		}
		io.WriteString(w, "done "+r.URL.Path)
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{DrainPingTimeout: 10 * time.Second})
	rc := dialRaw(t, p.addr)
	rc.get(t, 1, "/slow")
	<-started
	rc.get(t, 3, "/fast")
	rc.until(t, "stream 3's answer", rc.streamDone(3))
	close(p.draining)

	// The barrier: a PING, then nothing until it is answered, not even
	// stream 1's answer, ready meanwhile.
	noGoAway := func(f http2.Frame) {
		if _, ok := f.(*http2.GoAwayFrame); ok {
			t.Fatal("GOAWAY before the barrier PING was answered")
		}
	}
	f := rc.until(t, "the barrier PING", func(f http2.Frame) bool {
		noGoAway(f)
		p, ok := f.(*http2.PingFrame)
		return ok && !p.IsAck()
	})
	barrier := f.(*http2.PingFrame).Data
	close(release)
	rc.c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if f, err := rc.fr.ReadFrame(); err == nil {
		t.Fatalf("%v written before the barrier PING was answered", f.Header())
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatal(err)
	}

	// The answer, with stream 5 that the end of stream 3 prompted.
	if _, err := rc.c.Write(append(pingAck(barrier), rc.getFrame(5, "/after-barrier")...)); err != nil {
		t.Fatal(err)
	}

	// Step one: GOAWAY naming the highest stream id, before any stream's
	// frame, and a PING.
	f = rc.until(t, "the first GOAWAY", func(f http2.Frame) bool {
		if f.Header().StreamID != 0 {
			t.Fatalf("%v before the first GOAWAY", f.Header())
		}
		_, ok := f.(*http2.GoAwayFrame)
		return ok
	})
	if ga := f.(*http2.GoAwayFrame); ga.LastStreamID != math.MaxInt32 || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("first GOAWAY: last stream %d, code %v", ga.LastStreamID, ga.ErrCode)
	}
	f = rc.until(t, "the drain PING", func(f http2.Frame) bool { p, ok := f.(*http2.PingFrame); return ok && !p.IsAck() })
	ping := f.(*http2.PingFrame).Data

	// Step two, once the PING is answered: GOAWAY naming the last stream,
	// counting stream 7, which the client sent before it read the GOAWAY
	// (right before the answer, in the same write).
	if _, err := rc.c.Write(append(rc.getFrame(7, "/before-answer"), pingAck(ping)...)); err != nil {
		t.Fatal(err)
	}
	f = rc.until(t, "the final GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if ga := f.(*http2.GoAwayFrame); ga.LastStreamID != 7 || ga.ErrCode != http2.ErrCodeNo {
		t.Fatalf("final GOAWAY: last stream %d, code %v", ga.LastStreamID, ga.ErrCode)
	}

	// Every stream is served, then the connection closes.
	rc.untilEOF(t)
	for id, path := range map[uint32]string{1: "/slow", 3: "/fast", 5: "/after-barrier", 7: "/before-answer"} {
		if !rc.ended[id] || rc.status[id] != "200" || rc.data[id] != "done "+path {
			t.Errorf("stream %d: ended %v, %s %q", id, rc.ended[id], rc.status[id], rc.data[id])
		}
	}
}

func TestDrainWithoutPingAnswer(t *testing.T) {
	up, _ := echoServer(t, "up")
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{DrainPingTimeout: 50 * time.Millisecond})
	rc := dialRaw(t, p.addr)
	rc.get(t, 1, "/x")
	rc.until(t, "the answer", rc.streamDone(1))
	close(p.draining)
	var last []uint32
	rc.until(t, "the final GOAWAY", func(f http2.Frame) bool {
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			last = append(last, ga.LastStreamID)
		}
		return len(last) == 2
	})
	if last[0] != math.MaxInt32 || last[1] != 1 {
		t.Errorf("GOAWAY last stream ids %v, want [%d 1]", last, math.MaxInt32)
	}
}

// TestBadClients sends a bad preface, malformed frames and a header
// flood on their own connections, while a gRPC client on another
// connection keeps working.
func TestBadClients(t *testing.T) {
	_, _, p, _ := grpcWorld(t)
	client := grpc_testing.NewTestServiceClient(grpcClient(t, p.addr))
	call := func(t *testing.T) {
		t.Helper()
		if _, err := client.UnaryCall(t.Context(), &grpc_testing.SimpleRequest{}); err != nil {
			t.Fatalf("the good connection failed: %v", err)
		}
	}
	call(t)
	hdr := func(typ http2.FrameType, flags http2.Flags, stream uint32, payload []byte) []byte {
		var b bytes.Buffer
		http2.NewFramer(&b, nil).WriteRawFrame(typ, flags, stream, payload)
		return b.Bytes()
	}
	settings := hdr(http2.FrameSettings, 0, 0, nil)
	for name, bytes := range map[string][]byte{
		"HTTP/1 request":             []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
		"bad preface":                []byte("PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"),
		"HEADERS on stream 0":        append(append([]byte(http2.ClientPreface), settings...), hdr(http2.FrameHeaders, 0x4, 0, []byte{0x82})...),
		"garbage header block":       append(append([]byte(http2.ClientPreface), settings...), hdr(http2.FrameHeaders, 0x5, 1, []byte{0xff, 0xff, 0xff, 0xff})...),
		"DATA on an idle stream":     append(append([]byte(http2.ClientPreface), settings...), hdr(http2.FrameData, 0, 7, []byte("x"))...),
		"frame larger than settings": append(append([]byte(http2.ClientPreface), settings...), []byte{0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 1}...),
		"endless CONTINUATION": append(append(append([]byte(http2.ClientPreface), settings...), hdr(http2.FrameHeaders, 0x1, 1, []byte{0x82})...),
			bytes.Repeat(hdr(http2.FrameContinuation, 0, 1, bytes.Repeat([]byte{0x40, 0x1, 'x', 0x1, 'y'}, 1000)), 100)...),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel() // each waits for the server's second after its GOAWAY
			c, err := net.Dial("tcp", p.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			go c.Write(bytes)
			// The proxy ends the connection (after a GOAWAY where it can).
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, net.ErrClosed) {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					t.Fatal("the proxy kept the connection open")
				}
			}
			call(t)
		})
	}
}

// TestServeContextEnds stops a connection with a stream in flight: Serve
// returns at once and the upstream stream is cancelled.
func TestServeContextEnds(t *testing.T) {
	started, cancelled := make(chan struct{}), make(chan struct{})
	upAddr := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
		close(cancelled)
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(upAddr)},
	}})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pool := NewPool(withEngine(Options{}))
	defer pool.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		Serve(ctx, c, &l7.Upstream{Route: snap.Lookup(svcAddr), Dst: svcAddr, Dial: tcpDial, Log: slog.New(slog.DiscardHandler)}, pool)
	}()
	rc := dialRaw(t, ln.Addr().String())
	rc.get(t, 1, "/slow")
	<-started
	cancel()
	for name, ch := range map[string]chan struct{}{"Serve to return": done, "the upstream stream to be cancelled": cancelled} {
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			t.Fatalf("timed out waiting for %s", name)
		}
	}
}
