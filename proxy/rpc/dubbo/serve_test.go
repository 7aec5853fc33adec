package dubbo

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
)

// provider is a Dubbo server for framework tests: it answers each request
// with its method name (a "slow" method after 300 ms), concurrently, as
// real providers do, and sends one heartbeat of its own on each new
// connection (which the agent must answer).
func provider(t *testing.T) (netip.AddrPort, chan []byte) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hbAcks := make(chan []byte, 16)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				var mu sync.Mutex
				write := func(b []byte) { mu.Lock(); c.Write(b); mu.Unlock() }
				write(message(flagRequest|flagTwoWay|flagEvent|Hessian2, 0, 1<<50, []byte{'N'}))
				r := bufio.NewReader(c)
				for {
					b, err := readMessage(r)
					if err != nil {
						return
					}
					f, _, err := Codec{}.Decode(b, rpc.Client, 1<<20)
					if err != nil {
						return
					}
					if f.Kind() == rpc.Response {
						hbAcks <- b
						continue
					}
					go func() {
						m := string(f.Attr(AttrMethod))
						if m == "slow" {
							time.Sleep(300 * time.Millisecond)
						}
						write(message(Hessian2, StatusOK, f.ID(), appendString(nil, m)))
					}()
				}
			}()
		}
	}()
	return netip.MustParseAddrPort(l.Addr().String()), hbAcks
}

func readMessage(r *bufio.Reader) ([]byte, error) {
	h := make([]byte, headerLen)
	if _, err := io.ReadFull(r, h); err != nil {
		return nil, err
	}
	n := int(h[12])<<24 | int(h[13])<<16 | int(h[14])<<8 | int(h[15])
	b := make([]byte, headerLen+n)
	copy(b, h)
	_, err := io.ReadFull(r, b[headerLen:])
	return b, err
}

// TestDrainAnswersInFlight: on drain the client gets the readonly goaway
// and the answer to the call it had in flight (none is lost), then the
// connection closes; the provider's own heartbeat was answered by the
// agent; two clients using the same id each get their own answer.
func TestDrainAnswersInFlight(t *testing.T) {
	addr, hbAcks := provider(t)
	c, err := cluster.New(cluster.Config{Name: "p"}, []cluster.Endpoint{{Addr: addr}}, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := rpc.NewPool(Protocol, rpc.PoolOptions{})
	defer pool.Close()
	drain := make(chan struct{})
	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	client := func() (net.Conn, *bufio.Reader) {
		down, up := net.Pipe()
		go rpc.Serve(t.Context(), up, &rpc.Upstream{Cluster: c, Dial: dial, Draining: drain}, pool)
		down.SetDeadline(time.Now().Add(10 * time.Second))
		t.Cleanup(func() { down.Close() })
		return down, bufio.NewReader(down)
	}
	a, ra := client()
	b, rb := client()
	go a.Write(request(7, reqFlags, "s", "", "fast-a", "", nil))
	if m, err := readMessage(ra); err != nil || string(m[headerLen+1:]) != "fast-a" || m[11] != 7 {
		t.Fatalf("client a: % x, %v", m, err)
	}
	go b.Write(request(7, reqFlags, "s", "", "fast-b", "", nil))
	if m, err := readMessage(rb); err != nil || string(m[headerLen+1:]) != "fast-b" || m[11] != 7 {
		t.Fatalf("client b: % x, %v", m, err)
	}
	select {
	case ack := <-hbAcks:
		if ack[2]&flagEvent == 0 || ack[3] != StatusOK {
			t.Fatalf("heartbeat ack % x", ack)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the provider's heartbeat was not answered")
	}
	// A pipe's Write returns once the agent has read the bytes: the call
	// is the agent's before the drain starts.
	if _, err := a.Write(request(8, reqFlags, "s", "", "slow", "", nil)); err != nil {
		t.Fatal(err)
	}
	close(drain)
	var gotAnswer, gotGoAway bool
	for range 2 {
		m, err := readMessage(ra)
		if err != nil {
			t.Fatalf("after drain: %v (answer %v, goaway %v)", err, gotAnswer, gotGoAway)
		}
		f, _, _ := Codec{}.Decode(m, rpc.Server, 1<<20)
		switch f.Kind() {
		case rpc.GoAway:
			gotGoAway = true
		case rpc.Response:
			gotAnswer = f.ID() == 8 && string(m[headerLen+1:]) == "slow"
		}
	}
	if !gotAnswer || !gotGoAway {
		t.Fatalf("answer %v, goaway %v", gotAnswer, gotGoAway)
	}
	if _, err := ra.ReadByte(); err != io.EOF {
		t.Fatalf("%v, want EOF after the drain", err)
	}
}

// TestSlowCallDoesNotHoldOthers: answers go back as they complete, so a
// fast call sent after a slow one on the same client connection is
// answered first (no head-of-line blocking the protocol does not have).
func TestSlowCallDoesNotHoldOthers(t *testing.T) {
	addr, _ := provider(t)
	c, err := cluster.New(cluster.Config{Name: "p"}, []cluster.Endpoint{{Addr: addr}}, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pool := rpc.NewPool(Protocol, rpc.PoolOptions{})
	defer pool.Close()
	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	down, up := net.Pipe()
	defer down.Close()
	go rpc.Serve(t.Context(), up, &rpc.Upstream{Cluster: c, Dial: dial}, pool)
	down.SetDeadline(time.Now().Add(10 * time.Second))
	r := bufio.NewReader(down)
	for _, req := range [][]byte{request(1, reqFlags, "s", "", "slow", "", nil), request(2, reqFlags, "s", "", "fast", "", nil)} {
		if _, err := down.Write(req); err != nil {
			t.Fatal(err)
		}
	}
	for _, want := range []string{"fast", "slow"} {
		m, err := readMessage(r)
		if err != nil || string(m[headerLen+1:]) != want {
			t.Fatalf("want %s's answer, got % x, %v", want, m, err)
		}
	}
}
