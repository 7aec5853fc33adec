package redis_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
	"github.com/weir-mesh/weir/proxy/rpc/redis"
)

// startRedis runs a redis-server on a free loopback port for the test's
// life and returns its address.
func startRedis(t testing.TB) netip.AddrPort {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("missing prerequisite (CI=true, so this fails instead of skipping): program redis-server on PATH (hack/deps.sh installs it)")
		}
		t.Skip("missing prerequisite: program redis-server on PATH")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	cmd := exec.Command("redis-server", "--port", strconv.Itoa(int(addr.Port())), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir(), "--enable-debug-command", "local")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", addr.String())
		if err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not start: %v", addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dial(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", a.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// proxy serves rpc on a loopback listener with a ring_hash cluster over
// servers, and returns its address and the drain channel.
func proxy(t testing.TB, servers ...netip.AddrPort) (string, chan struct{}, *rpc.Pool) {
	t.Helper()
	return proxyWith(t, rpc.PoolOptions{}, servers...)
}

func proxyWith(t testing.TB, opt rpc.PoolOptions, servers ...netip.AddrPort) (string, chan struct{}, *rpc.Pool) {
	t.Helper()
	return proxyPolicy(t, opt, nil, servers...)
}

// proxyPolicy is proxyWith with a request policy.
func proxyPolicy(t testing.TB, opt rpc.PoolOptions, pol *rpc.Policy, servers ...netip.AddrPort) (string, chan struct{}, *rpc.Pool) {
	t.Helper()
	return proxyUpstream(t, opt, cluster.RingHash, rpc.Upstream{Policy: pol}, servers...)
}

// proxyUpstream serves rpc with a cluster of balancer over servers; every
// connection's Upstream is tmpl with the cluster, dialer, key and drain
// channel filled in.
func proxyUpstream(t testing.TB, opt rpc.PoolOptions, balancer string, tmpl rpc.Upstream, servers ...netip.AddrPort) (string, chan struct{}, *rpc.Pool) {
	t.Helper()
	eps := make([]cluster.Endpoint, len(servers))
	for i, s := range servers {
		eps[i] = cluster.Endpoint{Addr: s}
	}
	c, err := cluster.New(cluster.Config{Name: "redis", Balancer: balancer}, eps, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pool := rpc.NewPool(redis.Protocol, opt)
	drain := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			up := tmpl
			up.Cluster, up.Dial, up.Key, up.Draining = c, dial, 1, drain
			go rpc.Serve(ctx, conn, &up, pool)
		}
	}()
	t.Cleanup(func() { l.Close(); <-done; cancel(); pool.Close() })
	return l.Addr().String(), drain, pool
}

// client is a raw RESP client that pipelines.
type client struct {
	c net.Conn
	r *bufio.Reader
}

func connect(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { c.Close() })
	return &client{c, bufio.NewReader(c)}
}

func command(args ...string) string {
	s := "*" + strconv.Itoa(len(args)) + "\r\n"
	for _, a := range args {
		s += "$" + strconv.Itoa(len(a)) + "\r\n" + a + "\r\n"
	}
	return s
}

// send writes every command in one write (a pipeline).
func (c *client) send(t *testing.T, cmds ...[]string) {
	t.Helper()
	var b strings.Builder
	for _, a := range cmds {
		b.WriteString(command(a...))
	}
	if _, err := io.WriteString(c.c, b.String()); err != nil {
		t.Fatal(err)
	}
}

