package evloop

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/internal/tcptest"
)

// testHandler connects every accepted socket to upstream and records what
// the loop reports.
type testHandler struct {
	upstream netip.AddrPort
	timeout  time.Duration
	retry    netip.AddrPort // ConnectFailed tries this once when valid
	noSplice bool
	prefix   []byte // sent upstream before the client's bytes

	mu       sync.Mutex
	ended    []Result
	failures []error
	endedC   chan Result
}

type testPair struct {
	Pair
	h *testHandler
}

func (h *testHandler) Connected(*Pair) {}

func (h *testHandler) ConnectFailed(_ *Pair, err error) (int, time.Duration) {
	h.mu.Lock()
	h.failures = append(h.failures, err)
	retry := h.retry
	h.retry = netip.AddrPort{}
	h.mu.Unlock()
	if retry.IsValid() {
		if fd, err := connectTo(retry); err == nil {
			return fd, time.Second
		}
	}
	return -1, 0
}

func (h *testHandler) Ended(_ *Pair, res Result) {
	h.mu.Lock()
	h.ended = append(h.ended, res)
	h.mu.Unlock()
	if h.endedC != nil {
		h.endedC <- res
	}
}

func (h *testHandler) MaySplice(*Pair) bool { return !h.noSplice }

func connectTo(a netip.AddrPort) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	unix.SetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	err = unix.Connect(fd, &unix.SockaddrInet4{Addr: a.Addr().As4(), Port: int(a.Port())})
	if err != nil && err != unix.EINPROGRESS {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// relayWorld is a loop accepting on a loopback listener and relaying each
// connection to upstream through h.
type relayWorld struct {
	loop *Loop
	addr netip.AddrPort
	h    *testHandler
	lfd  int
}

func newRelayWorld(t testing.TB, h *testHandler, setup ...func(*Loop)) *relayWorld {
	t.Helper()
	lp := runLoop(t, setup...)
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unix.SetsockoptInt(lfd, unix.IPPROTO_TCP, unix.TCP_NODELAY, 1)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 512); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(lfd)
	w := &relayWorld{loop: lp, h: h, lfd: lfd,
		addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))}
	ln := &Listener{FD: lfd, Accept: func(fd int, _ unix.RawSockaddrAny, _ int) {
		up, err := connectTo(h.upstream)
		if err != nil {
			unix.Close(fd)
			return
		}
		p := &testPair{h: h}
		p.Handler = h
		if err := lp.Add(&p.Pair, fd, up, h.timeout, h.prefix); err != nil {
			unix.Close(fd)
			unix.Close(up)
		}
	}}
	added := make(chan error, 1)
	lp.Post(func() { added <- lp.AddListener(ln) })
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(lfd) })
	return w
}

// runLoop starts a holding loop with a P of its own, as the engine gives
// it, ended with the test.
func runLoop(t testing.TB, setup ...func(*Loop)) *Loop {
	t.Helper()
	prev := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(prev + 1)
	lp, err := New(true)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range setup {
		f(lp)
	}
	go lp.Run()
	t.Cleanup(func() {
		lp.Stop() // dropped if the test ended it already
		<-lp.Done()
		runtime.GOMAXPROCS(prev)
	})
	return lp
}

// echoServer echoes every connection until its FIN, then closes.
func echoServer(t *testing.T) netip.AddrPort {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).AddrPort()
}

