package h1

import (
	"fmt"
	"net"
	"strings"
	"testing"
)

// Every request here must be answered by the proxy itself with the status
// given, the connection closed, and nothing sent upstream: not a byte, not
// even a connection.
func TestRefusesAmbiguousRequests(t *testing.T) {
	addr, conns := rawServer(t, func(c net.Conn) {
		c.Write([]byte("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"))
	})
	p := startProxy(t, passthrough(addr), Options{})
	const h = "POST / HTTP/1.1\r\nHost: svc.test\r\n"
	long := strings.Repeat("a", 9000)
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"CL and TE", h + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"fragment in the target", "GET /a#frag HTTP/1.1\r\nHost: svc.test\r\n\r\n", 400},
		{"fragment after an absolute form's authority", "GET http://svc.test#x HTTP/1.1\r\nHost: svc.test\r\n\r\n", 400},
		{"TE and CL", h + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400},
		{"duplicate CL, same value", h + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400},
		{"conflicting CL", h + "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400},
		{"CL list", h + "Content-Length: 5, 5\r\n\r\nhello", 400},
		{"CL sign", h + "Content-Length: +5\r\n\r\nhello", 400},
		{"CL negative", h + "Content-Length: -1\r\n\r\n", 400},
		{"CL hex", h + "Content-Length: 0x5\r\n\r\nhello", 400},
		{"CL inner space", h + "Content-Length: 1 2\r\n\r\n", 400},
		{"CL overflow", h + "Content-Length: 99999999999999999999\r\n\r\n", 400},
		{"TE chunked, identity", h + "Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400},
		{"TE identity", h + "Transfer-Encoding: identity\r\n\r\n", 400},
		{"TE xchunked", h + "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400},
		{"TE chunked twice in a list", h + "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE duplicate fields", h + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE empty element", h + "Transfer-Encoding: , chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE unknown coding", h + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"TE space before colon", h + "Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE folded in", h + "X-A: 1\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"TE on HTTP/1.0", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\nHost: svc.test\r\nX-A: 1\r\n\tmore\r\n\r\n", 400},
		{"bare LF", "GET / HTTP/1.1\nHost: svc.test\n\n", 400},
		{"bare LF in a field", "GET / HTTP/1.1\r\nHost: svc.test\nX: y\r\n\r\n", 400},
		{"bare CR", "GET / HTTP/1.1\r\nHost: svc.test\r\nX: a\rb\r\n\r\n", 400},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: svc.test\r\nX: a\x00b\r\n\r\n", 400},
		{"space in a name", "GET / HTTP/1.1\r\nHost: svc.test\r\nX Y: 1\r\n\r\n", 400},
		{"empty name", "GET / HTTP/1.1\r\nHost: svc.test\r\n: 1\r\n\r\n", 400},
		{"invalid name", "GET / HTTP/1.1\r\nHost: svc.test\r\nX@Y: 1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n", 400},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"invalid Host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
		{"bad method", "G@T / HTTP/1.1\r\nHost: svc.test\r\n\r\n", 400},
		{"double space", "GET  / HTTP/1.1\r\nHost: svc.test\r\n\r\n", 400},
		{"control in target", "GET /a\x01b HTTP/1.1\r\nHost: svc.test\r\n\r\n", 400},
		{"bad version", "GET / HTTP/1.1x\r\nHost: svc.test\r\n\r\n", 400},
		{"HTTP/2.0", "GET / HTTP/2.0\r\nHost: svc.test\r\n\r\n", 505},
		{"bad chunk size", h + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", 400},
		{"negative chunk size", h + "Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n", 400},
		{"0x chunk size", h + "Transfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n", 400},
		{"space before chunk size", h + "Transfer-Encoding: chunked\r\n\r\n 5\r\nhello\r\n0\r\n\r\n", 400},
		{"space after chunk size", h + "Transfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", 400},
		{"huge chunk size", h + "Transfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\nhello\r\n0\r\n\r\n", 400},
		{"chunk size overflow", h + "Transfer-Encoding: chunked\r\n\r\n8000000000000000\r\nhello\r\n0\r\n\r\n", 400},
		{"bad chunk extension", h + "Transfer-Encoding: chunked\r\n\r\n5;=x\r\nhello\r\n0\r\n\r\n", 400},
		{"unterminated chunk extension", h + "Transfer-Encoding: chunked\r\n\r\n5;a=\"x\r\nhello\r\n0\r\n\r\n", 400},
		{"chunk data too long", h + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello!!\r\n0\r\n\r\n", 400},
		{"chunk bare LF", h + "Transfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n", 400},
		{"bad trailer", h + "Transfer-Encoding: chunked\r\n\r\n0\r\nBad Trailer: x\r\n\r\n", 400},
		{"request line too long", "GET /" + long + " HTTP/1.1\r\nHost: svc.test\r\n\r\n", 414},
		{"request line too long, unfinished", "GET /" + long, 414},
		{"head too large", "GET / HTTP/1.1\r\nHost: svc.test\r\n" + strings.Repeat("X-Big: "+long+"\r\n", 8) + "\r\n", 431},
		{"too many fields", "GET / HTTP/1.1\r\nHost: svc.test\r\n" + strings.Repeat("X-F: 1\r\n", 100) + "\r\n", 431},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialClient(t, p.addr)
			c.send(tc.req)
			resp, _ := c.read("POST")
			if resp.StatusCode != tc.status {
				t.Errorf("answered %d, want %d", resp.StatusCode, tc.status)
			}
			if !resp.Close {
				t.Errorf("answer lacks Connection: close")
			}
			c.expectClosed()
		})
	}
	if n := conns.Load(); n != 0 {
		t.Errorf("the upstream got %d connections; no refused request may reach it", n)
	}
}

// Fields a Connection option names are hop-by-hop, except framing fields
// and Host: dropping Content-Length on the client's say-so would let the
// body be read as the next request upstream.
func TestConnectionCannotDropFraming(t *testing.T) {
	b := newBackend(t, echoPath)
	p := startProxy(t, passthrough(b.addr), Options{})
	c := dialClient(t, p.addr)
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
	c.send(fmt.Sprintf("POST /a HTTP/1.1\r\nHost: svc.test\r\nConnection: content-length, transfer-encoding, host\r\nContent-Length: %d\r\n\r\n%s",
		len(smuggled), smuggled))
	if _, body := c.read("POST"); body != "path=/a" {
		t.Errorf("got %q", body)
	}
	if _, body := c.do(get("/b")); body != "path=/b" {
		t.Errorf("got %q", body)
	}
	if n := b.requests.Load(); n != 2 {
		t.Errorf("upstream saw %d requests, want 2 (no smuggled one)", n)
	}
}
