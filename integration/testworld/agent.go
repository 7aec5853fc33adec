package testworld

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// AdminAddr is where test agents serve /metrics inside their node netns.
const AdminAddr = "127.0.0.1:15020"

// Agent is a weir-agent process running inside a node netns.
type Agent struct {
	node    *Node
	cmd     *exec.Cmd
	Config  string // path of its config file
	LogPath string
	done    chan struct{}
	exitErr error
	// init, when set, is the network namespace of PID 1 of the agent's
	// own PID namespace (StartAgentUnderInit).
	init *Netns
	// Admin is where this agent serves /metrics and /readyz: AdminAddr, or
	// StandbyAdminAddr for a standby (until it is promoted; then
	// AdminAddr, and a standby it respawned serves on StandbyAdminAddr).
	Admin string
	// args are added to the agent's command line (--standby).
	args []string
	// bin is the weir-agent binary; empty means the node's.
	bin string
	// probe is the probeSocket of this agent's config (the node's build
	// only; an older build would refuse the key): start waits for this
	// agent's own readiness there. During a takeover the admin address
	// answers for the predecessor until the successor is ready, so it
	// cannot tell when the successor is.
	probe string
}

// StartAgentBinary is StartAgent with another build of weir-agent
// (AgentBuild), for tests across releases.
func (n *Node) StartAgentBinary(t T, cfg map[string]any, bin string) *Agent {
	t.Helper()
	a := &Agent{node: n, Config: n.WriteAgentConfig(t, cfg), bin: bin}
	a.start(t)
	a.stopAtCleanup(t)
	return a
}

// StandbyAdminAddr is where a standby started by StartStandby serves its
// admin endpoints: the agent's default for standby.admin (admin port + 1).
const StandbyAdminAddr = "127.0.0.1:15021"

// WriteAgentConfig writes cfg (merged over the node's socket and admin
// address) as the agent's config file and returns its path. JSON is YAML.
func (n *Node) WriteAgentConfig(t T, cfg map[string]any) string {
	t.Helper()
	return n.writeAgentConfig(t, cfg, "agent.yaml")
}

