package splice

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/integration/testworld"
)

// world is a network namespace of the test's own (loopback only) with a
// splicing relay in front of a server: client → relay (a) … (b) → server.
type world struct {
	t      *testing.T
	do     chan func()
	s      *Splicer
	relay  net.Listener
	server net.Listener
	// results of the relay's pairs, in accept order
	mu      sync.Mutex
	results []Result
	wg      sync.WaitGroup
	// spliced counts the pairs Splice took.
	spliced atomic.Int32
	// before, if set, runs on each accepted pair before Splice (a sniff).
	before func(a, b *net.TCPConn) error
}

// newWorld makes the namespace on a thread of its own and a relay on
// loopback address host ("127.0.0.1" or "::1"); serve handles the
// server's connections.
func newWorld(t *testing.T, host string, serve func(*net.TCPConn)) *world {
	t.Helper()
	testworld.RequireRoot(t)
	serr := Support()
	testworld.Require(t, serr == nil, fmt.Sprintf("kernel support for the in-kernel splice: %v", serr))
	w := &world{t: t, do: make(chan func())}
	ready := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with its netns
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ready <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		ready <- loUp()
		for f := range w.do {
			f()
		}
	}()
	if err := <-ready; err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(w.do) })
	var err error
	if w.s, err = Load(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.s.Close() })
	w.server = w.listen(net.JoinHostPort(host, "0"))
	w.relay = w.listen(net.JoinHostPort(host, "0"))
	go func() {
		for {
			c, err := w.server.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); serve(c.(*net.TCPConn)) }()
		}
	}()
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		for {
			c, err := w.relay.Accept()
			if err != nil {
				return
			}
			w.wg.Add(1)
			go func() { defer w.wg.Done(); w.relayOne(ctx, c.(*net.TCPConn)) }()
		}
	}()
	t.Cleanup(func() { cancel(); w.relay.Close(); w.server.Close(); w.wg.Wait() })
	return w
}

// loUp brings the namespace's loopback up.
func loUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("lo up: %w", err)
	}
	return nil
}

// in runs f on the namespace's thread.
func (w *world) in(f func() error) error {
	errc := make(chan error, 1)
	w.do <- func() { errc <- f() }
	return <-errc
}

