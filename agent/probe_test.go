package agent

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// The probe socket answers for its own process: not ready until the agent
// is, then ready; a standby's path differs from its primary's; a missing
// socket is an error naming it.
func TestProbeSocket(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.ProbeSocket = filepath.Join(dir, "probe", "agent.sock")
	a := &Agent{cfg: cfg, reg: prometheus.NewRegistry()}
	stop, err := a.serveProbeSocket()
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if err := Probe(cfg.ProbeSocket, "/readyz", 2*time.Second); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("probe of an agent not ready yet = %v, want a 503 error", err)
	}
	if err := Probe(cfg.ProbeSocket, "healthz", 2*time.Second); err != nil {
		t.Fatalf("healthz: %v", err)
	}
	a.ready.Store(true)
	if err := Probe(cfg.ProbeSocket, "/readyz", 2*time.Second); err != nil {
		t.Fatalf("probe of a ready agent: %v", err)
	}
	// Only the health endpoints: no metrics or config dump on this socket.
	if err := Probe(cfg.ProbeSocket, "/config_dump", 2*time.Second); err == nil {
		t.Fatal("config_dump served on the probe socket")
	}
	// A restarted container finds its old socket file and replaces it.
	stop()
	stop2, err := a.serveProbeSocket()
	if err != nil {
		t.Fatalf("rebind over a stale socket: %v", err)
	}
	defer stop2()
	if err := Probe(cfg.ProbeSocket, "/readyz", 2*time.Second); err != nil {
		t.Fatalf("probe after rebind: %v", err)
	}

	sb := cfg
	sb.Standby.Enabled = true
	if ProbeSocketPath(sb) == ProbeSocketPath(cfg) {
		t.Fatalf("standby and primary share the probe socket %s", ProbeSocketPath(cfg))
	}
	missing := filepath.Join(dir, "none.sock")
	if err := Probe(missing, "/readyz", time.Second); err == nil || !strings.Contains(err.Error(), missing) {
		t.Fatalf("probe of a missing socket = %v, want an error naming it", err)
	}
}

func TestProbeSocketConfig(t *testing.T) {
	for _, tc := range []struct{ yaml, want string }{
		{"probeSocket: relative/agent.sock\n", "probeSocket: want an absolute path"},
		{"socket: /run/x.sock\nprobeSocket: /run/x.sock\n", "probeSocket: must differ from socket"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want %q", tc.yaml, err, tc.want)
		}
	}
	if _, err := ParseConfig([]byte("probeSocket: /run/weir-probe/agent.sock\n")); err != nil {
		t.Errorf("valid probeSocket refused: %v", err)
	}
}
