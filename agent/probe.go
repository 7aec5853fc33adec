package agent

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The probe socket answers /healthz and /readyz for this process only.
//
// A node runs two agents at once during a takeover, both on the admin
// address (SO_REUSEPORT), and kubelet's HTTP probes of a host-network pod
// land on either: the new pod could be declared ready by the old agent's
// answer and then flap when a probe reaches the new one. A unix socket in
// a per-pod directory (an emptyDir) is reached only from inside that pod,
// so `weir-agent --probe` as an exec startup probe tells the truth about
// this container's agent.

// serveProbeSocket binds cfg.ProbeSocket and serves the admin handler's
// health endpoints on it; the returned func closes it.
func (a *Agent) serveProbeSocket() (func(), error) {
	path := ProbeSocketPath(a.cfg)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("probe socket dir: %w", err)
	}
	// A file left by a previous run of this container is stale: the
	// directory belongs to this pod and only its agent binds there.
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("remove stale probe socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("probe socket %s: %w", path, err)
	}
	admin := a.adminHandler()
	mux := http.NewServeMux()
	mux.Handle("GET /healthz", admin)
	mux.Handle("GET /readyz", admin)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go serveHTTP(srv, ln)
	return func() { srv.Close() }, nil
}

// ProbeSocketPath is where this process's probe socket is: the configured
// path, with ".standby" appended for a hot standby, so a primary and its
// standby sharing one config and one directory never take each other's.
func ProbeSocketPath(cfg Config) string {
	if cfg.ProbeSocket == "" || !cfg.Standby.Enabled {
		return cfg.ProbeSocket
	}
	return cfg.ProbeSocket + ".standby"
}

// Probe asks the agent serving the probe socket at path for endpoint
// ("/readyz" or "/healthz"); nil means it answered 200. It is the body of
// `weir-agent --probe`, so it does what an exec probe needs and no more.
func Probe(path, endpoint string, timeout time.Duration) error {
	if !strings.HasPrefix(endpoint, "/") {
		endpoint = "/" + endpoint
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://weir-agent"+endpoint, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s on %s: %w", endpoint, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s on %s: %s: %s", endpoint, path, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
