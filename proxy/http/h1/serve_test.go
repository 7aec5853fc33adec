package h1

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func echoPath(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("X-Path", r.URL.RequestURI())
	io.WriteString(w, "path="+r.URL.Path)
}

func TestKeepAliveReusesConnections(t *testing.T) {
	b := newBackend(t, echoPath)
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	for i := range 10 {
		resp, body := c.do(get(fmt.Sprintf("/r%d", i)))
		if resp.StatusCode != 200 || body != fmt.Sprintf("path=/r%d", i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		if resp.Close {
			t.Fatalf("request %d: the proxy closes a keep-alive connection", i)
		}
	}
	// A second client connection reuses the pooled upstream connection.
	c2 := dialClient(t, p.addr)
	c2.do(get("/again"))
	if n := b.conns.Load(); n != 1 {
		t.Errorf("11 requests over 2 client connections made %d upstream connections, want 1", n)
	}
	if n := b.requests.Load(); n != 11 {
		t.Errorf("upstream saw %d requests, want 11", n)
	}
	if n := p.pool.Idle(b.addr); n != 1 {
		t.Errorf("pool holds %d idle connections, want 1", n)
	}
}

func TestBalancesEachRequest(t *testing.T) {
	b1 := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "one") })
	b2 := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "two") })
	up := upstreamFor(t, []netip.AddrPort{b1.addr, b2.addr}, nil)
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	got := map[string]int{}
	for range 10 {
		_, body := c.do(get("/"))
		got[body]++
	}
	if got["one"] != 5 || got["two"] != 5 {
		t.Errorf("10 requests on one connection went %v, want 5 and 5 (round robin per request)", got)
	}
	if b1.conns.Load() != 1 || b2.conns.Load() != 1 {
		t.Errorf("upstream connections %d and %d, want 1 each (pooled per endpoint)", b1.conns.Load(), b2.conns.Load())
	}
	// Done follows the last byte to the client by a moment.
	eventually(t, "no active lease after the requests", func() bool { return up.Route.Cluster.Stats().Active == 0 })
}

func TestChunkedWithTrailers(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Trailer", "X-Sum")
		w.WriteHeader(200)
		w.Write([]byte("got:"))
		w.(http.Flusher).Flush()
		w.Write(body)
		w.Header().Set("X-Sum", "req-trailer="+r.Trailer.Get("X-Check")+";te="+strings.Join(r.TransferEncoding, ","))
	})
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.send("POST /up HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\nTrailer: X-Check\r\n\r\n" +
		"5;name=\"v\"\r\nhello\r\n6\r\n world\r\n0\r\nX-Check: ok\r\n\r\n")
	resp, body := c.read("POST")
	if body != "got:hello world" {
		t.Errorf("body %q", body)
	}
	if len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked" {
		t.Errorf("response transfer encoding %v, want chunked", resp.TransferEncoding)
	}
	if got := resp.Trailer.Get("X-Sum"); got != "req-trailer=ok;te=chunked" {
		t.Errorf("trailer %q", got)
	}
	// The connection goes on.
	if _, body := c.do(get("/next")); body != "got:" {
		t.Errorf("next body %q", body)
	}
}

func TestChunkedStreamedBody(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		fmt.Fprintf(w, "%d", n)
	})
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.send("POST /up HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n")
	chunk := strings.Repeat("x", 10000)
	for range 50 {
		c.send(fmt.Sprintf("%x\r\n%s\r\n", len(chunk), chunk))
	}
	c.send("0\r\n\r\n")
	resp, body := c.read("POST")
	if resp.StatusCode != 200 || body != "500000" {
		t.Errorf("got %d %q, want 200 500000", resp.StatusCode, body)
	}
	// Large Content-Length body, sent in pieces.
	c.send("PUT /up HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 300000\r\n\r\n")
	for range 30 {
		c.send(strings.Repeat("y", 10000))
	}
	if _, body := c.read("PUT"); body != "300000" {
		t.Errorf("got %q, want 300000", body)
	}
	if b.conns.Load() != 1 {
		t.Errorf("%d upstream connections, want 1", b.conns.Load())
	}
}

func TestExpectContinue(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Write(append([]byte("echo:"), body...))
	})
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.send("POST /x HTTP/1.1\r\nHost: svc.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
	resp, err := http.ReadResponse(c.br, &http.Request{Method: "POST"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 100 {
		t.Fatalf("first response %d, want the relayed 100 Continue", resp.StatusCode)
	}
	c.send("hello")
	resp, body := c.read("POST")
	if resp.StatusCode != 200 || body != "echo:hello" {
		t.Fatalf("final %d %q", resp.StatusCode, body)
	}
	if _, body := c.do(get("/")); body != "echo:" {
		t.Errorf("next request %q", body)
	}
}

func TestExpectContinueRefused(t *testing.T) {
	// The upstream answers without reading the body: the client never sends
	// it, and the connection must end after the answer.
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(401) })
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.send("POST /x HTTP/1.1\r\nHost: svc.test\r\nExpect: 100-continue\r\nContent-Length: 100000\r\n\r\n")
	resp, _ := c.read("POST")
	if resp.StatusCode != 401 || !resp.Close {
		t.Fatalf("got %d close=%v, want 401 and Connection: close", resp.StatusCode, resp.Close)
	}
	c.expectClosed()
}

