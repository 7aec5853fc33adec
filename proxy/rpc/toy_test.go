package rpc_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
)

// toy is a protocol with ids, to test what Redis cannot show:
// multiplexing with id rewriting, heartbeats, goaway, oneway.
//
//	0      4      5       9
//	+------+------+-------+---------+
//	| len  | kind |  id   | payload |   len counts kind, id and payload
//	+------+------+-------+---------+
type toyCodec struct{}

const (
	kReq, kResp, kHeartbeat, kGoAway, kOneway byte = 0, 1, 2, 3, 4
	toyMax                                         = 1 << 16
)

var toy = rpc.Register(toyCodec{}, toyMax)

type toyFrame struct{ raw []byte }

func (f *toyFrame) Kind() rpc.Kind {
	return [...]rpc.Kind{rpc.Request, rpc.Response, rpc.Heartbeat, rpc.GoAway, rpc.Oneway}[f.raw[4]]
}
func (f *toyFrame) Bytes() []byte        { return f.raw }
func (f *toyFrame) ID() uint64           { return uint64(binary.BigEndian.Uint32(f.raw[5:])) }
func (f *toyFrame) SetID(id uint64)      { binary.BigEndian.PutUint32(f.raw[5:], uint32(id)) }
func (f *toyFrame) Attr(n string) []byte { return nil }

func (toyCodec) Name() string { return "toy" }
func (toyCodec) IDWidth() int { return 4 }
func (toyCodec) Decode(b []byte, _ rpc.Side, max int) (rpc.Frame, int, error) {
	if len(b) < 4 {
		return nil, 9, rpc.ErrNeedMore
	}
	l := int(binary.BigEndian.Uint32(b))
	switch {
	case l+4 > max:
		return nil, 0, rpc.ErrFrameTooLarge
	case l < 5:
		return nil, 0, fmt.Errorf("toy: length %d", l)
	case len(b) < 4+l:
		return nil, 4 + l, rpc.ErrNeedMore
	case b[4] > kOneway:
		return nil, 0, fmt.Errorf("toy: kind %d", b[4])
	}
	return &toyFrame{b[: 4+l : 4+l]}, 4 + l, nil
}

func (toyCodec) HeartbeatReply(req rpc.Frame) []byte {
	return toyBytes(kResp, uint32(req.ID()), "pong")
}

func (toyCodec) ErrorReply(req rpc.Frame, err error) []byte {
	var id uint32
	if req != nil {
		id = uint32(req.ID())
	}
	return toyBytes(kResp, id, "ERR "+err.Error())
}

func (toyCodec) GoAwayFrame() []byte { return toyBytes(kGoAway, 0, "") }

// ServerRequestReply declines a server's request; a one-way one gets
// nothing.
func (toyCodec) ServerRequestReply(req rpc.Frame) []byte {
	if req.Kind() == rpc.Oneway {
		return nil
	}
	return toyBytes(kResp, uint32(req.ID()), "declined")
}

func toyBytes(kind byte, id uint32, payload string) []byte {
	b := make([]byte, 9+len(payload))
	binary.BigEndian.PutUint32(b, uint32(5+len(payload)))
	b[4] = kind
	binary.BigEndian.PutUint32(b[5:], id)
	copy(b[9:], payload)
	return b
}

func readToy(t *testing.T, r *bufio.Reader) (kind byte, id uint32, payload string) {
	t.Helper()
	var h [9]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	p := make([]byte, binary.BigEndian.Uint32(h[:])-5)
	if _, err := io.ReadFull(r, p); err != nil {
		t.Fatal(err)
	}
	return h[4], binary.BigEndian.Uint32(h[5:]), string(p)
}

// toyServer answers each request after a random short delay, so answers
// on a connection come out of order; a request "goaway" is answered, then
// followed by a GoAway; before answering a request "ask", it sends the
// client a one-way request and a request of its own, and counts the
// answers to it that say "declined".
type toyServer struct {
	name                            string
	addr                            netip.AddrPort
	conns, reqs, heartbeats, oneway atomic.Int64
	declined                        atomic.Int64
	// mode "reset" closes the connection at a request, unanswered; "busy"
	// answers every request BUSY. Otherwise a request "slow" is answered
	// after 3 seconds.
	mode string
}