func dial(t testing.TB, a netip.AddrPort) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, net.TCPAddrFromAddrPort(a))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func waitEnded(t *testing.T, h *testHandler, n int) []Result {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		h.mu.Lock()
		got := len(h.ended)
		h.mu.Unlock()
		if got >= n {
			h.mu.Lock()
			defer h.mu.Unlock()
			return append([]Result(nil), h.ended...)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("want %d pairs ended, got %d", n, len(h.ended))
	return nil
}

// TestEchoMessagesAndStream: small messages and then a 16 MiB stream
// (spliced, written while the answer is read) come back byte-exact, and
// the pair's counts are right.
func TestEchoMessagesAndStream(t *testing.T) {
	for _, noSplice := range []bool{false, true} {
		name := "splice"
		if noSplice {
			name = "no-splice"
		}
		t.Run(name, func(t *testing.T) {
			h := &testHandler{upstream: echoServer(t), timeout: 5 * time.Second, noSplice: noSplice}
			w := newRelayWorld(t, h)
			c := dial(t, w.addr)
			defer c.Close()
			buf := make([]byte, 128)
			for i := range 100 {
				msg := bytes.Repeat([]byte{byte(i)}, 128)
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				if _, err := io.ReadFull(c, buf); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(buf, msg) {
					t.Fatalf("message %d came back as %x", i, buf[:8])
				}
			}
			big := make([]byte, 16<<20)
			rand.Read(big)
			errc := make(chan error, 1)
			go func() {
				_, err := c.Write(big)
				if err == nil {
					err = c.CloseWrite()
				}
				errc <- err
			}()
			got, err := io.ReadAll(c)
			if err != nil {
				t.Fatal(err)
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, big) {
				t.Fatalf("stream came back different: %d bytes, want %d", len(got), len(big))
			}
			res := waitEnded(t, h, 1)[0]
			want := int64(100*128 + len(big))
			if res.Up != want || res.Down != want || !res.Connected || res.ClientErr != nil || res.UpstreamErr != nil || res.Cut {
				t.Fatalf("result %+v, want %d bytes each way, clean", res, want)
			}
		})
	}
}

// TestAcceptCountsBacklog: connections queued before the listener joins
// the loop are all accepted at once, numbered from 0 (what the engine
// reads as the backlog).
func TestAcceptCountsBacklog(t *testing.T) {
	lp := runLoop(t)
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	var conns []net.Conn
	for range 5 {
		c, err := net.Dial("tcp4", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lfd := int(f.Fd()) // Fd makes it blocking: once, then back
	unix.SetNonblock(lfd, true)
	var nths []int
	ln := &Listener{FD: lfd, Accept: func(fd int, _ unix.RawSockaddrAny, nth int) {
		nths = append(nths, nth)
		unix.Close(fd)
	}}
	done := make(chan error, 1)
	lp.Post(func() { done <- lp.AddListener(ln) })
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got := make(chan []int, 1)
	lp.Post(func() { got <- append([]int(nil), nths...) })
	if n := <-got; len(n) != 5 || n[0] != 0 || n[4] != 4 {
		t.Fatalf("accepted %v, want 0..4 in one go", n)
	}
}

// TestPrefix: bytes given to Add reach the upstream before the client's.
func TestPrefix(t *testing.T) {
	h := &testHandler{upstream: echoServer(t), timeout: 5 * time.Second, prefix: []byte("sniffed:")}
	w := newRelayWorld(t, h)
	c := dial(t, w.addr)
	defer c.Close()
	c.Write([]byte("rest"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "sniffed:rest" {
		t.Fatalf("echoed %q, %v; want the prefix first", got, err)
	}
	if res := waitEnded(t, h, 1)[0]; res.Up != int64(len("sniffed:rest")) {
		t.Fatalf("up %d bytes, want the prefix counted", res.Up)
	}
}

// pauseLoop keeps lp busy until the returned func is called, so what a
// test sends meanwhile is queued when the loop next looks.
func pauseLoop(lp *Loop) (resume func()) {
	gate := make(chan struct{})
	lp.Post(func() { <-gate })
	return func() { close(gate) }
}

// TestQueuedBeforeConnect: a request and its FIN sent before the loop
// accepted (so before the upstream connect even started) all go through
// once the upstream is there, after the prefix when there is one; edges
// reported while connecting are not lost.
func TestQueuedBeforeConnect(t *testing.T) {
	for _, prefix := range []string{"", "sniffed:"} {
		t.Run("prefix="+prefix, func(t *testing.T) {
			h := &testHandler{upstream: echoServer(t), timeout: 5 * time.Second, prefix: []byte(prefix)}
			w := newRelayWorld(t, h)
			resume := pauseLoop(w.loop)
			c := dial(t, w.addr)
			defer c.Close()
			if _, err := c.Write([]byte("queued request")); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			time.Sleep(20 * time.Millisecond) // the FIN reaches the listener's socket
			resume()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(c)
			if want := prefix + "queued request"; err != nil || string(got) != want {
				t.Fatalf("echoed %q, %v; want %q and the FIN", got, err, want)
			}
		})
	}
}

// TestUrgentData: bytes queued behind a TCP urgent mark are relayed
// without waiting for another segment, in small-message mode (the read
// stops short at the mark) and in bulk mode (splice cannot pass it); the
// urgent byte itself is out of band and not relayed.
func TestUrgentData(t *testing.T) {
	for _, mode := range []string{"small", "splice", "bulk-no-splice"} {
		t.Run(mode, func(t *testing.T) {
			h := &testHandler{upstream: echoServer(t), timeout: 5 * time.Second, noSplice: mode == "bulk-no-splice"}
			w := newRelayWorld(t, h)
			c := dial(t, w.addr)
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if mode != "small" {
				big := make([]byte, 256<<10) // past one read's buffer: bulk mode
				rand.Read(big)
				go c.Write(big)
				if _, err := io.ReadFull(c, make([]byte, len(big))); err != nil {
					t.Fatal(err)
				}
			}
			resume := pauseLoop(w.loop)
			c.Write([]byte("a"))
			if err := tcptest.SendUrgent(c, []byte("bX")); err != nil {
				t.Fatal(err)
			} // X is urgent
			c.Write([]byte("cd"))
			time.Sleep(20 * time.Millisecond)
			resume()
			// No FIN follows: only the bytes behind the mark wake nothing.
			buf := make([]byte, 4)
			if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "abcd" {
				t.Fatalf("echoed %q, %v; want \"abcd\" (the urgent byte out of band)", buf, err)
			}
			// An urgent byte with the FIN right behind it.
			resume = pauseLoop(w.loop)
			c.Write([]byte("e"))
			if err := tcptest.SendUrgent(c, []byte("Y")); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			time.Sleep(20 * time.Millisecond)
			resume()
			if rest, err := io.ReadAll(c); err != nil || string(rest) != "e" {
				t.Fatalf("after the last mark: %q, %v; want \"e\" and the FIN", rest, err)
			}
		})
	}
}

// TestHalfClose: the client's FIN reaches the server, whose answer after
// it still reaches the client, then the server's FIN.
func TestHalfClose(t *testing.T) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		req, _ := io.ReadAll(c) // until the client's FIN
		c.Write(append([]byte("got "), req...))
	}()
	h := &testHandler{upstream: l.Addr().(*net.TCPAddr).AddrPort(), timeout: 5 * time.Second}
	w := newRelayWorld(t, h)
	c := dial(t, w.addr)
	defer c.Close()
	c.Write([]byte("question"))
	c.CloseWrite()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil || string(got) != "got question" {
		t.Fatalf("read %q, %v; want the answer after our FIN", got, err)
	}
	waitEnded(t, h, 1)
}

// TestConnectRefusedAndRetry: a refused connect is reported with its
// error; the socket ConnectFailed returns instead is used.
func TestConnectRefusedAndRetry(t *testing.T) {
	closed, _ := net.Listen("tcp4", "127.0.0.1:0")
	dead := closed.Addr().(*net.TCPAddr).AddrPort()
	closed.Close()

	h := &testHandler{upstream: dead, timeout: 5 * time.Second}
	w := newRelayWorld(t, h)
	c := dial(t, w.addr)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatal("read from a relay whose upstream refused: want EOF or reset")
	}
	c.Close()
	res := waitEnded(t, h, 1)[0]
	if res.Connected || !errors.Is(res.UpstreamErr, syscall.ECONNREFUSED) {
		t.Fatalf("result %+v, want an unconnected pair with ECONNREFUSED", res)
	}

	h.mu.Lock()
	h.retry = echoServer(t)
	h.mu.Unlock()
	c = dial(t, w.addr)
	defer c.Close()
	c.Write([]byte("ping"))
	buf := make([]byte, 4)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("through the retried upstream: %q, %v", buf, err)
	}
}

// TestConnectDeadline: a connect still in progress at its deadline fails
// with ETIMEDOUT (a zero timeout is past before the connect's answer is
// read).
func TestConnectDeadline(t *testing.T) {
	h := &testHandler{upstream: echoServer(t), timeout: 0}
	w := newRelayWorld(t, h)
	c := dial(t, w.addr)
	defer c.Close()
	res := waitEnded(t, h, 1)[0]
	if res.Connected || !errors.Is(res.UpstreamErr, syscall.ETIMEDOUT) {
		t.Fatalf("result %+v, want ETIMEDOUT before connecting", res)
	}
}

// echoPair is a loop relaying to an echo server and a client connected
// through it, closed with the test.
func echoPair(t *testing.T) (*relayWorld, *net.TCPConn) {
	t.Helper()
	w := newRelayWorld(t, &testHandler{upstream: echoServer(t), timeout: 5 * time.Second})
	c := dial(t, w.addr)
	t.Cleanup(func() { c.Close() })
	return w, c
}

// detached is a pair's two sockets, taken off its loop.
type detached struct{ client, upstream int }

// detachOne detaches the loop's one quiet pair, failing t if there is none.
func detachOne(t *testing.T, lp *Loop) detached {
	t.Helper()
	out := make(chan detached, 1)
	lp.Post(func() {
		lp.Each(func(p *Pair) {
			if cfd, ufd, ok := lp.Detach(p); ok {
				out <- detached{cfd, ufd}
			}
		})
		close(out)
	})
	d, ok := <-out
	if !ok {
		t.Fatal("a quiet pair was not detached")
	}
	return d
}

// TestDetach: a quiet pair leaves the loop with both sockets, which still
// carry the connection; a pair with an unread byte stays.
func TestDetach(t *testing.T) {
	w, c := echoPair(t)
	c.Write([]byte("one"))
	buf := make([]byte, 3)
	io.ReadFull(c, buf)

	d := detachOne(t, w.loop)
	defer unix.Close(d.client)
	defer unix.Close(d.upstream)
	// Relay one message by hand: the client's bytes now wait in the
	// detached client socket.
	c.Write([]byte("two"))
	unix.SetNonblock(d.client, false)
	unix.SetNonblock(d.upstream, false)
	b := make([]byte, 16)
	n, err := unix.Read(d.client, b)
	if err != nil || string(b[:n]) != "two" {
		t.Fatalf("detached client socket read %q, %v", b[:n], err)
	}
	unix.Write(d.upstream, b[:n])
	n, _ = unix.Read(d.upstream, b)
	unix.Write(d.client, b[:n])
	io.ReadFull(c, buf)
	if string(buf) != "two" {
		t.Fatalf("echo through the detached sockets: %q", buf)
	}
	if w.loop.Pairs() != 0 {
		t.Fatalf("loop still holds %d pairs", w.loop.Pairs())
	}
}

// TestAddConnected: a pair detached from one loop goes on relaying on
// another, as a successor agent takes a handed-over connection: what the
// client sent in between, and its FIN, go through, and the pair ends
// clean, counted from its new start.
func TestAddConnected(t *testing.T) {
	w, c := echoPair(t)
	buf := make([]byte, 3)
	c.Write([]byte("one"))
	io.ReadFull(c, buf)
	d := detachOne(t, w.loop)
	// Sent while no loop watches the pair: the registration must report it.
	c.Write([]byte("two"))
	h2 := &testHandler{endedC: make(chan Result, 1)}
	next := runLoop(t)
	added := make(chan error, 1)
	next.Post(func() {
		p := &testPair{h: h2}
		p.Handler = h2
		added <- next.AddConnected(&p.Pair, d.client, d.upstream)
	})
	if err := <-added; err != nil {
		unix.Close(d.client)
		unix.Close(d.upstream)
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "two" {
		t.Fatalf("the bytes sent between the loops came back as %q, %v", buf, err)
	}
	c.Write([]byte("six"))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "six" {
		t.Fatalf("echo on the second loop: %q, %v", buf, err)
	}
	c.CloseWrite()
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after the FIN: %q, %v", rest, err)
	}
	res := <-h2.endedC
	if !res.Connected || res.Up != 6 || res.Down != 6 || res.ClientErr != nil || res.UpstreamErr != nil || res.Cut {
		t.Fatalf("result %+v, want connected, 6 bytes each way, clean", res)
	}
	if n := len(h2.failures); n != 0 {
		t.Fatalf("%d connect failures reported for a connected pair", n)
	}
}

// TestNoAllocationPerMessage: relaying a message each way allocates
// nothing, in the loop or anywhere else in the process.
func TestNoAllocationPerMessage(t *testing.T) {
	_, c := echoPair(t)
	msg := make([]byte, 128)
	buf := make([]byte, 128)
	roundTrip := func() {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 100 {
		roundTrip()
	}
	// Not testing.AllocsPerRun: it runs with one P, which the holding loop
	// keeps while it waits.
	const n = 2000
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range n {
		roundTrip()
	}
	runtime.ReadMemStats(&after)
	if a := float64(after.Mallocs-before.Mallocs) / n; a >= 0.01 {
		t.Fatalf("%.3f allocations per echoed message (the echo server's and the client's included), want 0", a)
	}
}

// TestStopCutsPairs: Stop closes what the loop relays, reported as cut.
func TestStopCutsPairs(t *testing.T) {
	h := &testHandler{upstream: echoServer(t), timeout: 5 * time.Second}
	w := newRelayWorld(t, h)
	c := dial(t, w.addr)
	defer c.Close()
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	w.loop.Stop()
	<-w.loop.Done()
	res := waitEnded(t, h, 1)[0]
	if !res.Cut || res.Up != 1 || res.Down != 1 {
		t.Fatalf("result %+v, want cut after one byte each way", res)
	}
}

// TestHoldFollowsLoad: a loop starts parked, holds its P once it wakes
// with work often, and parks again when quiet, telling OnHold each time.
func TestHoldFollowsLoad(t *testing.T) {
	changes := make(chan bool, 16)
	h := &testHandler{upstream: echoServer(t), timeout: 5 * time.Second}
	w := newRelayWorld(t, h, func(l *Loop) {
		l.window = 100 * time.Millisecond
		l.OnHold = func(on bool) { changes <- on }
	})
	c := dial(t, w.addr)
	defer c.Close()
	msg, buf := []byte("ping"), make([]byte, 4)
	deadline := time.After(10 * time.Second)
	// Each round trip wakes the loop twice (the message, its echo).
	for held := false; !held; {
		for range holdAt {
			if _, err := c.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				t.Fatal(err)
			}
		}
		select {
		case on := <-changes:
			if !on {
				t.Fatal("OnHold(false) before the loop held its P")
			}
			held = true
		case <-deadline:
			t.Fatal("a busy loop never held its P")
		default:
		}
	}
	select {
	case on := <-changes:
		if on {
			t.Fatal("OnHold(true) twice")
		}
	case <-deadline:
		t.Fatal("a quiet loop never parked")
	}
	// Still relaying, parked.
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo after parking: %q, %v", buf, err)
	}
}

