package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// syncBuffer is a bytes.Buffer a running command writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startPumpServer runs `pump serve :9000` as p's app (its netns and cgroup)
// until cleanup and returns its output.
func startPumpServer(t *testing.T, p *testworld.Pod, pump string) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd := p.Command(context.Background(), pump, "serve", ":9000")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pump server in %s: %v", p.Name, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(out.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatalf("pump server in %s not ready: %s", p.Name, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return out
}

// runPump runs a pump client as p's app, bounded to four minutes, and
// returns its output and how long it took.
func runPump(t *testing.T, p *testworld.Pod, pump string, args ...string) (string, time.Duration, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	start := time.Now()
	out, err := p.Command(ctx, pump, args...).CombinedOutput()
	return strings.TrimSpace(string(out)), time.Since(start), err
}

// TestEBPFAcceleration (issue 12, must-show 4): with eBPF acceleration on
// (the default), every local pair the agent takes part in is redirected by
// the kernel, and through every accelerated path (outbound: app → agent;
// inbound: agent → app; captured pod to captured pod: both) a 1 GiB stream
// each way is byte-exact by sha256, 10,000 small messages echo exactly, and
// the agent's acceleration counters show the redirected bytes; 4,000
// short connections are each exact and each an accelerated pair. The relay
// between an accelerated socket and the upstream must not splice (it would
// wait forever for bytes the sockmap queue holds). A client that exits
// mid-stream ends the server's send with an error, and a server that exits
// mid-stream ends the client's read: nothing hangs.
func TestEBPFAcceleration(t *testing.T) {
	opts := pumpWorld.nodeOptions()
	opts.EBPFAccelerate = true
	pw := newPumpNode(t, opts)
	agent, client, app, outsider, srvOut, pump := pw.agent, pw.client, pw.app, pw.outsider, pw.srvOut, pw.pump

	accel := func(event string) float64 {
		return agent.Metric(t, fmt.Sprintf(`weir_ebpf_accel_total{event=%q}`, event))
	}
	const gib = 1 << 30
	paths := []struct {
		name  string
		from  *testworld.Pod
		to    string
		pairs int // accelerated pairs on the way
	}{
		{"outbound v4 (app to agent)", client, hostPort(vip("v4").Addr(), 9000), 1},
		{"outbound v6 (app to agent)", client, hostPort(vip("v6").Addr(), 9000), 1},
		{"inbound v4 (agent to app)", outsider, hostPort(app.IP4, 9000), 1},
		{"captured to captured v6 (both)", client, hostPort(app.IP6, 9000), 2},
	}
	for _, p := range paths {
		bytesBefore, msgsBefore := accel("bytes"), accel("msgs")
		out, took, err := runPump(t, p.from, pump, "bulk", p.to, fmt.Sprint(gib), fmt.Sprint(gib))
		if err != nil || !strings.HasPrefix(out, "ok ") {
			t.Fatalf("%s: 1 GiB each way: %v: %s", p.name, err, out)
		}
		t.Logf("%s: 1 GiB each way in %s: %s", p.name, took.Round(time.Millisecond), out)
		out, took, err = runPump(t, p.from, pump, "msgs", p.to, "10000", "64")
		if err != nil || !strings.HasPrefix(out, "ok ") {
			t.Fatalf("%s: 10,000 messages: %v: %s", p.name, err, out)
		}
		t.Logf("%s: 10,000 echoed messages in %s", p.name, took.Round(time.Millisecond))
		// Each pair carries both directions of each message through its
		// sk_msg redirect; the bulk streams partly (the redirect gives way
		// to TCP whenever the reader lags a receive buffer behind), so
		// they prove the ordering rule by their hashes, not by counters.
		b, m := accel("bytes")-bytesBefore, accel("msgs")-msgsBefore
		if want := float64(p.pairs) * 2 * 10000 * 64; b < want {
			t.Fatalf("%s: %v bytes redirected by the kernel, want at least %v", p.name, b, want)
		}
		if want := float64(p.pairs) * 2 * 10000; m < want {
			t.Fatalf("%s: %v sendmsg calls redirected, want at least %v", p.name, m, want)
		}
		t.Logf("%s: %v bytes in %v sends redirected", p.name, b, m)
	}
	t.Logf("acceleration counters: sockets %v, msgs %v, bytes %v, no_peer %v, peer_full %v, unread %v",
		accel("sockets"), accel("msgs"), accel("bytes"), accel("no_peer"), accel("peer_full"), accel("unread"))
	// The bulk streams outran their readers: the flow control sent part of
	// them through TCP instead of growing the peers' sockmap queues.
	if accel("peer_full") == 0 || accel("unread") == 0 {
		t.Fatalf("4 GiB of bulk streams never found a peer's queue full or TCP bytes unread: the flow control did not engage")
	}

	// Connection churn: 8 clients × 500 connections of one small exchange
	// each (the client half-closes, the server answers and closes); every
	// one exact, every pair in the sockhash.
	socketsBefore := accel("sockets")
	pumpConns(t, client, pump, hostPort(vip("v4").Addr(), 9000), 8, 500)
	if d := accel("sockets") - socketsBefore; d < 2*8*500 {
		t.Fatalf("connection churn: %v sockets put in the sockhash, want %d (both ends of every connection)", d, 2*8*500)
	}

	// The client goes away after 1 MiB of a 1 GiB download, then the
	// server does (both pairs accelerated).
	quitMidStream(t, agent, pump, client, hostPort(vip("v4").Addr(), 9000), srvOut, client, hostPort(app.IP4, 9000))
}