// reply reads one reply, flattened to text: "+OK", "$v", "*2[...]".
func (c *client) reply(t *testing.T) string {
	t.Helper()
	line, err := c.r.ReadString('\n')
	if err != nil {
		t.Fatalf("reading reply: %v", err)
	}
	line = strings.TrimSuffix(line, "\r\n")
	switch line[0] {
	case '$':
		n, _ := strconv.Atoi(line[1:])
		if n < 0 {
			return "$nil"
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(c.r, b); err != nil {
			t.Fatal(err)
		}
		return "$" + string(b[:n])
	case '*':
		n, _ := strconv.Atoi(line[1:])
		var parts []string
		for range n {
			parts = append(parts, c.reply(t))
		}
		return fmt.Sprintf("*%d%v", n, parts)
	}
	return line
}

func (c *client) do(t *testing.T, args ...string) string {
	t.Helper()
	c.send(t, args)
	return c.reply(t)
}

// TestPipelineBalancedByKey: twenty SETs pipelined on one connection land
// on both servers, each key on the server its hash picks, and GETs
// pipelined on another connection read every value back.
func TestPipelineBalancedByKey(t *testing.T) {
	a, b := startRedis(t), startRedis(t)
	addr, _, pool := proxy(t, a, b)
	c := connect(t, addr)
	var sets, gets [][]string
	for i := 1; i <= 20; i++ {
		sets = append(sets, []string{"SET", fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i)})
		gets = append(gets, []string{"GET", fmt.Sprintf("k%d", i)})
	}
	c.send(t, sets...)
	for i := range sets {
		if r := c.reply(t); r != "+OK" {
			t.Fatalf("SET %d: %s", i+1, r)
		}
	}
	da, db := connect(t, a.String()), connect(t, b.String())
	na, nb := da.do(t, "DBSIZE"), db.do(t, "DBSIZE")
	if na == ":0" || nb == ":0" || na == ":20" || nb == ":20" {
		t.Fatalf("keys per server: %s %s: not balanced", na, nb)
	}
	if pool.Conns(a) != 1 || pool.Conns(b) != 1 {
		t.Fatalf("upstream connections: %d %d, want one each", pool.Conns(a), pool.Conns(b))
	}
	c2 := connect(t, addr)
	c2.send(t, gets...)
	for i := range gets {
		if r, want := c2.reply(t), fmt.Sprintf("$v%d", i+1); r != want {
			t.Fatalf("GET k%d: %s, want %s", i+1, r, want)
		}
	}
	// redis-cli, a real client, through the proxy.
	host, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("redis-cli", "-h", host, "-p", port, "GET", "k7").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "v7" {
		t.Fatalf("redis-cli GET k7: %q %v", out, err)
	}
}

// TestManyClientsShareConnections: concurrent pipelining clients get
// their own replies in order over the shared upstream connections.
func TestManyClientsShareConnections(t *testing.T) {
	a, b := startRedis(t), startRedis(t)
	addr, _, pool := proxy(t, a, b)
	errs := make(chan error, 8)
	for w := range 8 {
		go func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			r := bufio.NewReader(c)
			for round := range 20 {
				var b strings.Builder
				for i := range 10 {
					b.WriteString(command("INCRBY", fmt.Sprintf("w%d:%d", w, i), strconv.Itoa(round+1)))
				}
				io.WriteString(c, b.String())
				for i := range 10 {
					line, err := r.ReadString('\n')
					want := 0
					for k := 1; k <= round+1; k++ {
						want += k
					}
					if err != nil || line != ":"+strconv.Itoa(want)+"\r\n" {
						errs <- fmt.Errorf("client %d round %d key %d: %q %v", w, round, i, line, err)
						return
					}
				}
			}
			errs <- nil
		}()
	}
	for range 8 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if pool.Conns(a) != 1 || pool.Conns(b) != 1 {
		t.Fatalf("upstream connections: %d %d", pool.Conns(a), pool.Conns(b))
	}
}

// TestMultiPinned: after MULTI the connection is relayed to one server
// connection, so the transaction works; commands before it were answered
// first.
func TestMultiPinned(t *testing.T) {
	a, b := startRedis(t), startRedis(t)
	addr, _, _ := proxy(t, a, b)
	c := connect(t, addr)
	c.send(t, []string{"SET", "before", "1"}, []string{"MULTI"}, []string{"SET", "t1", "x"},
		[]string{"INCR", "counter"}, []string{"INCR", "counter"}, []string{"EXEC"})
	for _, want := range []string{"+OK", "+OK", "+QUEUED", "+QUEUED", "+QUEUED", "*3[+OK :1 :2]"} {
		if r := c.reply(t); r != want {
			t.Fatalf("got %s, want %s", r, want)
		}
	}
	// Still the same server connection: a WATCH/MULTI/EXEC works too, and
	// SELECT's state holds.
	if r := c.do(t, "SELECT", "2"); r != "+OK" {
		t.Fatal(r)
	}
	if r := c.do(t, "CLIENT", "INFO"); !strings.Contains(r, "db=2") {
		t.Fatalf("CLIENT INFO after SELECT 2: %s", r)
	}
}

