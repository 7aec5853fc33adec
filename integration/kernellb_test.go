package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// kernelVIP is the kernel-balanced service's address of family fam.
func kernelVIP(fam string) netip.AddrPort {
	if fam == "v6" {
		return netip.MustParseAddrPort("[fd00:96::12]:80")
	}
	return netip.MustParseAddrPort("10.96.0.12:80")
}

// peersResult is what `pump peers` prints.
type peersResult struct {
	Peers   map[string]int `json:"peers"`
	Bodies  map[string]int `json:"bodies"`
	Errors  int            `json:"errors"`
	LastErr string         `json:"lastErr"`
}

func runPeers(t *testing.T, p *testworld.Pod, addr netip.AddrPort, n int) peersResult {
	t.Helper()
	out := p.MustRun(t, testworld.Pump(t), "peers", addr.String(), fmt.Sprint(n))
	var r peersResult
	if err := json.Unmarshal([]byte(strings.TrimSpace(out)), &r); err != nil {
		t.Fatalf("pump peers %s: %v: %q", addr, err, out)
	}
	return r
}

// TestEBPFKernelService: a service declared dataplane: kernel is balanced
// by the connect program: an enrolled pod's 200 new connections to its
// address spread over both endpoints with none passing the agent, and the
// app sees the address it dialled; an endpoint removed by a reload, or
// failing its health check, gets no new connection; a pod that is not
// enrolled is not rewritten; a dataplane: agent service beside it still
// goes through the agent; with the agent stopped, the pinned table goes on
// balancing, and the next agent takes it over.
func TestEBPFKernelService(t *testing.T) {
	for _, fam := range []string{"v4", "dual"} {
		t.Run(fam, func(t *testing.T) { testKernelService(t, world{"1.1.0", "ebpf", fam, ""}) })
	}
}