// pumpWorld is the eBPF dual-stack world of the pump tests.
var pumpWorld = world{"1.1.0", "ebpf", "dual", ""}

// pumpNode is a node of pumpWorld with an agent whose services pump-v4 and
// pump-v6 (protocol tcp) lead to srv, a pump server in the uncaptured
// namespace backend, beside outsider (uncaptured too); client and app are
// captured pods of namespace demo, app running a pump server as well.
type pumpNode struct {
	agent                      *testworld.Agent
	srv, outsider, client, app *testworld.Pod
	srvOut, appOut             *syncBuffer
	pump                       string
}

// serverDiffs is what the pump servers said about streams they received
// wrong (where each first differs), for a failure message.
func (pw *pumpNode) serverDiffs() string {
	var lines []string
	for _, out := range []*syncBuffer{pw.srvOut, pw.appOut} {
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, "differs") {
				lines = append(lines, l)
			}
		}
	}
	return strings.Join(lines, "; ")
}

func newPumpNode(t *testing.T, opts testworld.NodeOptions) *pumpNode {
	t.Helper()
	w := pumpWorld
	node := testworld.NewNode(t, opts)
	pump := testworld.Pump(t)
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	srv := node.MustAddPod(t, "backend", "srv")
	outsider := node.MustAddPod(t, "backend", "outsider")
	agent.Stop(t)
	var services []any
	for _, fam := range w.families() {
		services = append(services, map[string]any{
			"name": "pump-" + fam, "address": hostPort(vip(fam).Addr(), 9000),
			"endpoints": []string{hostPort(addr(srv, fam), 9000)}, "protocol": "tcp",
		})
	}
	agent = node.StartAgent(t, map[string]any{
		"capture":  map[string]any{"namespaces": []string{"demo"}},
		"services": services,
	})
	client := node.MustAddPod(t, "demo", "client")
	app := node.MustAddPod(t, "demo", "app")
	w.assertNoRulesIn(t, client)
	srvOut := startPumpServer(t, srv, pump)
	appOut := startPumpServer(t, app, pump)
	return &pumpNode{agent: agent, srv: srv, outsider: outsider, client: client, app: app, srvOut: srvOut, appOut: appOut, pump: pump}
}

// pumpConns runs clients pump clients in p at once, each making n
// connections of one small exchange (the client half-closes, the server
// answers and closes), and fails unless every one was exact.
func pumpConns(t *testing.T, p *testworld.Pod, pump, to string, clients, n int) {
	t.Helper()
	var churn sync.WaitGroup
	churnErrs := make(chan string, clients)
	for range clients {
		churn.Add(1)
		go func() {
			defer churn.Done()
			out, _, err := runPump(t, p, pump, "conns", to, fmt.Sprint(n))
			if err != nil || !strings.HasPrefix(out, "ok ") {
				churnErrs <- fmt.Sprintf("%v: %s", err, out)
			}
		}()
	}
	churn.Wait()
	close(churnErrs)
	for e := range churnErrs {
		t.Fatalf("connection churn: %s", e)
	}
}