func startToy(t *testing.T, name string) *toyServer { return startToyMode(t, name, "") }

func startToyMode(t *testing.T, name, mode string) *toyServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &toyServer{name: name, addr: l.Addr().(*net.TCPAddr).AddrPort(), mode: mode}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			go s.serve(c)
		}
	}()
	return s
}

func (s *toyServer) serve(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	var mu sync.Mutex
	n := 0
	for {
		var h [9]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		p := make([]byte, binary.BigEndian.Uint32(h[:])-5)
		if _, err := io.ReadFull(r, p); err != nil {
			return
		}
		id := binary.BigEndian.Uint32(h[5:])
		switch h[4] {
		case kHeartbeat:
			s.heartbeats.Add(1)
			continue
		case kOneway:
			s.oneway.Add(1)
			continue
		case kResp:
			if string(p) == "declined" {
				s.declined.Add(1)
			}
			continue
		}
		s.reqs.Add(1)
		n++
		delay := time.Duration(n*7919%5) * time.Millisecond
		switch {
		case s.mode == "reset":
			return // closes with the request unanswered
		case s.mode == "busy":
			p = []byte("BUSY")
		case string(p) == "slow":
			delay = 3 * time.Second
		}
		go func() {
			time.Sleep(delay)
			mu.Lock()
			defer mu.Unlock()
			if string(p) == "ask" {
				c.Write(append(toyBytes(kOneway, 1<<30, "notify"), toyBytes(kReq, 1<<30+1, "question")...))
			}
			c.Write(toyBytes(kResp, id, s.name+":"+string(p)))
			if string(p) == "goaway" {
				c.Write(toyBytes(kGoAway, 0, ""))
			}
		}()
	}
}

func toyProxy(t *testing.T, servers ...*toyServer) (string, chan struct{}, *rpc.Pool) {
	t.Helper()
	return toyProxyWith(t, nil, nil, servers...)
}

// toyProxyWith is toyProxy with a request policy and metrics.
func toyProxyWith(t testing.TB, pol *rpc.Policy, m *rpc.Metrics, servers ...*toyServer) (string, chan struct{}, *rpc.Pool) {
	t.Helper()
	var eps []cluster.Endpoint
	for _, s := range servers {
		eps = append(eps, cluster.Endpoint{Addr: s.addr})
	}
	c, err := cluster.New(cluster.Config{Name: "toy"}, eps, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pool := rpc.NewPool(toy, rpc.PoolOptions{})
	drain := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	var wg sync.WaitGroup
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				rpc.Serve(ctx, conn, &rpc.Upstream{Cluster: c, Dial: dial, Draining: drain, Policy: pol, Metrics: m, Service: "toy"}, pool)
			}()
		}
	}()
	t.Cleanup(func() { l.Close(); cancel(); wg.Wait(); pool.Close() })
	return l.Addr().String(), drain, pool
}