func testKernelService(t *testing.T, w world) {
	node := testworld.NewNode(t, w.nodeOptions())
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}, "mode": "ebpf"}})
	srvA := node.MustAddPod(t, "backend", "server-a")
	srvB := node.MustAddPod(t, "backend", "server-b")
	nginxA := srvA.StartNginx(t, 8080, "server-a")
	srvB.StartNginx(t, 8080, "server-b")
	agent.Stop(t)

	services := func(kernelEps ...*testworld.Pod) []any {
		var out []any
		for _, fam := range w.families() {
			var eps, all []string
			for _, p := range kernelEps {
				eps = append(eps, hostPort(addr(p, fam), 8080))
			}
			for _, p := range []*testworld.Pod{srvA, srvB} {
				all = append(all, hostPort(addr(p, fam), 8080))
			}
			out = append(out, map[string]any{
				"name": "kern-" + fam, "address": kernelVIP(fam).String(), "endpoints": eps,
				"protocol": "tcp", "dataplane": "kernel",
				"cluster": map[string]any{"healthCheck": map[string]any{
					"enabled": true, "interval": "200ms", "timeout": "200ms", "unhealthyThreshold": 1}},
			}, map[string]any{
				"name": "web-" + fam, "address": vip(fam).String(), "endpoints": all, "protocol": "tcp",
			})
		}
		return out
	}
	agent = node.StartAgent(t, map[string]any{
		"capture":  map[string]any{"namespaces": []string{"demo"}, "mode": "ebpf"},
		"services": services(srvA, srvB),
	})
	client := node.MustAddPod(t, "demo", "client")
	plain := node.MustAddPod(t, "other", "plain")
	nfam := float64(len(w.families()))
	waitMetric(t, agent, "weir_kernel_lb_endpoints", 2*nfam, 5*time.Second)
	if got := agent.Metric(t, "weir_kernel_lb_services"); got != nfam {
		t.Fatalf("weir_kernel_lb_services = %v, want %v", got, nfam)
	}

	for _, fam := range w.families() {
		before := outbound(t, agent)
		balancedBefore := agent.Metric(t, `weir_kernel_lb_events_total{event="connect_balanced"}`)
		const n = 200
		r := runPeers(t, client, kernelVIP(fam), n)
		if r.Errors != 0 || r.Peers[kernelVIP(fam).String()] != n {
			t.Fatalf("%s: %d connections to the kernel service: %+v; want every one to succeed with the service address as the app's peer", fam, n, r)
		}
		if r.Bodies["server-a"] <= n/4 || r.Bodies["server-b"] <= n/4 || r.Bodies["server-a"]+r.Bodies["server-b"] != n {
			t.Fatalf("%s: answers %v; want each endpoint more than a quarter", fam, r.Bodies)
		}
		if after := outbound(t, agent); after != before {
			t.Fatalf("%s: the agent's outbound connections went from %v to %v: kernel-balanced connections passed the agent", fam, before, after)
		}
		if got := agent.Metric(t, `weir_kernel_lb_events_total{event="connect_balanced"}`); got-balancedBefore != n {
			t.Fatalf("%s: the connect programs balanced %v connections, want %d", fam, got-balancedBefore, n)
		}

		// The agent's own service beside it still goes through the agent.
		r = runPeers(t, client, vip(fam), 10)
		if r.Errors != 0 || r.Bodies["server-a"]+r.Bodies["server-b"] != 10 {
			t.Fatalf("%s: dataplane agent service: %+v", fam, r)
		}
		if after := outbound(t, agent); after < before+10 {
			t.Fatalf("%s: dataplane agent service: the agent counted %v outbound connections, want at least %v", fam, after, before+10)
		}

		// A pod that is not enrolled is not rewritten: the address leads
		// nowhere from there.
		balanced := agent.Metric(t, `weir_kernel_lb_events_total{event="connect_balanced"}`)
		if r := runPeers(t, plain, kernelVIP(fam), 1); r.Errors != 1 {
			t.Fatalf("%s: a pod that is not enrolled reached the kernel service's address: %+v", fam, r)
		}
		if got := agent.Metric(t, `weir_kernel_lb_events_total{event="connect_balanced"}`); got != balanced {
			t.Fatalf("%s: a pod that is not enrolled was balanced (connect_balanced %v -> %v)", fam, balanced, got)
		}
	}

	// The table is pinned: with the agent stopped, kernel-balanced
	// connections go on; the next agent takes the table over.
	agent.Stop(t)
	for _, fam := range w.families() {
		r := runPeers(t, client, kernelVIP(fam), 20)
		if r.Errors != 0 || r.Bodies["server-a"] == 0 || r.Bodies["server-b"] == 0 {
			t.Fatalf("%s: with the agent stopped: %+v; want both endpoints, no error", fam, r)
		}
	}
	agent = node.StartAgent(t, map[string]any{
		"capture":  map[string]any{"namespaces": []string{"demo"}, "mode": "ebpf"},
		"services": services(srvA, srvB),
	})
	waitMetric(t, agent, "weir_kernel_lb_endpoints", 2*nfam, 5*time.Second)
	if got := agent.Metric(t, "weir_kernel_lb_services"); got != nfam {
		t.Fatalf("after a restart: weir_kernel_lb_services = %v, want %v", got, nfam)
	}

	// An endpoint removed from the config gets no new connection.
	reloadServices(t, agent, services(srvB))
	waitMetric(t, agent, "weir_kernel_lb_endpoints", nfam, 5*time.Second)
	for _, fam := range w.families() {
		if r := runPeers(t, client, kernelVIP(fam), 40); r.Errors != 0 || r.Bodies["server-b"] != 40 {
			t.Fatalf("%s: after server-a left the config: %+v; want all 40 on server-b", fam, r)
		}
	}

	// An endpoint failing its health check gets no new connection; with
	// none left, connects are refused.
	reloadServices(t, agent, services(srvA, srvB))
	waitMetric(t, agent, "weir_kernel_lb_endpoints", 2*nfam, 5*time.Second)
	nginxA.Stop()
	waitMetric(t, agent, "weir_kernel_lb_endpoints", nfam, 5*time.Second)
	for _, fam := range w.families() {
		if r := runPeers(t, client, kernelVIP(fam), 40); r.Errors != 0 || r.Bodies["server-b"] != 40 {
			t.Fatalf("%s: with server-a failing its health check: %+v; want all 40 on server-b", fam, r)
		}
	}
	reloadServices(t, agent, services(srvA))
	waitMetric(t, agent, "weir_kernel_lb_endpoints", 0, 5*time.Second)
	for _, fam := range w.families() {
		r := runPeers(t, client, kernelVIP(fam), 1)
		if r.Errors != 1 || !strings.Contains(r.LastErr, "refused") {
			t.Fatalf("%s: a kernel service with no endpoint up: %+v; want connection refused", fam, r)
		}
	}
}

// reloadServices rewrites the agent's config file with these services and
// sends SIGHUP; it returns when it sent it.
func reloadServices(t testing.TB, a *testworld.Agent, services []any) time.Time {
	t.Helper()
	b, err := os.ReadFile(a.Config)
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(b, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["services"] = services
	if b, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(a.Config, b, 0o600); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := syscall.Kill(a.Pid(), syscall.SIGHUP); err != nil {
		t.Fatalf("SIGHUP the agent: %v", err)
	}
	return at
}