func TestPipelinedInOrder(t *testing.T) {
	b := newBackend(t, echoPath)
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.send(get("/1") + "POST /2 HTTP/1.1\r\nHost: svc.test\r\nContent-Length: 3\r\n\r\nabc" + get("/3"))
	for _, want := range []string{"path=/1", "path=/2", "path=/3"} {
		method := "GET"
		if want == "path=/2" {
			method = "POST"
		}
		if _, body := c.read(method); body != want {
			t.Errorf("got %q, want %q", body, want)
		}
	}
}

func TestResponsesWithoutBody(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/204":
			w.WriteHeader(204)
		case "/304":
			w.Header().Set("ETag", `"x"`)
			w.WriteHeader(304)
		default:
			w.Header().Set("Content-Length", "11")
			io.WriteString(w, "hello world")
		}
	})
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	resp, body := c.do("HEAD / HTTP/1.1\r\nHost: svc.test\r\n\r\n")
	if resp.StatusCode != 200 || resp.ContentLength != 11 || body != "" {
		t.Errorf("HEAD: %d length %d body %q", resp.StatusCode, resp.ContentLength, body)
	}
	if resp, _ := c.do(get("/204")); resp.StatusCode != 204 {
		t.Errorf("204: %d", resp.StatusCode)
	}
	if resp, _ := c.do(get("/304")); resp.StatusCode != 304 || resp.Header.Get("Etag") != `"x"` {
		t.Errorf("304: %d %v", resp.StatusCode, resp.Header)
	}
	// Framing held: the next answer is the right one.
	if _, body := c.do(get("/")); body != "hello world" {
		t.Errorf("after the bodiless answers: %q", body)
	}
	if b.conns.Load() != 1 {
		t.Errorf("%d upstream connections, want 1", b.conns.Load())
	}
}

func TestResponseReadToClose(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		readHeadRaw(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
	})
	p := startProxy(t, passthrough(addr), Options{})
	c := dialClient(t, p.addr)
	resp, body := c.do(get("/"))
	if body != "until the end" || !resp.Close {
		t.Errorf("got %q close=%v, want the whole body and Connection: close", body, resp.Close)
	}
	c.expectClosed()
}

func TestHTTP10(t *testing.T) {
	b := newBackend(t, echoPath)
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	resp, body := c.do("GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
	if body != "path=/a" || resp.Close || resp.Header.Get("Connection") != "keep-alive" {
		t.Fatalf("1.0 keep-alive: %q close=%v connection=%q", body, resp.Close, resp.Header.Get("Connection"))
	}
	resp, body = c.do("GET /b HTTP/1.0\r\n\r\n")
	if body != "path=/b" || !resp.Close {
		t.Fatalf("1.0 without keep-alive: %q close=%v", body, resp.Close)
	}
	c.expectClosed()
}

func TestClientConnectionClose(t *testing.T) {
	b := newBackend(t, echoPath)
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	resp, _ := c.do("GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: close\r\n\r\n")
	if !resp.Close {
		t.Errorf("no Connection: close in the answer")
	}
	c.expectClosed()
	// The upstream connection is still pooled: close was the client's hop.
	if n := p.pool.Idle(b.addr); n != 1 {
		t.Errorf("pool holds %d, want 1", n)
	}
}

func TestHopByHopAndNoForwarded(t *testing.T) {
	var seen http.Header
	var seenHost string
	var seenLen int64
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		seen, seenHost, seenLen = r.Header.Clone(), r.Host, r.ContentLength
		w.Header().Set("Connection", "x-resp-hop")
		w.Header().Set("X-Resp-Hop", "1")
		w.Header().Set("Keep-Alive", "timeout=5")
		w.Header().Set("X-Kept", "1")
	})
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	resp, _ := c.do("POST / HTTP/1.1\r\nHost: svc.test\r\nConnection: x-hop, keep-alive, content-length\r\nX-Hop: 1\r\n" +
		"Keep-Alive: timeout=9\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\nX-End: 2\r\nContent-Length: 2\r\n\r\nok")
	for _, h := range []string{"Connection", "X-Hop", "Keep-Alive", "Proxy-Connection", "Te", "Forwarded", "X-Forwarded-For", "X-Forwarded-Proto", "Via"} {
		if v, ok := seen[h]; ok {
			t.Errorf("upstream got %s: %v", h, v)
		}
	}
	if seen.Get("X-End") != "2" || seenHost != "svc.test" || seenLen != 2 {
		t.Errorf("upstream lost end-to-end fields: %v host %q length %d", seen, seenHost, seenLen)
	}
	for _, h := range []string{"X-Resp-Hop", "Keep-Alive"} {
		if v := resp.Header.Get(h); v != "" {
			t.Errorf("client got %s: %v", h, v)
		}
	}
	if resp.Header.Get("X-Kept") != "1" {
		t.Errorf("client lost X-Kept")
	}
}