func (w *world) listen(addr string) net.Listener {
	var ln net.Listener
	err := w.in(func() error {
		var lc net.ListenConfig
		lc.SetMultipathTCP(false) // MPTCP sockets cannot enter a sockhash
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		w.t.Fatalf("listen on %s: %v", addr, err)
	}
	return ln
}

func (w *world) dial(addr string) *net.TCPConn {
	w.t.Helper()
	var c net.Conn
	err := w.in(func() error {
		var d net.Dialer
		d.SetMultipathTCP(false)
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		w.t.Fatalf("dial %s: %v", addr, err)
	}
	return c.(*net.TCPConn)
}

// client dials the relay.
func (w *world) client() *net.TCPConn {
	c := w.dial(w.relay.Addr().String())
	w.t.Cleanup(func() { c.Close() })
	return c
}

// waitSpliced waits until the relay spliced n pairs. A byte that arrives
// between a pair's two inserts turns its direction to user space for good
// (by design, to keep order), so a test that checks what went through the
// kernel writes only once the pair is in.
func (w *world) waitSpliced(n int32) {
	w.t.Helper()
	for end := time.Now().Add(10 * time.Second); w.spliced.Load() < n; time.Sleep(time.Millisecond) {
		if time.Now().After(end) {
			w.t.Fatalf("the relay spliced %d pairs within 10s, want %d", w.spliced.Load(), n)
		}
	}
}

func (w *world) relayOne(ctx context.Context, a *net.TCPConn) {
	defer a.Close()
	b := w.dial(w.server.Addr().String())
	defer b.Close()
	if w.before != nil {
		if err := w.before(a, b); err != nil {
			w.record(Result{Err: err})
			return
		}
	}
	p, err := w.s.Splice(a, b)
	if err != nil {
		// Not spliced: relay in user space, as the engine does.
		w.record(Result{Err: fmt.Errorf("%w: %w", errNotSpliced, err)})
		done := make(chan struct{})
		go func() { io.Copy(b, a); b.CloseWrite(); close(done) }()
		io.Copy(a, b)
		a.CloseWrite()
		<-done
		return
	}
	w.spliced.Add(1)
	w.record(p.Relay(ctx))
}

var errNotSpliced = errors.New("not spliced")

func (w *world) record(r Result) {
	w.mu.Lock()
	w.results = append(w.results, r)
	w.mu.Unlock()
}

// result waits for the relay's n-th pair to end.
func (w *world) result(n int, within time.Duration) Result {
	w.t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		if len(w.results) > n {
			r := w.results[n]
			w.mu.Unlock()
			return r
		}
		w.mu.Unlock()
		time.Sleep(10 * time.Millisecond)
	}
	w.t.Fatalf("relay pair %d did not end within %s", n, within)
	return Result{}
}

func (w *world) stats() map[string]uint64 {
	w.t.Helper()
	st, err := w.s.Stats()
	if err != nil {
		w.t.Fatal(err)
	}
	return st
}

func echoServer(c *net.TCPConn) { io.Copy(c, c) }

// echoMessages sends n messages of size bytes one at a time and checks
// that each comes back unchanged.
func echoMessages(c net.Conn, n, size int) error {
	msg, back := make([]byte, size), make([]byte, size)
	for i := 0; i < n; i++ {
		for j := range msg {
			msg[j] = byte(i*7 + j)
		}
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("write message %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(msg, back) {
			return fmt.Errorf("message %d echoed wrong (%v)", i, err)
		}
	}
	return nil
}

// pattern is a byte stream that is not periodic at any small length.
type pattern struct{ n uint64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		p.n++
		b[i] = byte(p.n ^ p.n>>9 ^ p.n>>17)
	}
	return len(b), nil
}

// bulkEcho sends size bytes through an echo server while reading the echo
// and reports whether the sha256 of what came back is what was sent.
func bulkEcho(c *net.TCPConn, size int64) error {
	sent, got := sha256.New(), sha256.New()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(got, c, size)
		done <- err
	}()
	src := io.TeeReader(io.LimitReader(&pattern{}, size), sent)
	if _, err := io.Copy(c, struct{ io.Reader }{src}); err != nil {
		return fmt.Errorf("bulk send: %w", err)
	}
	if err := <-done; err != nil {
		return fmt.Errorf("bulk echo: %w", err)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		return errors.New("bulk echo differs from what was sent")
	}
	return nil
}

// TestSpliceEchoes: small messages go through the kernel only (no
// fallback, no byte through user space), then a bulk stream each way is
// byte-exact (sha256), then small messages again; the pair ends with the
// client's close, and the counters add up to what moved. IPv4 and IPv6.
func TestSpliceEchoes(t *testing.T) {
	for _, host := range []string{"127.0.0.1", "::1"} {
		t.Run(host, func(t *testing.T) {
			w := newWorld(t, host, echoServer)
			c := w.client()
			w.waitSpliced(1)
			c.SetDeadline(time.Now().Add(3 * time.Minute))
			const n, size = 10000, 64
			if err := echoMessages(c, n, size); err != nil {
				t.Fatal(err)
			}
			st := w.stats()
			// The first message may be queued before the splice, which
			// moves it itself.
			if st["bytes"] < 2*(n-1)*size || st["fell_back"] != 0 || st["passed"] != 0 {
				t.Fatalf("10k messages: counters %v, want %d bytes spliced and nothing through user space", st, 2*(n-1)*size)
			}
			const bulk = 256 << 20
			if err := bulkEcho(c, bulk); err != nil {
				t.Fatal(err)
			}
			if err := echoMessages(c, 100, size); err != nil {
				t.Fatal(err)
			}
			c.Close()
			r := w.result(0, 30*time.Second)
			if r.Err != nil {
				t.Fatalf("relay: %v", r.Err)
			}
			want := int64(n*size + bulk + 100*size)
			if r.AToB != want || r.BToA != want {
				t.Fatalf("relay moved %d/%d bytes, want %d each way (%+v)", r.AToB, r.BToA, want, r)
			}
			t.Logf("counters %v; copied in user space %d/%d", w.stats(), r.CopiedAB, r.CopiedBA)
		})
	}
}

