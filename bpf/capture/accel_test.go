package capture

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// pump is the app of TestAccelLocalPair: small messages echoed one by one,
// then a bulk stream echoed while it is sent; it prints ok=<sha256> or
// error=.
func pump(args []string) int {
	n, _ := strconv.Atoi(args[1])
	size, _ := strconv.Atoi(args[2])
	bulk, _ := strconv.ParseInt(args[3], 10, 64)
	c, err := net.DialTimeout("tcp", args[0], 3*time.Second)
	if err != nil {
		fmt.Printf("error=%v\n", err)
		return 1
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if err := echoMessages(c, n, size); err != nil {
		fmt.Printf("error=%v\n", err)
		return 1
	}
	sent, got := sha256.New(), sha256.New()
	done := make(chan error, 1)
	go func() {
		_, err := io.CopyN(got, c, bulk)
		done <- err
	}()
	src := io.TeeReader(io.LimitReader(patternReader{}, bulk), sent)
	if _, err := io.Copy(c, struct{ io.Reader }{src}); err != nil {
		fmt.Printf("error=bulk send: %v\n", err)
		return 1
	}
	if err := <-done; err != nil {
		fmt.Printf("error=bulk echo: %v\n", err)
		return 1
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		fmt.Printf("error=bulk echo differs\n")
		return 1
	}
	// After a bulk stream (which the flow control sends partly through
	// TCP), small messages are redirected again.
	if err := echoMessages(c, n, size); err != nil {
		fmt.Printf("error=after the bulk stream: %v\n", err)
		return 1
	}
	fmt.Printf("ok=%x\n", sent.Sum(nil))
	return 0
}

// echoMessages sends n messages of size bytes one at a time and checks
// that each comes back unchanged.
func echoMessages(c net.Conn, n, size int) error {
	msg, back := make([]byte, size), make([]byte, size)
	for i := 0; i < n; i++ {
		for j := range msg {
			msg[j] = byte(i + j)
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

// flood is the app of TestAccelFlowControl's first half: it writes the
// pattern to an agent that reads nothing yet, for 2 s, and reports how
// much its writes took and the hash of those bytes.
func flood(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Printf("error=%v\n", err)
		return 1
	}
	defer c.Close()
	n, sum, _ := writeFor(c, 2*time.Second)
	fmt.Printf("wrote=%d sha=%x\n", n, sum)
	return 0
}

// sleepRead is the app of TestAccelFlowControl's second half: it reads
// nothing for 3 s while the agent writes, then reads to EOF and reports
// the count and hash.
func sleepRead(addr string) int {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		fmt.Printf("error=%v\n", err)
		return 1
	}
	defer c.Close()
	time.Sleep(3 * time.Second)
	c.SetReadDeadline(time.Now().Add(time.Minute))
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		fmt.Printf("error=read after %d bytes: %v\n", n, err)
		return 1
	}
	fmt.Printf("got=%d sha=%x\n", n, h.Sum(nil))
	return 0
}

// writeFor writes the pattern to c until a write has been blocked past d
// (or 1 GiB went out) and returns what the writes took and its hash.
func writeFor(c net.Conn, d time.Duration) (int64, []byte, error) {
	c.SetWriteDeadline(time.Now().Add(d))
	h := sha256.New()
	buf := make([]byte, 64<<10)
	var off, n int64
	var err error
	for n < 1<<30 {
		for i := range buf {
			buf[i] = pattern[(off+int64(i))%int64(len(pattern))]
		}
		var w int
		w, err = c.Write(buf)
		h.Write(buf[:w])
		n += int64(w)
		off += int64(w)
		if err != nil {
			break
		}
	}
	return n, h.Sum(nil), err
}

// patternReader yields a byte pattern that shifts with the offset, so a
// lost, duplicated or reordered chunk changes the hash.
type patternReader struct{}

var pattern = func() []byte {
	b := make([]byte, 65521) // prime: chunks never line up with it
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

func (patternReader) Read(p []byte) (int, error) { return copy(p, pattern), nil }

// echo is the agent of TestAccelLocalPair: read and write, never splice.
func echo(c *net.TCPConn) error {
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		if n > 0 {
			if _, werr := c.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// joinAgentCgroup moves the test process (the agent of the test) into a
// child of the test cgroup, as an agent pod sits below the cgroup capture
// attaches to, and back at cleanup. It returns that cgroup.
func joinAgentCgroup(t *testing.T, b *testBed) string {
	t.Helper()
	mount, err := EnsureCgroup2("/run/weir-test-cgroup2")
	if err != nil {
		t.Fatal(err)
	}
	orig, err := SelfCgroup(mount)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(b.cgroup, "agent")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0); err != nil {
		t.Fatalf("move the test into %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("move the test back to %s: %v", orig, err)
		}
		os.Remove(dir)
	})
	return dir
}

// TestAccelLocalPair: with acceleration on, a captured app's connection to
// the agent's outbound listener is a pair in the accel sockhash (both
// ends), and 10,000 small echoed messages, a 64 MiB echoed stream and
// 10,000 messages again are byte-exact while the counters show the
// messages redirected (the bulk stream switches between the sockmap queue
// and TCP as the reader lags, so its exactness tests the ordering rule). An app that exits
// while the agent sends makes the agent's write fail, and an app that
// exits after sending gives the agent EOF: nothing hangs.
// accelPod loads the programs with acceleration on, the test process
// playing the agent in a cgroup of its own, and enrols a pod netns whose
// outbound listener (127.0.0.1:15001) it returns.
func accelPod(t *testing.T) (*testBed, netns, *net.TCPListener) {
	t.Helper()
	b := newTestBed(t)
	b.objs.Close()
	var err error
	self := joinAgentCgroup(t, b)
	if b.objs, err = Load(Options{PinPath: b.pin, Cgroup: b.cgroup, Accelerate: true, AgentCgroup: self}); err != nil {
		t.Fatal(err)
	}
	id, err := inode(self)
	if err == nil {
		err = b.objs.AllowCgroup(id)
	}
	if err != nil {
		t.Fatal(err)
	}
	pod := newNetns(t)
	pod.run(t, "ip", "addr", "add", "10.1.2.3/32", "dev", "lo")
	out := listenIn(t, pod, "127.0.0.1:15001")
	cookie, err := NetnsCookieOf(fdOf(t, out))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(b.pin)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	nsf, err := os.Open(pod.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	if err := p.Enrol(int(nsf.Fd()), cookie, Pod{OutboundPort: 15001, IPv4: true, Addrs: []netip.Addr{netip.MustParseAddr("10.9.0.2")}}); err != nil {
		t.Fatal(err)
	}
	return b, pod, out
}

func TestAccelLocalPair(t *testing.T) {
	b, pod, out := accelPod(t)
	accepted := make(chan error, 4)
	serve := func(handle func(c *net.TCPConn) error) {
		c, err := out.AcceptTCP()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		if !b.objs.Accelerated(fdOf(t, c)) {
			st, _ := b.objs.AccelStats()
			k, kerr := sockKeyOf(fdOf(t, c))
			var keys []string
			var pk captureSockKey
			var v uint8
			it := b.objs.objs.AccelPending.Iterate()
			for it.Next(&pk, &v) {
				keys = append(keys, fmt.Sprintf("%+v", pk))
			}
			accepted <- fmt.Errorf("the agent's accepted socket (key %+v %v) is not in the accel sockhash (counters %v, pending %v)", k, kerr, st, keys)
			return
		}
		// The original destination's record says so too: the agent's
		// lookup answers the relay's question without asking again.
		cookie, err := NetnsCookieOf(fdOf(t, c))
		if err != nil {
			accepted <- err
			return
		}
		dst, st, err := b.objs.OrigDstAccel(cookie, c.RemoteAddr().(*net.TCPAddr).AddrPort())
		if err != nil || st != AccelIn || dst != netip.MustParseAddrPort("10.1.2.3:80") {
			accepted <- fmt.Errorf("original destination record: %v, acceleration %d, err %v; want 10.1.2.3:80, %d (in the sockhash)", dst, st, err, AccelIn)
			return
		}
		// The cheaper check, with the addresses Go holds, agrees.
		if !b.objs.AcceleratedConn(fdOf(t, c), c.LocalAddr().(*net.TCPAddr).AddrPort(), c.RemoteAddr().(*net.TCPAddr).AddrPort()) {
			accepted <- fmt.Errorf("AcceleratedConn says no where Accelerated says yes (%v -> %v)", c.RemoteAddr(), c.LocalAddr())
			return
		}
		if b.objs.AcceleratedConn(fdOf(t, c), c.LocalAddr().(*net.TCPAddr).AddrPort(), netip.AddrPortFrom(netip.MustParseAddr("10.9.9.9"), 1)) {
			accepted <- fmt.Errorf("AcceleratedConn says yes for a socket key that is not in the sockhash")
			return
		}
		c.SetDeadline(time.Now().Add(2 * time.Minute))
		accepted <- handle(c)
	}

	before, err := b.objs.AccelStats()
	if err != nil {
		t.Fatal(err)
	}
	const msgs, size, bulk = 10000, 64, 64 << 20
	go serve(echo)
	cmd, sc := b.helperProc(t, pod, "pump", "10.1.2.3:80", strconv.Itoa(msgs), strconv.Itoa(size), strconv.Itoa(bulk))
	var line string
	for sc.Scan() {
		line = sc.Text()
	}
	cmd.Wait()
	if err := <-accepted; err != nil {
		t.Fatalf("agent side: %v", err)
	}
	if len(line) < 3 || line[:3] != "ok=" {
		t.Fatalf("app: %q; want ok=<sha256>", line)
	}
	after, err := b.objs.AccelStats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("acceleration counters after the pair: %v", after)
	if d := after["sockets"] - before["sockets"]; d != 2 {
		t.Fatalf("sockets put in the sockhash: %d, want 2 (app and agent)", d)
	}
	// Each side sends each message once, before and after the bulk
	// stream; only the very first send of each side may find its peer
	// not yet in the sockhash. The bulk stream goes partly through TCP
	// (flow control) and must still be exact (the app checked its hash).
	if d := after["msgs"] - before["msgs"]; d < 4*msgs-2 {
		t.Fatalf("redirected messages: %d, want at least %d", d, 4*msgs-2)
	}
	if d := after["bytes"] - before["bytes"]; d < (4*msgs-2)*size {
		t.Fatalf("redirected bytes: %d, want at least %d", d, (4*msgs-2)*size)
	}

	// The app quits while the agent keeps sending: the agent's write fails.
	go serve(func(c *net.TCPConn) error {
		io.ReadFull(c, make([]byte, 4096))
		chunk := make([]byte, 64<<10)
		for i := 0; i < 1<<14; i++ {
			if _, err := c.Write(chunk); err != nil {
				return nil
			}
		}
		return errors.New("1 GiB written to an app that exited")
	})
	cmd, sc = b.helperProc(t, pod, "quit", "10.1.2.3:80")
	for sc.Scan() {
	}
	cmd.Wait()
	select {
	case err := <-accepted:
		if err != nil {
			t.Fatalf("peer closed mid-stream: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("the agent's writes hung after the app exited")
	}
}

func TestBelow(t *testing.T) {
	top := t.TempDir()
	deep := filepath.Join(top, "a", "b")
	if err := os.MkdirAll(deep, 0o755); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	for _, c := range []struct {
		dir, top string
		want     bool
	}{{deep, top, true}, {top, top, true}, {top, deep, false}, {other, top, false}, {filepath.Join(top, "missing"), top, true}} {
		if got := below(c.dir, c.top); got != c.want {
			t.Errorf("below(%s, %s) = %v, want %v", c.dir, c.top, got, c.want)
		}
	}
}

// TestAccelFlowControl: the sockmap queue of an accelerated socket is
// bounded by its receive buffer. An app writing to an agent that reads
// nothing is held back (its writes block) after a bounded amount instead
// of filling the node's TCP memory (1 GiB in 0.4 s before the bound), and
// so is the agent writing to an app that reads nothing; every byte then
// arrives, in order, once the reader reads.
func TestAccelFlowControl(t *testing.T) {
	b, pod, out := accelPod(t)
	// At most what a TCP connection holds between two full buffers, with
	// a wide margin: the point is MiBs, not the GiB the queue took before.
	const bound = 64 << 20

	type result struct {
		n   int64
		sum []byte
		err error
	}
	// App to agent: the agent reads only after the app's writes stopped.
	before, _ := b.objs.AccelStats()
	stopped := make(chan struct{})
	got := make(chan result, 1)
	go func() {
		c, err := out.AcceptTCP()
		if err != nil {
			got <- result{err: err}
			return
		}
		defer c.Close()
		<-stopped
		c.SetReadDeadline(time.Now().Add(time.Minute))
		h := sha256.New()
		n, err := io.Copy(h, c)
		got <- result{n, h.Sum(nil), err}
	}()
	cmd, sc := b.helperProc(t, pod, "flood", "10.1.2.3:80")
	var line string
	for sc.Scan() {
		line = sc.Text()
	}
	cmd.Wait()
	close(stopped)
	var wrote int64
	var sum string
	if _, err := fmt.Sscanf(line, "wrote=%d sha=%s", &wrote, &sum); err != nil {
		t.Fatalf("app: %q: %v", line, err)
	}
	r := <-got
	if r.err != nil || r.n != wrote || fmt.Sprintf("%x", r.sum) != sum {
		t.Fatalf("agent read %d bytes (%v), sha %x; the app wrote %d, sha %s", r.n, r.err, r.sum, wrote, sum)
	}
	if wrote > bound {
		t.Fatalf("the app wrote %d bytes to an agent that read nothing; want at most %d", wrote, bound)
	}
	after, _ := b.objs.AccelStats()
	if after["peer_full"] == before["peer_full"] {
		t.Fatalf("no send found its peer's queue full (counters %v)", after)
	}
	t.Logf("app to agent: writes blocked after %d bytes, all read back exact; counters %v", wrote, after)

	// Agent to app: the app reads only after 3 s.
	sent := make(chan result, 1)
	go func() {
		c, err := out.AcceptTCP()
		if err != nil {
			sent <- result{err: err}
			return
		}
		n, sum, err := writeFor(c, 2*time.Second)
		c.Close()
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			sent <- result{n, sum, err}
			return
		}
		sent <- result{n, sum, nil}
	}()
	cmd, sc = b.helperProc(t, pod, "sleepread", "10.1.2.3:80")
	for sc.Scan() {
		line = sc.Text()
	}
	cmd.Wait()
	w := <-sent
	if w.err != nil {
		t.Fatalf("agent write: %v", w.err)
	}
	var n int64
	if _, err := fmt.Sscanf(line, "got=%d sha=%s", &n, &sum); err != nil {
		t.Fatalf("app: %q: %v", line, err)
	}
	if n != w.n || fmt.Sprintf("%x", w.sum) != sum {
		t.Fatalf("the app read %d bytes, sha %s; the agent wrote %d, sha %x", n, sum, w.n, w.sum)
	}
	if w.n > bound {
		t.Fatalf("the agent wrote %d bytes to an app that read nothing; want at most %d", w.n, bound)
	}
	t.Logf("agent to app: writes blocked after %d bytes, all read back exact", w.n)
}

// TestAccelSupport: this kernel (6.18) has what the acceleration reads.
func TestAccelSupport(t *testing.T) {
	if err := AccelSupport(); err != nil {
		t.Fatal(err)
	}
}

// TestAccelNodeNeedsTheHandshake: a same-node pair's passive end is
// admitted only with the sequence numbers of its own handshake. An
// announcement naming a socket's exact key (netns cookie and tuple) but
// other sequence numbers, as a pod could forge by making a connection with
// the tuple it expects, admits nothing: the accepted socket stays out of
// the sockhash and the announcement stays unused.
func TestAccelNodeNeedsTheHandshake(t *testing.T) {
	b := newTestBed(t)
	b.objs.Close()
	var err error
	self := joinAgentCgroup(t, b)
	if b.objs, err = Load(Options{PinPath: b.pin, Cgroup: b.cgroup, Accelerate: true, AccelerateNode: true, AgentCgroup: self}); err != nil {
		t.Fatal(err)
	}
	if !b.objs.AcceleratingNode() {
		t.Fatalf("same-node acceleration is off after Load asked for it (%v)", b.objs.AccelError())
	}
	pod := newNetns(t)
	pod.run(t, "ip", "addr", "add", "10.1.2.3/32", "dev", "lo")
	pod.run(t, "ip", "addr", "add", "10.1.2.4/32", "dev", "lo")
	ln := listenIn(t, pod, "10.1.2.3:8080")
	cookie, err := NetnsCookieOf(fdOf(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	server := netip.MustParseAddrPort("10.1.2.3:8080")
	client := netip.MustParseAddrPort("10.1.2.4:40123")
	forged := captureNodeKey{K: sockKey(cookie, server, client), SndNxt: 1, RcvNxt: 2}
	if err := b.objs.objs.AccelNodePending.Put(&forged, cookie); err != nil {
		t.Fatal(err)
	}
	before, err := b.objs.AccelStats()
	if err != nil {
		t.Fatal(err)
	}
	var conn net.Conn
	if err := pod.do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(client), Timeout: 3 * time.Second}
		var err error
		conn, err = d.Dial("tcp", server.String())
		return err
	}); err != nil {
		t.Fatalf("connect from %s: %v", client, err)
	}
	defer conn.Close()
	acc, err := ln.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if b.objs.Accelerated(fdOf(t, acc)) {
		t.Fatal("the accepted socket joined the sockhash on an announcement with other sequence numbers")
	}
	after, err := b.objs.AccelStats()
	if err != nil {
		t.Fatal(err)
	}
	if d := after["node_sockets"] - before["node_sockets"]; d != 0 {
		t.Fatalf("%d same-node sockets admitted, want 0", d)
	}
	var v uint64
	if err := b.objs.objs.AccelNodePending.Lookup(&forged, &v); err != nil {
		t.Fatalf("the forged announcement was consumed: %v", err)
	}
	// The listener's request socket recorded the SYN under the tuple as
	// the connecting side sees it, with this netns's cookie.
	syn := sockKey(0, client, server)
	if err := b.objs.objs.AccelSyns.Lookup(&syn, &v); err != nil || v != cookie {
		t.Fatalf("SYN record for %s -> %s: %d, %v; want cookie %d", client, server, v, err, cookie)
	}

	// A SYN from loopback (an app to the agent's outbound listener) is
	// never an agent upstream's: it is not recorded.
	lo := listenIn(t, pod, "127.0.0.1:8081")
	loClient := netip.MustParseAddrPort("127.0.0.1:40124")
	var loConn net.Conn
	if err := pod.do(func() error {
		d := net.Dialer{LocalAddr: net.TCPAddrFromAddrPort(loClient), Timeout: 3 * time.Second}
		var err error
		loConn, err = d.Dial("tcp", "127.0.0.1:8081")
		return err
	}); err != nil {
		t.Fatalf("connect on loopback: %v", err)
	}
	defer loConn.Close()
	loAcc, err := lo.AcceptTCP()
	if err != nil {
		t.Fatal(err)
	}
	defer loAcc.Close()
	loSyn := sockKey(0, loClient, netip.MustParseAddrPort("127.0.0.1:8081"))
	if err := b.objs.objs.AccelSyns.Lookup(&loSyn, &v); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Fatalf("SYN record for a loopback connection: %d, %v; want none", v, err)
	}
}
