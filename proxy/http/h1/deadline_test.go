package h1

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// The coarse idle deadline never closes a connection that was idle less
// than ClientIdleTimeout: requests spaced by a quarter of it, over more than
// twice its length (so the deadline set by the first is not refreshed by
// every later one), all get answers on one connection; left idle, the
// connection is closed by the proxy.
func TestCoarseIdleDeadline(t *testing.T) {
	up := cannedServer(t, benchResp)
	const idle = time.Second
	p := startProxy(t, passthrough(up), Options{ClientIdleTimeout: idle})
	c := dialClient(t, p.addr)
	for i := range 8 {
		if resp, body := c.do(get("/")); resp.StatusCode != 200 || body != "hello, world\n" {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
		time.Sleep(idle / 4)
	}
	c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := c.c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("idle connection: read %d bytes, %v; want EOF (closed by the proxy)", n, err)
	}
}

// The coarse response header deadline set on a pooled upstream connection
// by earlier requests still ends a request whose answer never comes: 504.
func TestCoarseResponseDeadline(t *testing.T) {
	stall := make(chan struct{})
	defer close(stall)
	up, _ := rawServer(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			if req.URL.Path == "/stall" {
				<-stall
				return
			}
			io.WriteString(c, benchResp)
		}
	})
	p := startProxy(t, passthrough(up), Options{ResponseHeaderTimeout: 300 * time.Millisecond})
	c := dialClient(t, p.addr)
	for i := range 5 {
		if resp, _ := c.do(get("/")); resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	if resp, body := c.do(get("/stall")); resp.StatusCode != 504 || body != "upstream_timeout\n" {
		t.Fatalf("stalled upstream: %d %q, want 504", resp.StatusCode, body)
	}
}