// TestNoEndpoint: a cluster with nothing to pick answers each command with
// a Redis error, in step with the pipeline.
func TestNoEndpoint(t *testing.T) {
	addr, _, _ := proxy(t)
	c := connect(t, addr)
	c.send(t, []string{"GET", "a"}, []string{"PING"})
	for range 2 {
		if r := c.reply(t); !strings.HasPrefix(r, "-ERR weir: cluster redis: no endpoint available") {
			t.Fatalf("reply %q", r)
		}
	}
	if r := c.do(t, "MULTI"); !strings.HasPrefix(r, "-ERR weir:") {
		t.Fatalf("pinned with no endpoint: %q", r)
	}
}

// TestDrainFinishesInFlight: a drain while a slow command is in flight
// still answers it and the commands pipelined behind it, then closes.
func TestDrainFinishesInFlight(t *testing.T) {
	a := startRedis(t)
	addr, drain, _ := proxy(t, a)
	c := connect(t, addr)
	idle := connect(t, addr)
	if r := idle.do(t, "PING"); r != "+PONG" {
		t.Fatal(r)
	}
	c.send(t, []string{"DEBUG", "SLEEP", "0.3"}, []string{"SET", "after", "1"}, []string{"GET", "after"})
	time.Sleep(100 * time.Millisecond)
	close(drain)
	for _, want := range []string{"+OK", "+OK", "$1"} {
		if r := c.reply(t); r != want {
			t.Fatalf("got %s, want %s", r, want)
		}
	}
	if _, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("after the drain: %v, want EOF", err)
	}
	if _, err := idle.r.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection after the drain: %v, want EOF", err)
	}
}

// TestProtocolError: bytes that are not RESP get Redis's error, then a
// close.
func TestProtocolError(t *testing.T) {
	a := startRedis(t)
	addr, _, _ := proxy(t, a)
	c := connect(t, addr)
	io.WriteString(c.c, command("SET", "x", "1")+"*1\r\n:5\r\n")
	if r := c.reply(t); r != "+OK" {
		t.Fatal(r)
	}
	if r := c.reply(t); !strings.HasPrefix(r, "-ERR Protocol error") {
		t.Fatal(r)
	}
	if _, err := c.r.ReadByte(); err != io.EOF {
		t.Fatalf("%v, want EOF", err)
	}
}

// TestResponseTimeout: a server that stops answering gets its connection
// closed after the response timeout; the waiting commands get errors, in
// step, and the next command goes over a new connection.
func TestResponseTimeout(t *testing.T) {
	a := startRedis(t)
	addr, _, _ := proxyWith(t, rpc.PoolOptions{ResponseTimeout: 200 * time.Millisecond}, a)
	c := connect(t, addr)
	start := time.Now()
	c.send(t, []string{"DEBUG", "SLEEP", "1"}, []string{"GET", "x"})
	for range 2 {
		if r := c.reply(t); !strings.Contains(r, "-ERR weir: rpc: no response within the response timeout") {
			t.Fatalf("reply %q", r)
		}
	}
	if d := time.Since(start); d > 900*time.Millisecond {
		t.Fatalf("errors after %v", d)
	}
	// DEBUG SLEEP stalls the whole (single-threaded) server: wait it out.
	time.Sleep(time.Until(start.Add(1200 * time.Millisecond)))
	if r := c.do(t, "SET", "x", "1"); r != "+OK" {
		t.Fatal(r)
	}
}

