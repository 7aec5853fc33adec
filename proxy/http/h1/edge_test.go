package h1

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// A streamed body that turns malformed is cut at the first bad byte: the
// upstream sees a truncated body on a connection we close, never the bad
// bytes, and the client gets 400.
func TestStreamedBodyCutAtFirstBadByte(t *testing.T) {
	var got atomic.Value
	b := newBackend(t, func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		got.Store(string(body) + "|" + errString(err))
	})
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	c.send("POST / HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
	time.Sleep(50 * time.Millisecond) // the head and first chunk are upstream
	c.send("zz\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, _ := c.read("POST")
	if resp.StatusCode != 400 {
		t.Errorf("got %d, want 400", resp.StatusCode)
	}
	c.expectClosed()
	eventually(t, "the upstream handler ended", func() bool { return got.Load() != nil })
	if s := got.Load().(string); !strings.HasPrefix(s, "hello|") || s == "hello|" {
		t.Errorf("upstream read %q, want the valid prefix and an error", s)
	}
	if n := b.requests.Load(); n != 1 {
		t.Errorf("upstream saw %d requests, want 1", n)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func TestInterimResponsesRelayed(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) {
		readHeadRaw(bufio.NewReader(c))
		io.WriteString(c, "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"+
			"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	p := startProxy(t, passthrough(addr), Options{})
	c := dialClient(t, p.addr)
	c.send(get("/"))
	resp, err := http.ReadResponse(c.br, &http.Request{Method: "GET"})
	if err != nil || resp.StatusCode != 103 || resp.Header.Get("Link") == "" {
		t.Fatalf("first answer %v %v, want 103 with its Link", resp, err)
	}
	if resp, body := c.read("GET"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("final %d %q", resp.StatusCode, body)
	}
	// HTTP/1.0 clients do not get interim responses.
	c2 := dialClient(t, p.addr)
	if resp, body := c2.do("GET / HTTP/1.0\r\n\r\n"); resp.StatusCode != 200 || body != "ok" {
		t.Errorf("HTTP/1.0: %d %q", resp.StatusCode, body)
	}
}

// Ending ctx ends every connection at once, even one waiting on a silent
// upstream.
func TestContextEndsServe(t *testing.T) {
	addr, _ := rawServer(t, func(c net.Conn) { io.Copy(io.Discard, c) })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		Serve(ctx, c, passthrough(addr), nil)
		close(done)
	}()
	c := dialClient(t, ln.Addr().String())
	c.send(get("/"))
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Serve did not return after ctx ended")
	}
	c.c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.br.ReadByte(); err == nil {
		t.Error("the client connection is still open")
	}
}