// TestSpliceFlowControl: a server that reads nothing holds the client's
// writes back within a few MB (the spliced direction falls back to user
// space and the TCP window closes), and once it reads, every byte arrives
// exact and in order.
func TestSpliceFlowControl(t *testing.T) {
	start := make(chan struct{})
	got := make(chan [32]byte, 1)
	w := newWorld(t, "127.0.0.1", func(c *net.TCPConn) {
		<-start
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	})
	c := w.client()
	// This test is about the splice's fallback, not the plain relay's.
	w.waitSpliced(1)
	sent := sha256.New()
	var written int64
	src := io.TeeReader(&pattern{}, sent)
	buf := make([]byte, 64<<10)
	c.SetWriteDeadline(time.Now().Add(3 * time.Second))
	for written < 1<<30 {
		src.Read(buf)
		n, err := c.Write(buf)
		written += int64(n)
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal(err)
			}
			// Keep the hash to exactly what was written.
			break
		}
	}
	if written >= 64<<20 {
		t.Fatalf("a server that reads nothing took %d MiB: no flow control", written>>20)
	}
	st := w.stats()
	if st["fell_back"] == 0 {
		t.Fatalf("the writer stalled at %d bytes but no direction fell back: %v", written, st)
	}
	t.Logf("writer held back after %d KiB; counters %v", written>>10, st)
	// The hash covered a whole buffer, the socket took part of the last:
	// send its rest, then close.
	c.SetWriteDeadline(time.Now().Add(time.Minute))
	close(start)
	if rest := int64(len(buf)) - written%int64(len(buf)); written%int64(len(buf)) != 0 {
		if _, err := c.Write(buf[len(buf)-int(rest):]); err != nil {
			t.Fatal(err)
		}
	}
	c.CloseWrite()
	var want [32]byte
	copy(want[:], sent.Sum(nil))
	select {
	case sum := <-got:
		if sum != want {
			t.Fatal("the server received a different stream")
		}
	case <-time.After(time.Minute):
		t.Fatal("the server did not receive the stream within a minute")
	}
	if r := w.result(0, 30*time.Second); r.Err != nil {
		t.Fatalf("relay: %v", r.Err)
	}
}

// TestSpliceHalfClose: the client's FIN reaches the server after all its
// bytes, and the server can still answer and close.
func TestSpliceHalfClose(t *testing.T) {
	w := newWorld(t, "::1", func(c *net.TCPConn) {
		b, err := io.ReadAll(c)
		if err != nil {
			return
		}
		fmt.Fprintf(c, "got %d bytes %x", len(b), sha256.Sum256(b))
	})
	c := w.client()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	msg := bytes.Repeat([]byte("half-close "), 100000)
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	// A socket that has its FIN already cannot join a sockhash (the relay
	// would copy it in user space): send the FIN once the pair is spliced.
	for i := 0; w.spliced.Load() == 0; i++ {
		if i == 500 {
			t.Fatal("the relay did not splice the pair within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(c)
	r := w.result(0, 10*time.Second)
	if err != nil {
		t.Fatalf("client: %v (relay %+v)", err, r)
	}
	if want := fmt.Sprintf("got %d bytes %x", len(msg), sha256.Sum256(msg)); string(answer) != want {
		t.Fatalf("answer %q, want %q (relay %+v, counters %v)", answer, want, r, w.stats())
	}
	if r.Err != nil {
		t.Fatalf("relay: %v", r.Err)
	}
}

// TestSpliceReset: a server that resets mid-stream ends the client's
// connection promptly (no hang), and the relay reports the error.
func TestSpliceReset(t *testing.T) {
	w := newWorld(t, "127.0.0.1", func(c *net.TCPConn) {
		io.CopyN(io.Discard, c, 1<<20)
		c.SetLinger(0) // close sends RST
	})
	c := w.client()
	c.SetDeadline(time.Now().Add(20 * time.Second))
	_, err := io.Copy(c, io.LimitReader(&pattern{}, 1<<30))
	if err == nil {
		_, err = c.Read(make([]byte, 1))
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the client hung after the server reset")
	}
	if !errors.Is(err, syscall.ECONNRESET) && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, io.EOF) {
		t.Fatalf("client: %v, want a reset or the end", err)
	}
	if r := w.result(0, 10*time.Second); r.Err == nil {
		t.Fatal("the relay saw no error from a reset")
	}
}

// TestSplicePeerQuitsMidStream: a client that closes during a bulk
// download ends the relay's pair promptly.
func TestSplicePeerQuitsMidStream(t *testing.T) {
	w := newWorld(t, "127.0.0.1", func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(time.Minute))
		io.Copy(c, io.LimitReader(&pattern{}, 1<<30))
	})
	c := w.client()
	if _, err := io.CopyN(io.Discard, c, 8<<20); err != nil {
		t.Fatal(err)
	}
	c.Close()
	w.result(0, 20*time.Second)
}

