package integration

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

const agentPkg = "github.com/weir-mesh/weir/agent"

// Must shows 2-4 (issue 16): at a takeover from release N to release N+1
// (two builds of the agent), 200 long-lived L4 connections of an echo
// protocol (a message every 100 ms) and idle redis-cli sessions are handed
// to the successor with their sockets: all survive byte-exact, the servers
// see no new connection, and the old agent exits long before its drain
// deadline. A bulk transfer busy at the takeover is drained, not moved,
// and completes byte-exact; the agents' counters say which path each
// connection took. Then an agent speaking an unknown hand-over version is
// refused, with a log line on both sides, and its connections drain.
func TestTakeoverHandsConnectionsOver(t *testing.T) {
	testworld.RequireTool(t, "redis-server", "redis-cli")
	relN := testworld.AgentBuild(t, "-X "+agentPkg+".Release=N")
	relN1 := testworld.AgentBuild(t, "-X "+agentPkg+".Release=N+1")
	// L4 relays on goroutines (runtime.loops: off), then on the event
	// loops (the default), whose quiet connections are taken off the loops
	// and handed over too, and which the successor relays on its loops.
	for _, loops := range []string{"off", "2"} {
		t.Run("loops-"+loops, func(t *testing.T) { takeoverHandsConnectionsOver(t, relN, relN1, loops) })
	}
}

