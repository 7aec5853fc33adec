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
	msg, back := make([]byte, size), make([]byte, size)
	for i := 0; i < n; i++ {
		for j := range msg {
			msg[j] = byte(i + j)
		}
		if _, err := c.Write(msg); err != nil {
			fmt.Printf("error=write message %d: %v\n", i, err)
			return 1
		}
		if _, err := io.ReadFull(c, back); err != nil || !bytes.Equal(msg, back) {
			fmt.Printf("error=message %d echoed wrong (%v)\n", i, err)
			return 1
		}
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
	fmt.Printf("ok=%x\n", sent.Sum(nil))
	return 0
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
// ends), and 10,000 small echoed messages and a 64 MiB echoed stream are
// byte-exact while the counters show the redirects. An app that exits
// while the agent sends makes the agent's write fail, and an app that
// exits after sending gives the agent EOF: nothing hangs.
func TestAccelLocalPair(t *testing.T) {
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
	defer p.Close()
	nsf, err := os.Open(pod.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	if err := p.Enrol(int(nsf.Fd()), cookie, Pod{OutboundPort: 15001, IPv4: true, Addrs: []netip.Addr{netip.MustParseAddr("10.9.0.2")}}); err != nil {
		t.Fatal(err)
	}

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
	// Each side sends each message once, and the bulk both ways.
	if d := after["bytes"] - before["bytes"]; d < 2*(msgs*size+bulk) {
		t.Fatalf("redirected bytes: %d, want at least %d", d, 2*(msgs*size+bulk))
	}
	if d := after["msgs"] - before["msgs"]; d < 2*msgs {
		t.Fatalf("redirected messages: %d, want at least %d", d, 2*msgs)
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