// quitMidStream: a client in from that goes away after 1 MiB of a 1 GiB
// download from to (a pump server writing its output to srvOut) ends the
// server's send through the agent with an error instead of a wait; a
// server (at serverTo) that goes away after 1 MiB ends the client's (in
// serverFrom) read short, promptly; then every relay in the agent ends.
func quitMidStream(t *testing.T, agent *testworld.Agent, pump string, from *testworld.Pod, to string, srvOut *syncBuffer, serverFrom *testworld.Pod, serverTo string) {
	t.Helper()
	const gib = 1 << 30
	out, _, err := runPump(t, from, pump, "bulk", to, "0", fmt.Sprint(gib), fmt.Sprint(1<<20))
	if err != nil || !strings.HasPrefix(out, "ok quitting") {
		t.Fatalf("client quitting mid-stream: %v: %s", err, out)
	}
	deadline := time.Now().Add(time.Minute)
	for !strings.Contains(srvOut.String(), "send:") {
		if time.Now().After(deadline) {
			t.Fatalf("the server's send went on for a minute after its client exited mid-stream:\n%s", srvOut)
		}
		time.Sleep(50 * time.Millisecond)
	}
	out, took, err := runPump(t, serverFrom, pump, "bulk", serverTo, "0", fmt.Sprint(gib), "-1")
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) || !strings.Contains(out, "received") {
		t.Fatalf("server quitting mid-stream: %v: %s; want the client to report a short read", err, out)
	}
	if took > time.Minute {
		t.Fatalf("server quitting mid-stream: the client noticed after %s", took)
	}
	deadline = time.Now().Add(30 * time.Second)
	for agent.Metric(t, `weir_connections_active{direction="outbound"}`)+agent.Metric(t, `weir_connections_active{direction="inbound"}`) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("connections still open in the agent 30 s after every client ended")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTakeoverEBPF: in ebpf mode (acceleration on) a new agent takes over
// from a running one: curl requests from a captured pod all succeed while it
// does, a 512 MiB transfer each way relayed by the old agent through an
// accelerated pair completes byte-exact, the old agent exits 0, and then
// new connections go through the successor, accelerated, byte-exact.
func TestTakeoverEBPF(t *testing.T) {
	w := world{"1.0.0", "ebpf", "v4", ""}
	opts := w.nodeOptions()
	opts.EBPFAccelerate = true
	node := testworld.NewNode(t, opts)
	pump := testworld.Pump(t)
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "drainTimeout": "90s"}
	old := node.StartAgent(t, cfg)
	srv := node.MustAddPod(t, "backend", "server")
	srv.StartNginx(t, 8080, "server")
	startPumpServer(t, srv, pump)
	client := node.MustAddPod(t, "demo", "client")
	target := fmt.Sprintf("http://%s:8080/", srv.IP4)
	if body, err := client.Curl(t, target); err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("request before the takeover: %v %q", err, body)
	}
	if outbound(t, old) == 0 {
		t.Fatal("the request before the takeover did not go through the agent")
	}

	bulk := make(chan string, 1)
	go func() {
		out, _, err := runPump(t, client, pump, "bulk", hostPort(srv.IP4, 9000), fmt.Sprint(512<<20), fmt.Sprint(512<<20))
		if err != nil {
			out = err.Error() + ": " + out
		}
		bulk <- out
	}()
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			if body, err := client.Curl(t, target, "--max-time", "5"); err != nil || strings.TrimSpace(body) != "server" {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%v %q", err, body))
			}
		}
	}()
	time.Sleep(300 * time.Millisecond)
	successor := node.StartAgent(t, cfg)
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(successor.Log(), `"took over"`) {
		if time.Now().After(deadline) {
			t.Fatalf("successor never took over:\n%s", successor.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	select {
	case out := <-bulk:
		if !strings.HasPrefix(out, "ok ") {
			t.Fatalf("512 MiB each way across the takeover: %s", out)
		}
		t.Logf("across the takeover: %s", out)
	case <-time.After(4 * time.Minute):
		t.Fatal("bulk transfer across the takeover did not end in 4 minutes")
	}
	if err := old.Wait(t, 95*time.Second); err != nil {
		t.Fatalf("old agent exit: %v, want status 0", err)
	}
	close(stop)
	<-loopDone
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during the takeover; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	t.Logf("%d curl requests, none failed, across the takeover", sent.Load())

	before, sockets := outbound(t, successor), successor.Metric(t, `weir_ebpf_accel_total{event="sockets"}`)
	out, _, err := runPump(t, client, pump, "msgs", hostPort(srv.IP4, 9000), "10000", "64")
	if err != nil || !strings.HasPrefix(out, "ok ") {
		t.Fatalf("10,000 messages after the takeover: %v: %s", err, out)
	}
	if outbound(t, successor)-before != 1 {
		t.Fatal("the connection after the takeover did not go through the new agent")
	}
	if d := successor.Metric(t, `weir_ebpf_accel_total{event="sockets"}`) - sockets; d < 2 {
		t.Fatalf("the pair after the takeover put %v sockets in the sockhash, want 2", d)
	}
}
