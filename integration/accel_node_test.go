package integration

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// TestEBPFAccelerationSameNode (issue 12, Build: "the agent's upstream ↔ a
// server on the same node"): with capture.ebpf.accelerateNode on (the
// default), a captured client's connection to a service whose endpoint is
// a pod on the same node runs through two accelerated pairs: the app and
// the agent's outbound listener inside the client pod, and the agent's
// upstream socket (in the client pod's netns) and the server's accepted
// socket (in the server pod's netns). Through both, v4 and v6: 64 MiB
// each way sha256-exact and 10,000 echoed messages, counted as same-node
// sockets and as redirected sends; 1,000 half-closed connections each
// exact and each a same-node pair; a client and a server that go away
// mid-stream (the server resets) end promptly. A server on another node
// (a second node netns behind a veth, whose listener the node's programs
// never see) is still reached, exact, and its upstream is left out
// (node_no_peer), not accelerated.
func TestEBPFAccelerationSameNode(t *testing.T) {
	opts := pumpWorld.nodeOptions()
	opts.EBPFAccelerate = true
	w := pumpWorld
	node := testworld.NewNode(t, opts)
	pump := testworld.Pump(t)
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	srv := node.MustAddPod(t, "backend", "srv")
	agent.Stop(t)

	// The other node: a netns routed from this node's netns over a veth;
	// its pump server runs in the test's own cgroup, outside the node's.
	other := testworld.NewNetns(t, "wo-")
	node.MustRun(t, "ip", "link", "add", "weir-other", "type", "veth", "peer", "name", "eth0", "netns", other.Name)
	node.MustRun(t, "ip", "addr", "add", "10.254.0.1/30", "dev", "weir-other")
	node.MustRun(t, "ip", "link", "set", "weir-other", "up")
	node.MustRun(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	other.MustRun(t, "ip", "addr", "add", "10.254.0.2/30", "dev", "eth0")
	other.MustRun(t, "ip", "link", "set", "eth0", "up")
	other.MustRun(t, "ip", "route", "add", "default", "via", "10.254.0.1")
	otherOut := &syncBuffer{}
	otherSrv := other.Command(context.Background(), pump, "serve", "10.254.0.2:9000")
	otherSrv.Stdout, otherSrv.Stderr = otherOut, otherOut
	if err := otherSrv.Start(); err != nil {
		t.Fatalf("start the other node's pump server: %v", err)
	}
	t.Cleanup(func() { otherSrv.Process.Kill(); otherSrv.Wait() })

	var services []any
	for _, fam := range w.families() {
		services = append(services, map[string]any{
			"name": "pump-" + fam, "address": hostPort(vip(fam).Addr(), 9000),
			"endpoints": []string{hostPort(addr(srv, fam), 9000)}, "protocol": "tcp",
		})
	}
	const otherVIP = "10.96.0.20:9000"
	services = append(services, map[string]any{
		"name": "pump-other", "address": otherVIP, "endpoints": []string{"10.254.0.2:9000"}, "protocol": "tcp",
	})
	agent = node.StartAgent(t, map[string]any{
		"capture":  map[string]any{"namespaces": []string{"demo"}},
		"services": services,
	})
	client := node.MustAddPod(t, "demo", "client")
	if !strings.Contains(agent.Log(), `"accelerateNode":true`) {
		t.Fatalf("the agent did not turn the same-node acceleration on (it loads eBPF at the first pod):\n%s", agent.Log())
	}
	w.assertNoRulesIn(t, client)
	srvOut := startPumpServer(t, srv, pump)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(otherOut.String(), "ready") {
		if time.Now().After(deadline) {
			t.Fatalf("the other node's pump server is not ready: %s", otherOut)
		}
		time.Sleep(20 * time.Millisecond)
	}

	accel := func(event string) float64 {
		return agent.Metric(t, fmt.Sprintf(`weir_ebpf_accel_total{event=%q}`, event))
	}
	const mib64 = 64 << 20
	for _, fam := range w.families() {
		to := hostPort(vip(fam).Addr(), 9000)
		nodeBefore, bytesBefore, msgsBefore := accel("node_sockets"), accel("bytes"), accel("msgs")
		out, took, err := runPump(t, client, pump, "bulk", to, fmt.Sprint(mib64), fmt.Sprint(mib64))
		if err != nil || !strings.HasPrefix(out, "ok ") {
			t.Fatalf("%s: 64 MiB each way: %v: %s", fam, err, out)
		}
		t.Logf("%s: 64 MiB each way in %s: %s", fam, took.Round(time.Millisecond), out)
		out, took, err = runPump(t, client, pump, "msgs", to, "10000", "64")
		if err != nil || !strings.HasPrefix(out, "ok ") {
			t.Fatalf("%s: 10,000 messages: %v: %s", fam, err, out)
		}
		t.Logf("%s: 10,000 echoed messages in %s", fam, took.Round(time.Millisecond))
		// Two connections, each with a same-node pair of two sockets.
		if d := accel("node_sockets") - nodeBefore; d != 4 {
			t.Fatalf("%s: %v sockets of same-node pairs put in the sockhash, want 4 (both ends of two connections); node_no_peer %v, sockets %v, insert_failed %v", fam, d, accel("node_no_peer"), accel("sockets"), accel("insert_failed"))
		}
		// Both pairs carry both directions of every message.
		b, m := accel("bytes")-bytesBefore, accel("msgs")-msgsBefore
		if want := 2.0 * 2 * 10000 * 64; b < want {
			t.Fatalf("%s: %v bytes redirected by the kernel, want at least %v (two pairs, both ways)", fam, b, want)
		}
		if want := 2.0 * 2 * 10000; m < want {
			t.Fatalf("%s: %v sends redirected, want at least %v", fam, m, want)
		}
		t.Logf("%s: %v bytes in %v sends redirected", fam, b, m)
	}

	// Half-close churn: the client half-closes, the server answers and
	// closes first; every one exact, every upstream a same-node pair.
	nodeBefore := accel("node_sockets")
	pumpConns(t, client, pump, hostPort(vip("v4").Addr(), 9000), 4, 250)
	if d := accel("node_sockets") - nodeBefore; d < 2*4*250 {
		t.Fatalf("connection churn: %v sockets of same-node pairs, want %d", d, 2*4*250)
	}

	// The other node: reached and exact, its upstream left out.
	noPeer := accel("node_no_peer")
	nodeBefore = accel("node_sockets")
	out, _, err := runPump(t, client, pump, "bulk", otherVIP, fmt.Sprint(mib64), fmt.Sprint(mib64))
	if err != nil || !strings.HasPrefix(out, "ok ") {
		t.Fatalf("other node: 64 MiB each way: %v: %s", err, out)
	}
	out, _, err = runPump(t, client, pump, "msgs", otherVIP, "10000", "64")
	if err != nil || !strings.HasPrefix(out, "ok ") {
		t.Fatalf("other node: 10,000 messages: %v: %s", err, out)
	}
	if d := accel("node_no_peer") - noPeer; d != 2 {
		t.Fatalf("other node: %v upstreams left out as not on this node, want 2", d)
	}
	if d := accel("node_sockets") - nodeBefore; d != 0 {
		t.Fatalf("other node: %v sockets put in the sockhash as same-node pairs, want 0", d)
	}

	// Peer reset: the client quits after 1 MiB of a 1 GiB download, then
	// the server resets after 1 MiB; nothing hangs.
	v4 := hostPort(vip("v4").Addr(), 9000)
	quitMidStream(t, agent, pump, client, v4, srvOut, client, v4)
	t.Logf("acceleration counters: sockets %v, node_sockets %v, node_no_peer %v, msgs %v, bytes %v, no_peer %v, peer_full %v, unread %v",
		accel("sockets"), accel("node_sockets"), accel("node_no_peer"), accel("msgs"), accel("bytes"), accel("no_peer"), accel("peer_full"), accel("unread"))
}