// TestClosedSocketEventsIgnored: a socket the loop closed while another
// descriptor of it lived on (a forked child's copy, until it execs) can
// still raise events, with the data of a slot a new pair holds by then.
// The new pair must not hear them: here an old upstream socket is reset
// after its pair ended and the next pair took its slot, and the next pair
// relays on.
func TestClosedSocketEventsIgnored(t *testing.T) {
	up, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	h := &testHandler{upstream: up.Addr().(*net.TCPAddr).AddrPort(), timeout: 5 * time.Second}
	lp := runLoop(t)
	lfd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(lfd)
	if err := unix.Bind(lfd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(lfd, 16); err != nil {
		t.Fatal(err)
	}
	sa, _ := unix.Getsockname(lfd)
	addr := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(sa.(*unix.SockaddrInet4).Port))
	slots := make(chan int32, 2)
	copyOfFirst := -1
	ln := &Listener{FD: lfd, Accept: func(fd int, _ unix.RawSockaddrAny, _ int) {
		u, err := connectTo(h.upstream)
		if err != nil {
			unix.Close(fd)
			return
		}
		if copyOfFirst < 0 {
			// What a child forked now would hold until its exec.
			copyOfFirst, _ = unix.FcntlInt(uintptr(u), unix.F_DUPFD_CLOEXEC, 0)
		}
		p := &testPair{h: h}
		p.Handler = h
		if err := lp.Add(&p.Pair, fd, u, h.timeout, nil); err != nil {
			unix.Close(fd)
			unix.Close(u)
			return
		}
		slots <- p.slot
	}}
	added := make(chan error, 1)
	lp.Post(func() { added <- lp.AddListener(ln) })
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	roundTrip := func(c, srv net.Conn, msg string) {
		t.Helper()
		buf := make([]byte, len(msg))
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(srv, buf); err != nil || string(buf) != msg {
			t.Fatalf("upstream read %q, %v; want %q", buf, err, msg)
		}
		if _, err := srv.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
			t.Fatalf("client read %q, %v; want %q", buf, err, msg)
		}
	}

	a := dial(t, addr)
	srvA, err := up.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srvA.Close()
	roundTrip(a, srvA, "first")
	slotA := <-slots
	// The client resets: the loop closes both sockets, but the upstream
	// one lives on in its copy, connected.
	a.SetLinger(0)
	a.Close()
	waitEnded(t, h, 1)
	defer func() {
		if copyOfFirst >= 0 {
			unix.Close(copyOfFirst)
		}
	}()

	b := dial(t, addr)
	defer b.Close()
	srvB, err := up.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer srvB.Close()
	roundTrip(b, srvB, "second")
	if slotB := <-slots; slotB != slotA {
		t.Fatalf("the second pair has slot %d, the first had %d: the test needs them the same", slotB, slotA)
	}
	// The old upstream is reset now: an error event on its registration,
	// which names the slot the second pair holds.
	srvA.(*net.TCPConn).SetLinger(0)
	srvA.Close()
	roundTrip(b, srvB, "third")
	h.mu.Lock()
	ended := len(h.ended)
	h.mu.Unlock()
	if ended != 1 {
		t.Fatalf("%d pairs ended, want 1 (the first): %+v", ended, h.ended)
	}
}