// TestSpliceQueuedAndSniffed: bytes the relay read before splicing (a
// sniffed prefix, written first) and bytes that arrived before the splice
// and wait in the socket both reach the server in order, and the client's
// request is answered though it sends nothing more.
func TestSpliceQueuedAndSniffed(t *testing.T) {
	const req = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	w := newWorld(t, "127.0.0.1", func(c *net.TCPConn) {
		b := make([]byte, len(req))
		if _, err := io.ReadFull(c, b); err != nil {
			return
		}
		fmt.Fprintf(c, "server got %q", b)
		c.CloseWrite()
		io.Copy(io.Discard, c)
	})
	w.before = func(a, b *net.TCPConn) error {
		prefix := make([]byte, 4)
		if _, err := io.ReadFull(a, prefix); err != nil {
			return err
		}
		// Let the rest of the request arrive and wait in a's queue.
		time.Sleep(100 * time.Millisecond)
		_, err := b.Write(prefix)
		return err
	}
	c := w.client()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	answer, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read the answer: %v", err)
	}
	if want := fmt.Sprintf("server got %q", req); string(answer) != want {
		t.Fatalf("answer %q, want %q", answer, want)
	}
}

// TestSpliceResetAfterHalfClose: a client that half-closes at once (its
// direction of the relay is over), reads a little of a long download and
// quits with unread bytes (a reset) ends the server's send promptly. The
// reset socket stays in the sockhash until the relay closes it and the
// kernel drops what is redirected to it; and a relay that ends on an
// error must reset the server's side (a plain close sent a FIN, the
// bytes the program passed to the reader not counting as unread, and the
// server, in 4 runs of 13, went on sending).
func TestSpliceResetAfterHalfClose(t *testing.T) {
	sendErr := make(chan error, 1)
	w := newWorld(t, "127.0.0.1", func(c *net.TCPConn) {
		c.SetDeadline(time.Now().Add(time.Minute))
		_, err := io.Copy(c, io.LimitReader(&pattern{}, 8<<30))
		sendErr <- err
	})
	c := w.client()
	for i := 0; w.spliced.Load() == 0; i++ {
		if i == 500 {
			t.Fatal("the relay did not splice the pair within 5s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(io.Discard, c, 1<<20); err != nil {
		t.Fatal(err)
	}
	c.Close() // unread bytes: a reset
	select {
	case err := <-sendErr:
		if err == nil {
			t.Fatal("the server sent 8 GiB to a client that had quit")
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("the server's send went on for 20 s after its client quit (counters %v)", w.stats())
	}
	if r := w.result(0, 10*time.Second); r.Err == nil {
		t.Fatal("the relay saw no error from the client's reset")
	}
}