func toyClient(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// TestMultiplexByID: clients using the same ids share one connection per
// server; each gets its own answers, with its own ids, as they complete.
func TestMultiplexByID(t *testing.T) {
	a, b := startToy(t, "a"), startToy(t, "b")
	addr, _, pool := toyProxy(t, a, b)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for cl := range 4 {
		wg.Go(func() {
			c, r := toyClient(t, addr)
			var batch []byte
			for i := 1; i <= 50; i++ {
				batch = append(batch, toyBytes(kReq, uint32(i), fmt.Sprintf("c%d-%d", cl, i))...)
			}
			c.Write(batch)
			// Answers come as they complete: each with its own id, once.
			seen := map[uint32]bool{}
			for i := 1; i <= 50; i++ {
				kind, id, p := readToy(t, r)
				if kind != kResp || seen[id] || !strings.HasSuffix(p, fmt.Sprintf(":c%d-%d", cl, id)) {
					errs <- fmt.Errorf("client %d answer %d: kind %d id %d %q", cl, i, kind, id, p)
					return
				}
				seen[id] = true
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if a.reqs.Load() == 0 || b.reqs.Load() == 0 || a.reqs.Load()+b.reqs.Load() != 200 {
		t.Fatalf("requests per server: %d %d", a.reqs.Load(), b.reqs.Load())
	}
	if a.conns.Load() != 1 || b.conns.Load() != 1 || pool.Conns(a.addr) != 1 {
		t.Fatalf("upstream connections: %d %d", a.conns.Load(), b.conns.Load())
	}
}

// TestHeartbeatOnewayGoAway: heartbeats are answered by the proxy; a
// oneway request reaches a server and gets no answer; a server's GoAway
// retires its connection after its answers, and the next request dials a
// new one.
func TestHeartbeatOnewayGoAway(t *testing.T) {
	a := startToy(t, "a")
	addr, _, pool := toyProxy(t, a)
	c, r := toyClient(t, addr)
	c.Write(toyBytes(kHeartbeat, 7, ""))
	if kind, id, p := readToy(t, r); kind != kResp || id != 7 || p != "pong" {
		t.Fatalf("heartbeat: %d %d %q", kind, id, p)
	}
	c.Write(append(toyBytes(kOneway, 8, "fire"), toyBytes(kReq, 9, "goaway")...))
	if _, id, p := readToy(t, r); id != 9 || p != "a:goaway" {
		t.Fatalf("%d %q", id, p)
	}
	for deadline := time.Now().Add(5 * time.Second); pool.Conns(a.addr) != 0; {
		if time.Now().After(deadline) {
			t.Fatal("the connection that went away is still pooled")
		}
		time.Sleep(time.Millisecond)
	}
	c.Write(toyBytes(kReq, 10, "again"))
	if _, id, p := readToy(t, r); id != 10 || p != "a:again" {
		t.Fatalf("%d %q", id, p)
	}
	if a.heartbeats.Load() != 0 || a.oneway.Load() != 1 || a.conns.Load() != 2 {
		t.Fatalf("server saw %d heartbeats, %d oneway, %d connections", a.heartbeats.Load(), a.oneway.Load(), a.conns.Load())
	}
}

// TestTooLargeAndDrain: a header declaring more than the maximum gets the
// error reply and a close, before its body is sent; a drain sends GoAway
// and closes.
func TestTooLargeAndDrain(t *testing.T) {
	a := startToy(t, "a")
	addr, drain, _ := toyProxy(t, a)
	c, r := toyClient(t, addr)
	c.Write([]byte{0, 1, 0, 0})
	if kind, _, p := readToy(t, r); kind != kResp || !strings.Contains(p, "too large") {
		t.Fatalf("%d %q", kind, p)
	}
	if _, err := r.ReadByte(); err != io.EOF {
		t.Fatalf("%v, want EOF", err)
	}
	c2, r2 := toyClient(t, addr)
	c2.Write(toyBytes(kReq, 1, "x"))
	readToy(t, r2)
	close(drain)
	if kind, _, _ := readToy(t, r2); kind != kGoAway {
		t.Fatalf("kind %d, want GoAway", kind)
	}
	if _, err := r2.ReadByte(); err != io.EOF {
		t.Fatalf("%v, want EOF", err)
	}
}

// TestServerRequests: a server's one-way request on a shared connection is
// dropped and its request answered by the codec's ServerRequestReply; the
// connection stays in the pool and carries the next request.
func TestServerRequests(t *testing.T) {
	a := startToy(t, "a")
	addr, _, pool := toyProxy(t, a)
	c, r := toyClient(t, addr)
	for i, p := range []string{"ask", "after"} {
		c.Write(toyBytes(kReq, uint32(i+1), p))
		if kind, id, got := readToy(t, r); kind != kResp || id != uint32(i+1) || got != "a:"+p {
			t.Fatalf("answer %d: %d %d %q", i, kind, id, got)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); a.declined.Load() != 1; {
		if time.Now().After(deadline) {
			t.Fatalf("server's request answered %d times", a.declined.Load())
		}
		time.Sleep(time.Millisecond)
	}
	if a.conns.Load() != 1 || pool.Conns(a.addr) != 1 {
		t.Fatalf("upstream connections: %d made, %d pooled", a.conns.Load(), pool.Conns(a.addr))
	}
}
