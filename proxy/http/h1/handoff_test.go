package h1

import (
	"context"
	"net"
	"os"
	"testing"
	"time"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

// A connection idle when the drain starts is offered to a successor
// (Upstream.HandOff) at once; once taken, the old server writes nothing
// more and does not shut the socket down, so a request the client sends
// meanwhile waits in the socket and the successor, which holds a
// duplicate of the descriptor (as SCM_RIGHTS gives it), answers it.
func TestDrainingHandsIdleConnectionOver(t *testing.T) {
	b := newBackend(t, echoPath)
	up := passthrough(b.addr)
	drain := make(chan struct{})
	up.Draining = drain
	taken := make(chan *os.File, 1)
	up.HandOff = func(down net.Conn, _ *l7.Upstream) bool {
		f, err := down.(*net.TCPConn).File()
		if err != nil {
			t.Errorf("duplicate the offered socket: %v", err)
			return false
		}
		taken <- f
		return true
	}
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	if _, body := c.do(get("/first")); body != "path=/first" {
		t.Fatalf("first answer %q", body)
	}

	close(drain)
	var f *os.File
	select {
	case f = <-taken:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not offered within 5s of the drain")
	}
	// The old server has let go (its descriptor closes); the client's next
	// request goes to the socket the successor holds.
	c.send(get("/second"))
	nc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	succ := passthrough(b.addr) // the successor: no drain, no successor of its own
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan struct{})
	go func() {
		defer close(served)
		Serve(ctx, nc, succ, nil)
	}()
	t.Cleanup(func() { cancel(); nc.Close(); <-served })
	resp, body := c.read("GET")
	if body != "path=/second" || resp.Close {
		t.Fatalf("answer after the hand-over: %q, close %v; want path=/second on a kept connection", body, resp.Close)
	}
	if _, body := c.do(get("/third")); body != "path=/third" {
		t.Fatalf("third answer %q", body)
	}
}

// A successor that does not take the connection leaves it to the drain's
// usual grace: a request within it is answered with Connection: close.
func TestDrainingIdleConnectionNotTaken(t *testing.T) {
	b := newBackend(t, echoPath)
	up := passthrough(b.addr)
	drain := make(chan struct{})
	up.Draining = drain
	offered := make(chan struct{}, 4)
	up.HandOff = func(net.Conn, *l7.Upstream) bool { offered <- struct{}{}; return false }
	p := startProxy(t, up, Options{})
	c := dialClient(t, p.addr)
	c.do(get("/first"))
	close(drain)
	select {
	case <-offered:
	case <-time.After(5 * time.Second):
		t.Fatal("the idle connection was not offered within 5s of the drain")
	}
	resp, body := c.do(get("/second"))
	if body != "path=/second" || !resp.Close {
		t.Fatalf("answer in the grace: %q, close %v; want path=/second with Connection: close", body, resp.Close)
	}
	c.expectClosed()
	if n := len(offered); n != 0 {
		t.Errorf("offered %d more times, want once", n)
	}
}