func takeoverHandsConnectionsOver(t *testing.T, relN, relN1, loops string) {
	node := testworld.NewNode(t, world{"1.0.0", "redirect", "v4", ""}.nodeOptions())
	const drain = 60 * time.Second
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "drainTimeout": drain.String(),
		"runtime": map[string]any{"loops": loops}}
	old := node.StartAgentBinary(t, cfg, relN)
	if loops != "off" {
		waitLog(t, old, "L4 relays on event loops", 5*time.Second)
	}
	srv := node.MustAddPod(t, "backend", "server")
	client := node.MustAddPod(t, "demo", "client")

	// Servers in the server pod: an echo server and a bulk sink counting
	// their accepts, and redis-server.
	var echoAccepts atomic.Int64
	echoLn := srv.Listen(t, "0.0.0.0:7000")
	go func() {
		for {
			c, err := echoLn.Accept()
			if err != nil {
				return
			}
			echoAccepts.Add(1)
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	const bulkSize = 256 << 20
	bulkGot := make(chan [32]byte, 1)
	bulkLn := srv.Listen(t, "0.0.0.0:7001")
	go func() {
		c, err := bulkLn.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		// Read at about 64 MiB/s: the transfer stays busy across the
		// takeover (full queues), so it drains instead of moving.
		h := sha256.New()
		buf := make([]byte, 256<<10)
		for n := 0; n < bulkSize; {
			m, err := io.ReadFull(c, buf[:min(len(buf), bulkSize-n)])
			h.Write(buf[:m])
			n += m
			if err != nil {
				break
			}
			time.Sleep(4 * time.Millisecond)
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		bulkGot <- sum
	}()
	srv.Start(t, "redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	srv.WaitPort(t, "127.0.0.1:6379")
	redisAccepts := func() int {
		out, err := srv.Run("redis-cli", "-p", "6379", "info", "stats")
		m := regexp.MustCompile(`total_connections_received:(\d+)`).FindStringSubmatch(out)
		if err != nil || m == nil {
			t.Fatalf("redis info stats: %v\n%s", err, out)
		}
		n, _ := strconv.Atoi(m[1])
		return n
	}

	// 200 echo connections, a message every 100 ms each.
	const echoConns = 200
	var (
		stop     = make(chan struct{})
		wg       sync.WaitGroup
		msgs     atomic.Int64
		echoErrs atomic.Int64
		firstErr atomic.Value
	)
	var echo []net.Conn
	for i := range echoConns {
		c, err := client.Dial(fmt.Sprintf("%s:7000", srv.IP4), 5*time.Second)
		if err != nil {
			t.Fatalf("echo connection %d: %v", i, err)
		}
		t.Cleanup(func() { c.Close() })
		echo = append(echo, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := bufio.NewReader(c)
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for seq := 0; seq < 3000; seq++ {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				msg := fmt.Sprintf("conn %03d message %06d %s\n", i, seq, strings.Repeat("x", i%50))
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.WriteString(c, msg); err != nil {
					echoErrs.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
					return
				}
				got, err := r.ReadString('\n')
				if err != nil || got != msg {
					echoErrs.Add(1)
					firstErr.CompareAndSwap(nil, fmt.Sprintf("conn %d: echo %q, want %q (%v)", i, got, msg, err))
					return
				}
				msgs.Add(1)
			}
		}()
	}
	// Idle redis-cli sessions: each says its server-side id now and after.
	const redisSessions = 4
	type session struct {
		cmd *exec.Cmd
		in  io.WriteCloser
		out *bufio.Reader
		id  string
	}
	ask := func(s *session, cmd string) string {
		if _, err := io.WriteString(s.in, cmd+"\n"); err != nil {
			t.Fatalf("redis-cli: %v", err)
		}
		line, err := s.out.ReadString('\n')
		if err != nil {
			t.Fatalf("redis-cli %s: %v", cmd, err)
		}
		return strings.TrimSpace(line)
	}
	var sessions []*session
	for range redisSessions {
		cmd := client.Command(t.Context(), "redis-cli", "-h", srv.IP4.String(), "-p", "6379")
		in, _ := cmd.StdinPipe()
		outp, _ := cmd.StdoutPipe()
		if err := cmd.Start(); err != nil {
			t.Fatalf("redis-cli: %v", err)
		}
		t.Cleanup(func() { in.Close(); cmd.Process.Kill(); cmd.Wait() })
		s := &session{cmd: cmd, in: in, out: bufio.NewReader(outp)}
		s.id = ask(s, "CLIENT ID")
		sessions = append(sessions, s)
	}
	redisBefore := redisAccepts()
	time.Sleep(500 * time.Millisecond)
	if echoAccepts.Load() != echoConns {
		t.Fatalf("echo server accepted %d connections, want %d", echoAccepts.Load(), echoConns)
	}

	// The bulk transfer starts, then release N+1 takes over.
	bulkSent := make(chan [32]byte, 1)
	go func() {
		c, err := client.Dial(fmt.Sprintf("%s:7001", srv.IP4), 5*time.Second)
		if err != nil {
			bulkSent <- [32]byte{}
			return
		}
		defer c.Close()
		h := sha256.New()
		rng := rand.NewChaCha8([32]byte{1, 6})
		buf := make([]byte, 1<<20)
		for n := 0; n < bulkSize; n += len(buf) {
			rng.Read(buf)
			h.Write(buf)
			if _, err := c.Write(buf); err != nil {
				break
			}
		}
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		bulkSent <- sum
	}()
	time.Sleep(time.Second)
	before := msgs.Load()
	succ := node.StartAgentBinary(t, cfg, relN1)
	tookOver := time.Now()
	waitLog(t, succ, `"took over"`, 15*time.Second)
	if err := old.Wait(t, drain/2); err != nil {
		t.Fatalf("old agent exit: %v, want status 0", err)
	}
	exited := time.Since(tookOver)
	sent, got := <-bulkSent, <-bulkGot
	if sent != got {
		t.Fatalf("bulk transfer across the takeover: sha256 sent %x, received %x", sent[:8], got[:8])
	}
	time.Sleep(time.Second) // the echo goes on through the successor
	if n := echoErrs.Load(); n != 0 {
		t.Fatalf("%d echo connections failed across the takeover; first: %v", n, firstErr.Load())
	}
	if msgs.Load() <= before+echoConns {
		t.Fatalf("echo messages did not go on after the takeover (%d before, %d now)", before, msgs.Load())
	}
	if n := echoAccepts.Load(); n != echoConns {
		t.Fatalf("echo server accepted %d connections, want %d: some reconnected", n, echoConns)
	}
	for _, s := range sessions {
		if id := ask(s, "CLIENT ID"); id != s.id {
			t.Fatalf("redis-cli session reconnected: client id %s, was %s", id, s.id)
		}
	}
	if n := redisAccepts(); n != redisBefore+1 { // +1: this query's own connection
		t.Fatalf("redis-server accepted %d connections across the takeover, want 0", n-redisBefore-1)
	}
	// Which path each connection took: the old agent's exit line, the
	// successor's counter.
	paths := regexp.MustCompile(`"L4 connections at the takeover","handedOver":(\d+),"drained":(\d+),"cut":(\d+)`).FindStringSubmatch(old.Log())
	if paths == nil {
		t.Fatalf("the old agent logged no takeover paths:\n%s", old.Log())
	}
	if want := strconv.Itoa(echoConns + redisSessions); paths[1] != want || paths[2] != "1" || paths[3] != "0" {
		t.Fatalf("old agent: handed over %s, drained %s, cut %s; want %s, 1 (the bulk transfer), 0", paths[1], paths[2], paths[3], want)
	}
	if n := succ.Metric(t, `weir_handover_connections_total{path="adopted"}`); n != echoConns+redisSessions {
		t.Fatalf("successor adopted %v connections, want %d", n, echoConns+redisSessions)
	}
	// With the loops, what it adopted it relays on them, as it would a
	// connection of its own.
	onLoops := 0
	if loops != "off" {
		onLoops = echoConns + redisSessions
	}
	if n := succ.Metric(t, `weir_event_loop_connections`); n != float64(onLoops) {
		t.Fatalf("successor relays %v connections on its event loops, want %d", n, onLoops)
	}
	if !strings.Contains(succ.Log(), `"predecessorRelease":"N"`) || !strings.Contains(old.Log(), `"release":"N"`) {
		t.Fatal("the logs do not show release N handing over to N+1")
	}
	t.Logf("release N -> N+1: %d connections handed over, the bulk transfer drained (%d MiB byte-exact); old agent exited %v after the takeover (drain deadline %v); %d echo messages in all",
		echoConns+redisSessions, bulkSize>>20, exited.Round(time.Millisecond), drain, msgs.Load())

	// Release N+1 -> a future release speaking hand-over version 99 (it
	// still knows version 1), then back: N+1 does not know 99 and refuses.
	future := testworld.AgentBuild(t, "-X "+agentPkg+".Release=future -X "+agentPkg+".handoverVersion=99")
	fut := node.StartAgentBinary(t, cfg, future)
	waitLog(t, fut, `"took over"`, 15*time.Second)
	if err := succ.Wait(t, drain/2); err != nil {
		t.Fatalf("N+1 agent exit: %v", err)
	}
	if n := fut.Metric(t, `weir_handover_connections_total{path="adopted"}`); n != echoConns+redisSessions {
		t.Fatalf("future release adopted %v connections from N+1, want %d", n, echoConns+redisSessions)
	}
	if n := fut.Metric(t, `weir_event_loop_connections`); n != float64(onLoops) {
		t.Fatalf("future release relays %v connections on its event loops, want %d", n, onLoops)
	}
	close(stop)
	wg.Wait()
	if n := echoErrs.Load(); n != 0 || echoAccepts.Load() != echoConns {
		t.Fatalf("after two hand-overs: %d echo failures (%v), %d accepts", n, firstErr.Load(), echoAccepts.Load())
	}
	for _, s := range sessions {
		if id := ask(s, "CLIENT ID"); id != s.id {
			t.Fatalf("redis-cli session reconnected after the second hand-over: client id %s, was %s", id, s.id)
		}
	}
	// The long-lived connections end here, so the refused hand-over below
	// leaves one connection to drain.
	for _, c := range echo {
		c.Close()
	}
	for _, s := range sessions {
		s.in.Close()
		s.cmd.Wait()
	}
	waitMetric(t, fut, `weir_connections_active{direction="outbound"}`, 0, 15*time.Second)
	// One connection open through the future release when N+1 returns.
	lc, err := client.Dial(fmt.Sprintf("%s:7000", srv.IP4), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	back := node.StartAgentBinary(t, cfg, relN1)
	waitLog(t, back, `"took over"`, 15*time.Second)
	waitLog(t, back, `unknown hand-over protocol version \"99\"`, 15*time.Second)
	waitLog(t, fut, `connection hand-over refused by the successor`, 15*time.Second)
	// Refused: the connection stays with the future release, draining.
	lc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(lc, "still here\n"); err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(lc).ReadString('\n'); err != nil || line != "still here\n" {
		t.Fatalf("draining connection: %q %v", line, err)
	}
	lc.Close()
	if err := fut.Wait(t, drain/2); err != nil {
		t.Fatalf("future release exit: %v", err)
	}
	if !bytes.Contains([]byte(fut.Log()), []byte(`"handedOver":0,"drained":1,"cut":0`)) {
		t.Fatalf("future release's takeover paths:\n%s", fut.Log())
	}
}

func waitLog(t *testing.T, a *testworld.Agent, needle string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !strings.Contains(a.Log(), needle) {
		if time.Now().After(deadline) {
			t.Fatalf("agent never logged %s:\n%s", needle, a.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}
