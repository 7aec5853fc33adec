package integration

import (
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// A new agent takes over from a running one: no request fails while it
// does, a connection the old agent relays keeps working through the drain,
// the old agent exits 0, and traffic then goes through the new one.
func TestTakeoverDropsNothing(t *testing.T) {
	node := testworld.NewNode(t, world{"1.0.0", "redirect", "v4", ""}.nodeOptions())
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "drainTimeout": "20s"}
	old := node.StartAgent(t, cfg)
	srv := node.MustAddPod(t, "backend", "server")
	srv.StartNginx(t, 8080, "server")
	client := node.MustAddPod(t, "demo", "client")
	startEcho(t, srv)
	long := dialEcho(t, client, srv)
	echo := long.echo
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	// Requests on new connections all through the takeover.
	var sent, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	loopDone := make(chan struct{})
	target := fmt.Sprintf("http://%s:8080/", srv.IP4)
	go func() {
		defer close(loopDone)
		for i := 0; i < 20000; i++ {
			select {
			case <-stop:
				return
			default:
			}
			sent.Add(1)
			if body, err := client.Get(target); err != nil || strings.TrimSpace(body) != "server" {
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
	// The old agent drains: the connection it relays still works.
	if err := echo("during drain"); err != nil {
		t.Fatalf("relayed connection broke during the takeover: %v", err)
	}
	long.c.Close()
	if err := old.Wait(t, 25*time.Second); err != nil {
		t.Fatalf("old agent exit: %v, want status 0", err)
	}
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-loopDone
	if failed.Load() != 0 {
		t.Fatalf("%d of %d requests failed during the takeover; first: %v", failed.Load(), sent.Load(), firstErr.Load())
	}
	t.Logf("%d requests, none failed, across the takeover", sent.Load())
	before := outbound(t, successor)
	if body, err := client.Get(target); err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("request after the takeover: %v %q", err, body)
	}
	if outbound(t, successor)-before != 1 {
		t.Fatal("request after the takeover did not go through the new agent")
	}
	if err := node.Check(client); err != nil {
		t.Fatalf("CHECK after the takeover: %v", err)
	}
}
