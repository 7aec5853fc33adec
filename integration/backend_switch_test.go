package integration

import (
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// trafficLoop sends requests on new connections until stopped and counts
// the ones that fail.
type trafficLoop struct {
	sent, failed atomic.Int64
	firstErr     atomic.Value
	stop         chan struct{}
	wg           sync.WaitGroup
}

func startTraffic(from *testworld.Pod, target, want string) *trafficLoop {
	l := &trafficLoop{stop: make(chan struct{})}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		for i := 0; i < 100000; i++ {
			select {
			case <-l.stop:
				return
			default:
			}
			l.sent.Add(1)
			if body, err := from.Get(target); err != nil || strings.TrimSpace(body) != want {
				l.failed.Add(1)
				l.firstErr.CompareAndSwap(nil, fmt.Sprintf("%s: %v %q", target, err, body))
			}
		}
	}()
	return l
}

func (l *trafficLoop) finish() (sent, failed int64, first any) {
	close(l.stop)
	l.wg.Wait()
	return l.sent.Load(), l.failed.Load(), l.firstErr.Load()
}

// Must show 2 (issue 15): a node switches backends with pods running. Each
// time, an agent configured with the next backend takes over from the
// running one and its start-up reconcile re-programs every captured pod in
// place. Requests into and out of captured pods run all along and none
// fails; afterwards each pod's rules are in the new backend only (no
// duplicate capture), its listeners are single, CHECK passes, and traffic
// goes through the new agent.
func TestBackendSwitchKeepsTraffic(t *testing.T) {
	testworld.RequireTool(t, "nft")
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) {
			w := world{"1.0.0", mode, "v4", ""}
			node := testworld.NewNode(t, w.nodeOptions())
			cfg := func(backend string) map[string]any {
				return map[string]any{
					"capture":      map[string]any{"namespaces": []string{"demo"}, "backend": backend},
					"drainTimeout": "5s",
				}
			}
			sequence := []string{nft, nftables, legacy, nftables, nft}
			agent := node.StartAgent(t, cfg(sequence[0]))
			srv := node.MustAddPod(t, "backend", "server")
			srv.StartNginx(t, 8080, "server")
			client := node.MustAddPod(t, "demo", "client")
			app := node.MustAddPod(t, "demo", "app")
			app.StartNginx(t, 8080, "app")
			captured := []*testworld.Pod{client, app}
			for _, p := range captured {
				if got := weirBackends(t, p); len(got) != 1 || got[0] != sequence[0] {
					t.Fatalf("%s starts with rules in %v, want %s", p.Name, got, sequence[0])
				}
			}

			out := startTraffic(client, fmt.Sprintf("http://%s:8080/", srv.IP4), "server")
			in := startTraffic(srv, fmt.Sprintf("http://%s:8080/", app.IP4), "app")
			for _, next := range sequence[1:] {
				time.Sleep(200 * time.Millisecond)
				successor := node.StartAgent(t, cfg(next))
				deadline := time.Now().Add(20 * time.Second)
				for strings.Count(successor.Log(), `"msg":"pod re-programmed in place"`) < len(captured) {
					if time.Now().After(deadline) {
						t.Fatalf("switch to %s: pods not re-programmed within 20s:\n%s", next, successor.Log())
					}
					time.Sleep(50 * time.Millisecond)
				}
				if err := agent.Wait(t, 20*time.Second); err != nil {
					t.Fatalf("switch to %s: old agent exit: %v", next, err)
				}
				agent = successor
				for _, p := range captured {
					if got := weirBackends(t, p); len(got) != 1 || got[0] != next {
						t.Fatalf("switch to %s: %s has rules in %v", next, p.Name, got)
					}
					if ls := p.MustRun(t, "ss", "-Hltn"); strings.Count(ls, ":15001 ") != 1 || strings.Count(ls, ":15006 ") != 1 {
						t.Fatalf("switch to %s: %s listeners:\n%s", next, p.Name, ls)
					}
					if err := node.Check(p); err != nil {
						t.Fatalf("switch to %s: CHECK %s: %v", next, p.Name, err)
					}
				}
				if s, f, first := out.sent.Load(), out.failed.Load(), out.firstErr.Load(); f != 0 {
					t.Fatalf("switch to %s: %d of %d outbound requests failed; first: %v", next, f, s, first)
				}
			}
			time.Sleep(200 * time.Millisecond)
			for name, l := range map[string]*trafficLoop{"outbound": out, "inbound": in} {
				sent, failed, first := l.finish()
				if failed != 0 {
					t.Fatalf("%d of %d %s requests failed across the switches; first: %v", failed, sent, name, first)
				}
				t.Logf("%s: %d requests across %d backend switches, none failed", name, sent, len(sequence)-1)
			}
			before, beforeIn := outbound(t, agent), inbound(t, agent)
			if body, err := client.Get(fmt.Sprintf("http://%s:8080/", srv.IP4)); err != nil || strings.TrimSpace(body) != "server" {
				t.Fatalf("request after the switches: %v %q", err, body)
			}
			if body, err := srv.Get(fmt.Sprintf("http://%s:8080/", app.IP4)); err != nil || strings.TrimSpace(body) != "app" {
				t.Fatalf("inbound request after the switches: %v %q", err, body)
			}
			if outbound(t, agent)-before != 1 || inbound(t, agent)-beforeIn != 1 {
				t.Fatal("requests after the switches did not go through the last agent")
			}
			// DEL takes out whatever backend the pod was programmed in.
			for _, p := range captured {
				if err := node.Del(p); err != nil {
					t.Fatalf("DEL %s: %v", p.Name, err)
				}
				if installed, err := redirect.Installed(p.Path); err != nil || installed {
					t.Fatalf("after DEL of %s: installed=%v err=%v", p.Name, installed, err)
				}
			}
		})
	}
}