// TestKeyedNotRetried: a command with a key hashed to an endpoint that
// refuses connections gets an error, never another shard; a keyless one
// is retried on the live server.
func TestKeyedNotRetried(t *testing.T) {
	live := startRedis(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().(*net.TCPAddr).AddrPort()
	l.Close()
	addr, _, _ := proxyPolicy(t, rpc.PoolOptions{}, &rpc.Policy{Attempts: 2, On: rpc.RetryConnect | rpc.RetryReset | rpc.RetryBusy}, dead, live)
	c := connect(t, addr)
	failed := 0
	for i := range 40 {
		switch r := c.do(t, "SET", fmt.Sprintf("k%d", i), "v"); {
		case r == "+OK":
		case strings.HasPrefix(r, "-ERR weir:"):
			failed++
		default:
			t.Fatalf("SET k%d: %q", i, r)
		}
	}
	if failed == 0 || failed == 40 {
		t.Fatalf("%d of 40 keyed commands failed: want the dead shard's share, not retried elsewhere", failed)
	}
	direct := connect(t, live.String())
	if n := direct.do(t, "DBSIZE"); n != fmt.Sprintf(":%d", 40-failed) {
		t.Fatalf("live shard holds %s keys, want %d: a keyed command went to another shard", n, 40-failed)
	}
}

// TestRequestTimeoutPipelined: a command past its timeout gets -ERR while
// the server is still busy with it; its late reply is dropped and the
// next command gets its own reply, on the same connection.
func TestRequestTimeoutPipelined(t *testing.T) {
	a := startRedis(t)
	addr, _, pool := proxyPolicy(t, rpc.PoolOptions{}, &rpc.Policy{Timeout: time.Second}, a)
	c := connect(t, addr)
	if r := c.do(t, "DEBUG", "SLEEP", "2.5"); !strings.HasPrefix(r, "-ERR weir:") || !strings.Contains(r, "timeout") {
		t.Fatalf("DEBUG SLEEP past the timeout: %q", r)
	}
	time.Sleep(2 * time.Second)
	if r := c.do(t, "ECHO", "after"); r != "$after" {
		t.Fatalf("after the timeout: %q (the late +OK must be dropped)", r)
	}
	if pool.Conns(a) != 1 {
		t.Fatalf("pooled connections: %d, a timeout must not close one", pool.Conns(a))
	}
}

// TestPipelineOrderKept: commands pipelined by several clients over the
// shared connection reach the server in each client's order (requests
// written inline by one client never overtake those queued before them):
// each client's INCRs of its own key answer 1, 2, 3, … and its GET the
// count.
func TestPipelineOrderKept(t *testing.T) {
	a := startRedis(t)
	addr, _, _ := proxy(t, a)
	clients(t, 4, func(cl int) error {
		c := connect(t, addr)
		key := fmt.Sprintf("{order}%d", cl)
		for round := range 5 {
			var cmds [][]string
			for range 50 {
				cmds = append(cmds, []string{"INCR", key})
			}
			cmds = append(cmds, []string{"GET", key})
			c.send(t, cmds...)
			for i := range 50 {
				if r, want := c.reply(t), fmt.Sprintf(":%d", round*50+i+1); r != want {
					return fmt.Errorf("client %d round %d INCR %d: %q, want %q", cl, round, i, r, want)
				}
			}
			if r, want := c.reply(t), fmt.Sprintf("$%d", round*50+50); r != want {
				return fmt.Errorf("client %d round %d GET: %q, want %q", cl, round, r, want)
			}
		}
		return nil
	})
}

// clients runs n clients at once (run gets the client's number) and fails
// the test with the first error any of them returns.
func clients(t *testing.T, n int, run func(cl int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for cl := range n {
		wg.Go(func() {
			if err := run(cl); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestSlowClientDoesNotHoldOthers: a client that stops reading while
// megabytes of its answers come back must not hold up the answers of a
// client sharing its upstream connection (the upstream reader writes
// answers itself, but never blocks on a client's full socket); once it
// reads again, every one of its answers comes, whole and in order.
func TestSlowClientDoesNotHoldOthers(t *testing.T) {
	a := startRedis(t)
	addr, _, pool := proxy(t, a)
	big := strings.Repeat("0123456789abcdef", 16<<10) // 256 KiB
	setup := connect(t, addr)
	setup.send(t, []string{"SET", "big", big})
	if r := setup.reply(t); r != "+OK" {
		t.Fatalf("SET big: %q", r)
	}

	slow, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	// 25 MiB of answers, far more than the two sockets' buffers hold: a
	// fixed 256 KiB receive buffer, and at most tcp_wmem's maximum (4 MiB
	// by default) on the agent's side. Not smaller: on loopback's 64 KiB
	// MSS the window would never open by a whole segment, and the sender
	// would wait for its zero-window probes.
	slow.(*net.TCPConn).SetReadBuffer(256 << 10)
	const gets = 100
	var cmds strings.Builder
	for range gets {
		cmds.WriteString(command("GET", "big"))
	}
	if _, err := io.WriteString(slow, cmds.String()); err != nil {
		t.Fatal(err)
	}

	// The slow client reads nothing meanwhile; the other one shares the
	// upstream connection (one endpoint, one connection).
	fast := connect(t, addr)
	fast.c.SetDeadline(time.Now().Add(30 * time.Second))
	for i := range 20 {
		fast.send(t, []string{"INCR", "fast"})
		if r, want := fast.reply(t), fmt.Sprintf(":%d", i+1); r != want {
			t.Fatalf("fast client's INCR %d: %q, want %q", i, r, want)
		}
	}
	if n := pool.Conns(a); n != 1 {
		t.Fatalf("upstream connections: %d, want the 1 both clients share", n)
	}

	slow.SetDeadline(time.Now().Add(60 * time.Second))
	r := bufio.NewReaderSize(slow, 64<<10)
	want := fmt.Sprintf("$%d\r\n", len(big))
	body := make([]byte, len(big)+2)
	for i := range gets {
		line, err := r.ReadString('\n')
		if err != nil || line != want {
			t.Fatalf("slow client's GET %d: header %q %v, want %q", i, line, err, want)
		}
		if _, err := io.ReadFull(r, body); err != nil {
			t.Fatalf("slow client's GET %d: %v", i, err)
		}
		if string(body[:len(big)]) != big || string(body[len(big):]) != "\r\n" {
			t.Fatalf("slow client's GET %d: the value came back changed", i)
		}
	}
}

// TestPipelineBeyondMaxQueued: a client pipelines three times more
// commands than a session keeps outstanding (1024) behind a slow first
// one, so its reader must stop and wait for room until the answers flow;
// then every answer comes, in order.
func TestPipelineBeyondMaxQueued(t *testing.T) {
	a := startRedis(t)
	addr, _, _ := proxy(t, a)
	c := connect(t, addr)
	c.c.SetDeadline(time.Now().Add(30 * time.Second))
	const n = 3000
	cmds := [][]string{{"DEBUG", "SLEEP", "0.3"}}
	for range n {
		cmds = append(cmds, []string{"INCR", "queued"})
	}
	c.send(t, cmds...)
	if r := c.reply(t); r != "+OK" {
		t.Fatalf("DEBUG SLEEP: %q", r)
	}
	for i := range n {
		if r, want := c.reply(t), fmt.Sprintf(":%d", i+1); r != want {
			t.Fatalf("INCR %d: %q, want %q", i, r, want)
		}
	}
}

// TestRequestsBeforeResetStillSent: a client pipelines commands and
// resets its connection at once. Answering it then fails, but every
// command it sent before the reset still reaches the server: the
// session's reader, held back here by its limit of outstanding answers
// behind a slow first command, reads them on (commands a client sent
// before going away, like RocketMQ's one-way offset commits, are not
// dropped because an answer could not be written).
func TestRequestsBeforeResetStillSent(t *testing.T) {
	a := startRedis(t)
	addr, _, _ := proxy(t, a)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	const n = 1500 // more than a session keeps outstanding (1024)
	cmds := []string{command("DEBUG", "SLEEP", "0.5")}
	for range n {
		cmds = append(cmds, command("INCR", "sent"))
	}
	cmds = append(cmds, command("SET", "last", "1"))
	if _, err := io.WriteString(c, strings.Join(cmds, "")); err != nil {
		t.Fatal(err)
	}
	c.(*net.TCPConn).SetLinger(0) // close with a reset
	c.Close()

	direct := connect(t, a.String())
	direct.c.SetDeadline(time.Now().Add(30 * time.Second))
	deadline := time.Now().Add(20 * time.Second)
	for {
		direct.send(t, []string{"GET", "last"}, []string{"GET", "sent"})
		last, sent := direct.reply(t), direct.reply(t)
		if last == "$1" && sent == fmt.Sprintf("$%d", n) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the client's reset: last %s, sent %s, want $1 and $%d (every command it sent)", last, sent, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestValuesIntactAcrossReusedBuffers: read buffers go back to a pool
// once every command and reply they held is answered, and the next reads
// of any connection fill them again. Six clients pipeline SETs and GETs
// of values of many sizes (a few bytes to 6 KiB, so buffers roll over
// every few commands, some mid-frame) through the shared connection; every
// GET must read back exactly the value its client set, byte for byte.
func TestValuesIntactAcrossReusedBuffers(t *testing.T) {
	a := startRedis(t)
	addr, _, _ := proxy(t, a)
	clients(t, 6, func(cl int) error {
		c := connect(t, addr)
		for round := range 12 {
			var cmds [][]string
			var want []string
			for i := range 16 {
				key := fmt.Sprintf("{reuse}%d:%d", cl, i)
				size := (cl*977 + round*613 + i*389) % 6144
				val := strings.Repeat(string(rune('a'+(cl+round+i)%26)), size) + fmt.Sprintf("|%d/%d/%d", cl, round, i)
				cmds = append(cmds, []string{"SET", key, val}, []string{"GET", key})
				want = append(want, "+OK", "$"+val)
			}
			c.send(t, cmds...)
			for i, w := range want {
				if r := c.reply(t); r != w {
					return fmt.Errorf("client %d round %d reply %d: %.40q… (%d bytes), want %.40q… (%d bytes)", cl, round, i, r, len(r), w, len(w))
				}
			}
		}
		return nil
	})
}

// TestPipelineBatchCountsEach: commands pipelined in one write are
// handled as batches (registered, picked, written, matched and counted a
// read's worth at a time), yet each is still balanced on its own (a
// round robin cluster spreads one read's commands over both servers),
// answered in order, and counted once in the request counter and the
// latency histogram.
func TestPipelineBatchCountsEach(t *testing.T) {
	a, b := startRedis(t), startRedis(t)
	reg := prometheus.NewRegistry()
	m := rpc.NewMetrics(reg)
	addr, _, _ := proxyUpstream(t, rpc.PoolOptions{}, cluster.RoundRobin, rpc.Upstream{Metrics: m, Service: "batch"}, a, b)
	const n = 300
	c := connect(t, addr)
	var cmds [][]string
	for i := range n {
		cmds = append(cmds, []string{"ECHO", strconv.Itoa(i)})
	}
	c.send(t, cmds...)
	for i := range n {
		if r, want := c.reply(t), "$"+strconv.Itoa(i); r != want {
			t.Fatalf("reply %d: %q, want %q", i, r, want)
		}
	}
	for _, s := range []netip.AddrPort{a, b} {
		if info := connect(t, s.String()).do(t, "INFO", "commandstats"); !strings.Contains(info, "cmdstat_echo:calls=") {
			t.Errorf("server %s ran no ECHO: one read's commands were not spread (%q)", s, info)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var ok float64
	var observed uint64
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			switch mf.GetName() {
			case "weir_rpc_requests_total":
				ok += mt.GetCounter().GetValue()
			case "weir_rpc_request_duration_seconds":
				observed += mt.GetHistogram().GetSampleCount()
			}
		}
	}
	if ok != n || observed != n {
		t.Errorf("counted %v requests and observed %d durations, want %d each", ok, observed, n)
	}
}