func (n *Node) writeAgentConfig(t T, cfg map[string]any, name string) string {
	t.Helper()
	full := map[string]any{"socket": n.Socket, "admin": AdminAddr, "logLevel": "debug", "sweepInterval": "2s"}
	for k, v := range cfg {
		full[k] = v
	}
	if n.Opts.CaptureBackend != "" || n.Opts.EBPF {
		// Copy capture rather than change the caller's map; the caller's
		// keys win.
		capt := map[string]any{}
		if n.Opts.CaptureBackend != "" {
			capt["backend"] = n.Opts.CaptureBackend
		}
		if c, ok := full["capture"].(map[string]any); ok {
			for k, v := range c {
				capt[k] = v
			}
		}
		if _, set := capt["ebpf"]; !set && n.Opts.EBPF {
			capt["ebpf"] = n.ebpfSettings()
		}
		full["capture"] = capt
	}
	b, err := json.MarshalIndent(full, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(n.Dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// StartAgent writes cfg and starts weir-agent in the node netns, waiting for
// /readyz. It is stopped (SIGTERM) at cleanup.
func (n *Node) StartAgent(t T, cfg map[string]any) *Agent {
	t.Helper()
	a := n.newAgent(t, cfg)
	a.start(t)
	a.stopAtCleanup(t)
	return a
}

// newAgent writes an agent's config, with a probe socket of its own, to a
// file of its own (a restart reads it again; a later agent's config must
// not replace it).
func (n *Node) newAgent(t T, cfg map[string]any, args ...string) *Agent {
	t.Helper()
	seq := agentSeq.Add(1)
	probe := filepath.Join(n.Dir, fmt.Sprintf("p%d.sock", seq))
	full := map[string]any{"probeSocket": probe}
	for k, v := range cfg {
		full[k] = v
	}
	a := &Agent{node: n, Config: n.writeAgentConfig(t, full, fmt.Sprintf("agent-%d.yaml", seq)), args: args, probe: probe}
	if slices.Contains(args, "--standby") {
		a.probe += ".standby" // agent.ProbeSocketPath
	}
	return a
}

// StartStandby starts a hot standby of the node's agent: weir-agent
// --standby with cfg written as the config file (the primary's, when the
// test passes the same cfg), waiting for its /readyz on StandbyAdminAddr,
// which it reports once it mirrors the primary's pods. Stopped at cleanup,
// before any agent started earlier (cleanups run last-in first-out), so it
// does not promote itself when the test ends.
func (n *Node) StartStandby(t T, cfg map[string]any) *Agent {
	t.Helper()
	a := n.newAgent(t, cfg, "--standby")
	a.Admin = StandbyAdminAddr
	a.start(t)
	a.stopAtCleanup(t)
	return a
}

func (a *Agent) stopAtCleanup(t T) {
	t.Cleanup(func() {
		a.Stop(t)
		if t.Failed() {
			if b, err := os.ReadFile(a.LogPath); err == nil {
				t.Logf("agent log:\n%s", tail(b, 60))
			}
		}
	})
}

func tail(b []byte, lines int) string {
	s := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(s) > lines {
		s = s[len(s)-lines:]
	}
	return strings.Join(s, "\n")
}

// StartAgentUnderInit is StartAgent with the agent in a PID namespace of
// its own, whose PID 1 (a shell that passes SIGTERM on) lives in network
// namespace initNS. For that agent /proc/1/ns/net, the host's namespace on a
// real node, is initNS: a throwaway stand-in, so a test can point an ADD at
// /proc/1/ns/net and, whatever the agent does, never reach the machine's
// real host namespace.
func (n *Node) StartAgentUnderInit(t T, cfg map[string]any, initNS *Netns) *Agent {
	t.Helper()
	RequireTool(t, "sh", "mount")
	a := n.newAgent(t, cfg)
	a.init = initNS
	a.start(t)
	a.stopAtCleanup(t)
	return a
}

// initScript is PID 1 of an agent started by StartAgentUnderInit: it mounts
// the PID namespace's own /proc (in the private mount namespace `ip netns
// exec` made), starts the agent in the node netns and passes SIGTERM on; it
// exits with the agent's status. $1 node netns, $2 weir-agent, $3 config.
const initScript = `mount -t proc proc /proc || exit 1
ip netns exec "$1" "$2" --config "$3" &
agent=$!
trap 'kill -TERM $agent 2>/dev/null' TERM INT
while :; do
	wait $agent; rc=$?
	kill -0 $agent 2>/dev/null || break
done
if [ $rc -gt 128 ]; then wait $agent 2>/dev/null; r=$?; [ $r -ne 127 ] && rc=$r; fi
exit $rc`

var agentSeq atomic.Int64

func (a *Agent) start(t T) {
	t.Helper()
	if a.LogPath == "" {
		a.LogPath = filepath.Join(a.node.Dir, fmt.Sprintf("agent-%d.log", agentSeq.Add(1)))
	}
	logf, err := os.OpenFile(a.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	bin := a.bin
	if bin == "" {
		bin = filepath.Join(a.node.Bin, "weir-agent")
	}
	if a.Admin == "" {
		a.Admin = AdminAddr
	}
	args := append([]string{"--config", a.Config}, a.args...)
	if a.init != nil {
		// PID 1 of a new PID namespace only gets the signals it handles:
		// the script traps SIGTERM, and SIGKILL ends the whole namespace.
		a.cmd = a.init.Command(context.Background(), "sh", "-c", initScript, "weir-init", a.node.Name, bin, a.Config)
		a.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	} else if a.node.Opts.EBPF {
		// nsenter execs the agent in the node netns and the host's mount
		// namespace, where the test's bpffs and cgroup2 mounts are.
		a.cmd = exec.Command("nsenter", append([]string{"--net=" + a.node.Path, bin}, args...)...)
		a.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: a.node.agentCgroupFD}
	} else {
		a.cmd = a.node.Command(context.Background(), bin, args...)
	}
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start weir-agent: %v", err)
	}
	a.done = make(chan struct{})
	go func() {
		a.exitErr = a.cmd.Wait()
		logf.Close()
		close(a.done)
	}()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if a.probe != "" {
			if a.probeReady() {
				return
			}
		} else if body, err := a.Get("/readyz"); err == nil && strings.HasPrefix(body, "ready") {
			return
		}
		select {
		case <-a.done:
			b, _ := os.ReadFile(a.LogPath)
			t.Fatalf("weir-agent exited at start: %v\n%s", a.exitErr, b)
		default:
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(a.LogPath)
			t.Fatalf("weir-agent not ready after 15s\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// probeReady asks this agent, and only it, over its probe socket whether
// it is ready.
func (a *Agent) probeReady() bool {
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", a.probe)
		},
		DisableKeepAlives: true,
	}}
	resp, err := c.Get("http://weir-agent/readyz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Restart starts the agent again after Stop, with the same config.
func (a *Agent) Restart(t T) {
	t.Helper()
	a.Stop(t)
	a.start(t)
}

// Stop sends SIGTERM and waits (bounded) for the agent to exit; it returns
// the exit error, nil for exit status 0.
func (a *Agent) Stop(t T) error {
	if a.cmd == nil || a.done == nil {
		return nil
	}
	select {
	case <-a.done:
		return a.exitErr
	default:
	}
	// ip netns exec replaces itself with the agent, so the signal reaches it.
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		t.Errorf("weir-agent did not exit within 30s of SIGTERM")
	}
	return a.exitErr
}

// Get fetches a path from the agent's admin endpoint inside the node netns.
func (a *Agent) Get(path string) (string, error) {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return a.node.Dial(addr, 2*time.Second)
			},
			DisableKeepAlives: true,
		},
	}
	resp, err := c.Get("http://" + a.Admin + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", path, resp.Status)
	}
	return string(b), err
}

// Metric returns the value of one Prometheus series, e.g.
// Metric(t, `weir_connections_total{direction="outbound"}`); 0 if absent.
func (a *Agent) Metric(t T, series string) float64 {
	t.Helper()
	body, err := a.Get("/metrics")
	if err != nil {
		t.Fatalf("read agent metrics: %v", err)
	}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, series+" ") {
			v, err := strconv.ParseFloat(strings.TrimSpace(line[len(series):]), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", line, err)
			}
			return v
		}
	}
	return 0
}

// Wait waits up to d for the agent to exit on its own (after handing over
// to a successor) and returns its exit error, nil for status 0.
func (a *Agent) Wait(t T, d time.Duration) error {
	t.Helper()
	select {
	case <-a.done:
		return a.exitErr
	case <-time.After(d):
		t.Fatalf("weir-agent still running after %v", d)
		return nil
	}
}

// Log returns what the agent logged so far.
func (a *Agent) Log() string {
	b, _ := os.ReadFile(a.LogPath)
	return string(b)
}

// Kill ends the agent with SIGKILL, as a crash or an OOM kill would: no
// drain, no cleanup.
func (a *Agent) Kill(t T) {
	t.Helper()
	select {
	case <-a.done:
		return
	default:
	}
	a.cmd.Process.Kill()
	<-a.done
}
