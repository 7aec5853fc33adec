package h2

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/weir-mesh/weir/proxy/route"
)

// These tests pin down what the frame engine does by hand: flow control,
// stream limits on both sides, header blocks over CONTINUATION. Those
// that name EngineFrames hold for it only: the x/net engine buffers about
// 4 MiB of an answer its client does not read, resets a stream over the
// client's limit with PROTOCOL_ERROR, and lets a burst exceed an
// upstream's stream limit.

// TestFlowControlBoundsBuffering: a client that stops granting window
// stops the upstream too (the proxy buffers no more than its own window),
// and once it reads again the whole answer arrives intact.
// EngineFrames only (see above).
func TestFlowControlBoundsBuffering(t *testing.T) {
	const size = 8 << 20
	var written atomic.Int64
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := bytes.Repeat([]byte("0123456789abcdef"), 1024)
		for written.Load() < size {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			written.Add(int64(len(chunk)))
		}
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{Engine: EngineFrames})

	c, err := net.Dial("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc := &rawClient{c: c, fr: http2.NewFramer(c, c), status: map[uint32]string{}, data: map[uint32]string{}, ended: map[uint32]bool{}}
	rc.enc = hpack.NewEncoder(&rc.hbuf)
	rc.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.Write([]byte(http2.ClientPreface))
	const window = 16 << 10
	rc.fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: window})
	rc.get(t, 1, "/big")

	// No WINDOW_UPDATE from the client: it gets one window, and the
	// upstream stalls once the proxy's own window is full.
	rc.until(t, "the first window of the answer", func(http2.Frame) bool { return len(rc.data[1]) == window })
	time.Sleep(500 * time.Millisecond)
	stalled := written.Load()
	c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if f, err := rc.fr.ReadFrame(); err == nil {
		if d, ok := f.(*http2.DataFrame); ok && len(d.Data()) > 0 {
			t.Fatalf("DATA beyond the client's window: %v", f.Header())
		}
	}
	if stalled >= 2<<20 {
		t.Fatalf("the upstream wrote %d bytes while the client granted %d: the proxy buffers without bound", stalled, window)
	}
	t.Logf("upstream stalled after %d bytes with the client's window closed", stalled)

	// Grant window as the data comes: everything arrives.
	rc.fr.WriteWindowUpdate(0, size)
	rc.fr.WriteWindowUpdate(1, size)
	rc.c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got := len(rc.data[1])
	for !rc.ended[1] {
		f, err := rc.fr.ReadFrame()
		if err != nil {
			t.Fatalf("after %d bytes: %v", got, err)
		}
		if d, ok := f.(*http2.DataFrame); ok {
			got += len(d.Data())
			rc.ended[1] = d.StreamEnded()
			continue
		}
		rc.record(f)
	}
	if int64(got) != written.Load() || got < size {
		t.Errorf("client got %d bytes, upstream wrote %d", got, written.Load())
	}
}

// TestUpstreamStreamLimit: an upstream that allows 2 streams per
// connection gets no third; more connections are dialled instead, and no
// stream is refused (which would show as retries). The frame engine only:
// the x/net engine lets a burst exceed the limit, and with one endpoint
// the refused streams have nowhere to go.
func TestUpstreamStreamLimit(t *testing.T) {
	var mu sync.Mutex
	perConn := map[string]int{}
	maxSeen := 0
	release := make(chan struct{})
	var inFlight atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, HTTP2: &http.HTTP2Config{MaxConcurrentStreams: 2},
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/wait" {
				mu.Lock()
				perConn[r.RemoteAddr]++
				maxSeen = max(maxSeen, perConn[r.RemoteAddr])
				mu.Unlock()
				inFlight.Add(1)
				<-release
				mu.Lock()
				perConn[r.RemoteAddr]--
				mu.Unlock()
			}
			io.WriteString(w, "ok")
		})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	up := netip.MustParseAddrPort(ln.Addr().String())
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{Engine: EngineFrames})
	client, _ := h2cClient(t, p.addr)
	res, err := client.Get("http://svc.test/warm") // the upstream's SETTINGS are known after this
	if err != nil {
		t.Fatal(err)
	}
	readAll(t, res)

	const n = 6
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			res, err := client.Get("http://svc.test/wait")
			if err != nil {
				errs <- err
				return
			}
			if body := readAll(t, res); res.StatusCode != 200 || body != "ok" {
				errs <- io.ErrUnexpectedEOF
			}
		})
	}
	waitFor(t, "every request at the upstream", func() bool { return inFlight.Load() == n })
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if maxSeen > 2 || len(perConn) < n/2 {
		t.Errorf("at most %d streams on one upstream connection over %d connections, want ≤ 2 over ≥ %d", maxSeen, len(perConn), n/2)
	}
	if r := counterValue(t, p, "weir_http_retries_total"); r != 0 {
		t.Errorf("%v retries: streams were refused", r)
	}
}

