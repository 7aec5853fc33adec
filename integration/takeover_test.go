package integration

import (
	"fmt"
	"regexp"
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

// Must show 5 (issue 9): a takeover under HTTP/1.1 keep-alive load (wrk)
// and HTTP/2 load (h2load) loses no request: the old agent answers its next
// response with Connection: close or sends GOAWAY and lets requests in
// flight finish, and wrk continues on new connections through the
// successor. h2load (nghttp2 1.52) opens no new connection after a GOAWAY,
// so its clients stop there; a request it had made but not yet sent when
// the GOAWAY came would count as errored, which the drain's barrier PING
// prevents (proxy/http/h2 TestDrainUnderH2load).
func TestTakeoverUnderL7LoadLosesNoRequest(t *testing.T) {
	testworld.RequireTool(t, "wrk", "h2load")
	m := newL7Mesh(t, "redirect")
	parent := t // successors outlive the subtest that starts them
	for _, l := range []struct {
		name string
		cmd  []string
		ok   func(out string) error
	}{
		{"wrk-http1-keepalive", []string{"wrk", "-t1", "-c8", "-d6s", "http://" + vipWeb + "/"}, wrkClean},
		{"h2load-h2c", []string{"h2load", "-c4", "-m8", "-D", "6", "http://" + vipH2 + "/"}, h2loadClean},
	} {
		t.Run(l.name, func(t *testing.T) {
			done := make(chan struct{})
			var out string
			var err error
			go func() {
				defer close(done)
				out, err = m.client.Run(l.cmd[0], l.cmd[1:]...)
			}()
			time.Sleep(2 * time.Second)
			old := m.agent
			m.agent = m.node.StartAgent(parent, m.cfg)
			deadline := time.Now().Add(15 * time.Second)
			for !strings.Contains(m.agent.Log(), `"took over"`) {
				if time.Now().After(deadline) {
					t.Fatalf("successor never took over:\n%s", m.agent.Log())
				}
				time.Sleep(50 * time.Millisecond)
			}
			<-done
			if err := old.Wait(t, 25*time.Second); err != nil {
				t.Fatalf("old agent exit: %v, want status 0", err)
			}
			if err != nil {
				t.Fatalf("%s: %v\n%s", l.name, err, out)
			}
			if err := l.ok(out); err != nil {
				t.Fatalf("%s across a takeover: %v\n%s", l.name, err, out)
			}
			t.Logf("%s across a takeover:\n%s", l.name, out)
		})
	}
}

// wrkClean checks wrk's summary: requests done, no socket error, no non-2xx.
func wrkClean(out string) error {
	if !regexp.MustCompile(`\d+ requests in`).MatchString(out) {
		return fmt.Errorf("no request count in wrk's output")
	}
	if strings.Contains(out, "Socket errors") || strings.Contains(out, "Non-2xx") {
		return fmt.Errorf("wrk saw errors")
	}
	return nil
}

// h2loadClean checks h2load's summary: every request started succeeded.
func h2loadClean(out string) error {
	m := regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`).FindStringSubmatch(out)
	if m == nil {
		return fmt.Errorf("no request summary in h2load's output")
	}
	if m[2] == "0" || m[4] != m[3] || m[5] != "0" || m[6] != "0" || m[7] != "0" {
		return fmt.Errorf("h2load: %s", m[0])
	}
	if !strings.Contains(out, "status codes: ") || regexp.MustCompile(`status codes: \d+ 2xx, 0 3xx, 0 4xx, 0 5xx`).FindString(out) == "" {
		return fmt.Errorf("h2load saw non-2xx answers")
	}
	return nil
}