func TestTETrailersPassed(t *testing.T) {
	var te string
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { te = r.Header.Get("Te") })
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.do("GET / HTTP/1.1\r\nHost: svc.test\r\nTE: trailers\r\nConnection: te\r\n\r\n")
	if te != "trailers" {
		t.Errorf("upstream TE %q, want trailers", te)
	}
}

func TestUpgradeTunnel(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		head, err := readHeadRaw(br)
		if err != nil {
			return
		}
		lower := strings.ToLower(head)
		if !strings.Contains(lower, "\r\nupgrade: websocket\r\n") || !strings.Contains(lower, "\r\nconnection: upgrade\r\n") {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nserver-first|")
		// Echo until the client half-closes, then say goodbye.
		io.Copy(c, br)
		io.WriteString(c, "|bye")
	})
	p := startProxy(t, passthrough(addr), Options{})
	c := dialClient(t, p.addr)
	c.send("GET /ws HTTP/1.1\r\nHost: svc.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly|")
	resp, err := http.ReadResponse(c.br, &http.Request{Method: "GET"})
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 101 || resp.Header.Get("Upgrade") != "websocket" || !strings.EqualFold(resp.Header.Get("Connection"), "upgrade") {
		t.Fatalf("handshake answer %d %v", resp.StatusCode, resp.Header)
	}
	c.send("ping")
	c.c.(*net.TCPConn).CloseWrite()
	rest, err := io.ReadAll(c.br)
	if err != nil {
		t.Fatal(err)
	}
	if string(rest) != "server-first|early|ping|bye" {
		t.Errorf("tunnel carried %q", rest)
	}
}

func TestConnectTunnel(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		head, _ := readHeadRaw(br)
		if !strings.HasPrefix(head, "CONNECT db.test:5432 HTTP/1.1\r\n") {
			io.WriteString(c, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
			return
		}
		io.WriteString(c, "HTTP/1.1 200 Connection Established\r\n\r\n")
		io.Copy(c, br)
	})
	p := startProxy(t, passthrough(addr), Options{})
	c := dialClient(t, p.addr)
	c.send("CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n")
	resp, err := http.ReadResponse(c.br, &http.Request{Method: "CONNECT"})
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("CONNECT answer %v %v", resp, err)
	}
	c.send("select 1")
	c.c.(*net.TCPConn).CloseWrite()
	rest, _ := io.ReadAll(c.br)
	if string(rest) != "select 1" {
		t.Errorf("tunnel echoed %q", rest)
	}
}

func TestRefusedUpgradeStaysHTTP(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "plain") })
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	resp, body := c.do("GET / HTTP/1.1\r\nHost: svc.test\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
	if resp.StatusCode != 200 || body != "plain" {
		t.Fatalf("%d %q", resp.StatusCode, body)
	}
	if _, body := c.do(get("/")); body != "plain" {
		t.Errorf("the connection did not go on as HTTP: %q", body)
	}
}

func TestDrainingClosesIdleConnections(t *testing.T) {
	b := newBackend(t, echoPath)
	up := passthrough(b.addr)
	drain := make(chan struct{})
	up.Draining = drain
	p := startProxy(t, up, Options{})
	idle := dialClient(t, p.addr)
	idle.do(get("/"))
	busy := dialClient(t, p.addr)
	busy.do(get("/"))

	close(drain)
	start := time.Now()
	idle.expectClosed()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the idle connection closed after %v, want at once", d)
	}
	// A client that sends before noticing gets its answer, with close.
	// (busy may also have been closed while idle: then its write or read
	// fails, which is the same promise kept.)
	c := dialClient(t, p.addr)
	c.send(get("/late"))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: "GET"})
	if err == nil && !resp.Close {
		t.Errorf("an answer while draining lacks Connection: close")
	}
}

func TestDrainingPipelinedGetsClose(t *testing.T) {
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			time.Sleep(200 * time.Millisecond)
		}
	})
	up := passthrough(b.addr)
	drain := make(chan struct{})
	up.Draining = drain
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	c.send(get("/slow"))
	time.Sleep(50 * time.Millisecond)
	close(drain)
	resp, _ := c.read("GET")
	if !resp.Close {
		t.Errorf("the response after drain began lacks Connection: close")
	}
	c.expectClosed()
}
