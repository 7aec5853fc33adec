package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// STATUS and GC exist from CNI spec 1.1.0 on: STATUS follows the agent's
// availability; GC releases every attachment the runtime no longer lists.
func TestStatusAndGC(t *testing.T) {
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0"})
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}}
	node.WriteAgentConfig(t, cfg)
	if err := node.Status(); err == nil || !strings.Contains(err.Error(), "not available") {
		t.Fatalf("STATUS with no agent: %v; want a not-available error", err)
	}
	agent := node.StartAgent(t, cfg)
	if err := node.Status(); err != nil {
		t.Fatalf("STATUS with the agent up: %v", err)
	}
	keep := node.MustAddPod(t, "demo", "keep")
	drop := node.MustAddPod(t, "demo", "drop")
	if n := agent.Metric(t, "weir_pods_captured"); n != 2 {
		t.Fatalf("pods captured %v, want 2", n)
	}
	if err := node.GC(keep); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if n := agent.Metric(t, "weir_pods_captured"); n != 1 {
		t.Fatalf("after GC the agent holds %v pods, want 1", n)
	}
	if installed, err := redirect.Installed(drop.Path); err != nil || installed {
		t.Fatalf("GC left rules in the dropped pod: installed=%v err=%v", installed, err)
	}
	if err := node.Check(keep); err != nil {
		t.Fatalf("the kept pod no longer checks out: %v", err)
	}
}

// A pod whose netns vanishes without a DEL is released by the agent's sweep,
// so the agent does not keep a dead namespace alive.
func TestSweepReleasesVanishedNetns(t *testing.T) {
	node := testworld.NewNode(t, testworld.NodeOptions{})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "sweepInterval": "200ms"})
	p := node.MustAddPod(t, "demo", "ghost")
	p.MustRunDelete(t)
	deadline := time.Now().Add(10 * time.Second)
	for agent.Metric(t, "weir_pods_captured") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("agent still holds the pod 10s after its netns vanished")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// SIGTERM: the agent stops accepting and closes its listeners at once, lets
// open connections finish within drainTimeout, and exits 0.
func TestSigtermDrains(t *testing.T) {
	node := testworld.NewNode(t, testworld.NodeOptions{})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "drainTimeout": "3s"})
	server := node.MustAddPod(t, "backend", "echo")
	client := node.MustAddPod(t, "demo", "client")
	startEcho(t, server)
	conn := dialEcho(t, client, server)
	echo := conn.echo
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}
	stopped := make(chan error, 1)
	start := time.Now()
	go func() { stopped <- agent.Stop(t) }()
	// Listeners close at once: wait until the pod has none.
	for strings.Contains(client.MustRun(t, "ss", "-Hltn"), ":15001") {
		if time.Since(start) > 5*time.Second {
			t.Fatal("agent listeners still open 5s after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := echo("during drain"); err != nil {
		t.Fatalf("open connection broke during drain: %v", err)
	}
	if err := <-stopped; err != nil {
		t.Fatalf("agent exit after SIGTERM: %v, want status 0", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("agent took %v to exit with drainTimeout 3s", d)
	}
}
