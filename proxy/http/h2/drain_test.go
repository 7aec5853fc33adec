package h2

import (
	"context"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/route"
)

// TestDrainUnderH2load drains connections that h2load keeps busy, as a
// takeover does: no request may fail. h2load (nghttp2) opens a stream
// from the callback of one that ended and sends it after that read; a
// GOAWAY in the same read made it drop the stream as refused and count it
// "errored" (about half of these runs did before the drain's barrier
// PING), and a plain graceful shutdown of x/net's server loses some too.
func TestDrainUnderH2load(t *testing.T) {
	if _, err := exec.LookPath("h2load"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("missing prerequisite (CI=true, so this fails instead of skipping): program h2load on PATH")
		}
		t.Skip("missing prerequisite: program h2load on PATH")
	}
	up := startH2C(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok")) }))
	snap := mustBuild(t, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(up)},
	}})
	summary := regexp.MustCompile(`requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	for range 3 {
		p := newTestProxy(t, snap, Options{DrainPingTimeout: 5 * time.Second})
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		cmd := exec.CommandContext(ctx, "h2load", "-c4", "-m8", "-D", "2", "http://"+p.addr+"/")
		// The drain starts after a second and ends the connections long
		// before h2load would (after two).
		ended := make(chan time.Time, 1)
		go func() {
			time.Sleep(time.Second)
			close(p.draining)
			for p.served.Load() < 4 && ctx.Err() == nil {
				time.Sleep(5 * time.Millisecond)
			}
			ended <- time.Now()
		}()
		out, err := cmd.CombinedOutput()
		exited := time.Now()
		cancel()
		if err != nil {
			t.Fatalf("h2load: %v\n%s", err, out)
		}
		m := summary.FindStringSubmatch(string(out))
		if m == nil {
			t.Fatalf("no request summary in h2load's output:\n%s", out)
		}
		if m[1] == "0" || m[1] != m[2] || m[3] != "0" || m[4] != "0" || m[5] != "0" {
			t.Fatalf("requests across a drain: %s", m[0])
		}
		if got := p.accepted.Load(); got != 4 {
			t.Fatalf("h2load made %d connections, want 4", got)
		}
		if end := <-ended; end.After(exited.Add(-300 * time.Millisecond)) {
			t.Fatalf("the drain did not end h2load's connections before it exited (%v after)", end.Sub(exited))
		}
		t.Log(m[0])
	}
}