// TestClientStreamLimit: a client opening more streams than the proxy's
// SETTINGS_MAX_CONCURRENT_STREAMS gets the extra one refused, and the
// others are served. EngineFrames only (see above).
func TestClientStreamLimit(t *testing.T) {
	release := make(chan struct{})
	var inFlight atomic.Int32
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		inFlight.Add(1)
		<-release
		io.WriteString(w, "done")
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{MaxConcurrentStreams: 2, Engine: EngineFrames})
	rc := dialRaw(t, p.addr)
	rc.until(t, "the proxy's SETTINGS", func(f http2.Frame) bool {
		s, ok := f.(*http2.SettingsFrame)
		if !ok || s.IsAck() {
			return false
		}
		if v, ok := s.Value(http2.SettingMaxConcurrentStreams); !ok || v != 2 {
			t.Fatalf("SETTINGS_MAX_CONCURRENT_STREAMS %d, %v", v, ok)
		}
		return true
	})
	rc.get(t, 1, "/a")
	rc.get(t, 3, "/b")
	waitFor(t, "two streams at the upstream", func() bool { return inFlight.Load() == 2 })
	rc.get(t, 5, "/c")
	f := rc.until(t, "stream 5 refused", func(f http2.Frame) bool { _, ok := f.(*http2.RSTStreamFrame); return ok })
	if rst := f.(*http2.RSTStreamFrame); rst.StreamID != 5 || rst.ErrCode != http2.ErrCodeRefusedStream {
		t.Fatalf("RST_STREAM %d %v, want stream 5 REFUSED_STREAM", rst.StreamID, rst.ErrCode)
	}
	close(release)
	rc.until(t, "streams 1 and 3 answered", func(http2.Frame) bool { return rc.ended[1] && rc.ended[3] })
	if rc.data[1] != "done" || rc.data[3] != "done" {
		t.Errorf("answers %q %q", rc.data[1], rc.data[3])
	}
}

// TestLargeHeaderBlocks: header blocks larger than a frame cross the
// proxy both ways (CONTINUATION on each hop); one above
// MaxHeaderListSize is answered 431.
func TestLargeHeaderBlocks(t *testing.T) {
	big := strings.Repeat("v", 40<<10)
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Got", strconv.Itoa(len(r.Header.Get("X-Big"))))
		w.Header().Set("X-Big-Answer", big)
		io.WriteString(w, "ok")
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{})
	client, _ := h2cClient(t, p.addr)
	req, _ := http.NewRequest("GET", "http://svc.test/", nil)
	req.Header.Set("X-Big", big)
	res, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if body := readAll(t, res); res.StatusCode != 200 || body != "ok" || res.Header.Get("X-Got") != strconv.Itoa(len(big)) || res.Header.Get("X-Big-Answer") != big {
		t.Errorf("%d %q, upstream saw %s bytes, answer header %d bytes", res.StatusCode, body, res.Header.Get("X-Got"), len(res.Header.Get("X-Big-Answer")))
	}

	// x/net's client will not send more than the proxy's advertised
	// SETTINGS_MAX_HEADER_LIST_SIZE: frame it by hand.
	rc := dialRaw(t, p.addr)
	rc.hbuf.Reset()
	for _, f := range [][2]string{{":method", "GET"}, {":scheme", "http"}, {":authority", "svc.test"}, {":path", "/"}} {
		rc.enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]})
	}
	// Just over the limit (65 KiB decoded in 4 frames): x/net's framer,
	// which both engines read with, reports the block truncated. One field
	// longer than the limit is an HPACK error, and a block far above it a
	// protocol error (CONTINUATION floods): both end the connection.
	for i := range 56 {
		rc.enc.WriteField(hpack.HeaderField{Name: "x-big-" + strconv.Itoa(i), Value: strings.Repeat("v", 1150)})
	}
	block := rc.hbuf.Bytes()
	rc.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:16384], EndStream: true})
	for block = block[16384:]; len(block) > 0; {
		n := min(len(block), 16384)
		rc.fr.WriteContinuation(1, n == len(block), block[:n])
		block = block[n:]
	}
	rc.until(t, "the answer", rc.streamDone(1))
	if rc.status[1] != "431" {
		t.Errorf("a header block above the limit: %s %q, want 431", rc.status[1], rc.data[1])
	}
}

// TestRapidResetEndsConnection: a client that opens streams and resets
// them before their answer, over and over (CVE-2023-44487), is cut off
// with GOAWAY(ENHANCE_YOUR_CALM) once it has reset maxResets more than
// it let finish; the upstream saw no more than that many requests.
// EngineFrames only (the x/net engine has its own limit).
func TestRapidResetEndsConnection(t *testing.T) {
	var seen atomic.Int32
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Add(1)
		select {
		case <-time.After(100 * time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	p := newTestProxy(t, snap, Options{Engine: EngineFrames})
	rc := dialRaw(t, p.addr)
	var rst [4]byte
	rst[3] = byte(http2.ErrCodeCancel)
	go func() {
		id := uint32(1)
		for range 30 { // 1,500 streams, 50 per write
			var batch []byte
			for range 50 {
				batch = append(batch, rc.getFrame(id, "/x")...)
				var b bytes.Buffer
				http2.NewFramer(&b, nil).WriteRSTStream(id, http2.ErrCodeCancel)
				batch = append(batch, b.Bytes()...)
				id += 2
			}
			if _, err := rc.c.Write(batch); err != nil {
				return // cut off
			}
		}
	}()
	f := rc.until(t, "GOAWAY", func(f http2.Frame) bool { _, ok := f.(*http2.GoAwayFrame); return ok })
	if ga := f.(*http2.GoAwayFrame); ga.ErrCode != http2.ErrCodeEnhanceYourCalm {
		t.Fatalf("GOAWAY %v, want ENHANCE_YOUR_CALM", ga.ErrCode)
	}
	// Then the connection ends (reset, as the client keeps writing).
	rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := rc.fr.ReadFrame(); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				t.Fatal("the connection stayed open after the GOAWAY")
			}
			break
		}
	}
	if n := seen.Load(); n > maxResets+50 {
		t.Errorf("the upstream saw %d requests from a client that reset them all", n)
	}
}
