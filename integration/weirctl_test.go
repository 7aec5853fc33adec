package integration

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Must show 6: weirctl against a running agent, run inside the node netns
// as it runs inside the agent's hostNetwork pod: every subcommand in both
// output forms, and what it says when no agent answers.
func TestWeirctl(t *testing.T) {
	// iptables-nft: the rules below are named as iptables prints them
	// (TestWeirctlRulesModes covers native nftables).
	w := world{"1.0.0", "redirect", "v4", nft}
	// One connect failure ejects an endpoint for a minute, so the test can
	// watch ejection through weirctl endpoints.
	m := newMeshWith(t, w, map[string]any{"outlier": map[string]any{"consecutiveFailures": 1, "baseEjectionTime": "60s"}})
	weirctl := filepath.Join(testworld.Binaries(t), "weirctl")
	// run runs weirctl in the node netns and returns its output and exit
	// status.
	run := func(args ...string) (string, int) {
		t.Helper()
		out, err := m.node.Run(weirctl, args...)
		if ee, ok := err.(*exec.ExitError); ok {
			return out, ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("weirctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out, 0
	}
	ok := func(args ...string) string {
		t.Helper()
		out, code := run(args...)
		if code != 0 {
			t.Fatalf("weirctl %s: exit %d\n%s", strings.Join(args, " "), code, out)
		}
		return out
	}
	js := func(v any, args ...string) {
		t.Helper()
		out := ok(append(args, "-o", "json")...)
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("weirctl %s -o json: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	has := func(out string, want ...string) {
		t.Helper()
		for _, s := range want {
			if !strings.Contains(out, s) {
				t.Fatalf("output lacks %q:\n%s", s, out)
			}
		}
	}
	const svc = "web-v4"
	epA, epB := hostPort(m.srvA.IP4, 8080), hostPort(m.srvB.IP4, 8080)
	for i := 0; i < 6; i++ {
		if body, err := m.client.Get(url(vip("v4"))); err != nil {
			t.Fatalf("request %d: %v: %s", i, err, body)
		}
	}

	t.Run("pods", func(t *testing.T) {
		out := ok("pods")
		has(out, "NAMESPACE", "CAPTURED", "MODE", "WHY")
		var client, server string
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			if len(f) > 1 && f[0] == "demo" && f[1] == "client" {
				client = l
			}
			if len(f) > 1 && f[0] == "backend" && f[1] == "server-a" {
				server = l
			}
		}
		has(client, "yes", "redirect", "namespace demo is captured")
		has(server, "no", "namespace backend is not captured")
		var pods []struct {
			Namespace, Name, Mode, Reason string
			Captured                      bool
		}
		js(&pods, "pods")
		found := 0
		for _, p := range pods {
			switch p.Namespace + "/" + p.Name {
			case "demo/client":
				found++
				if !p.Captured || p.Mode != "redirect" || p.Reason == "" {
					t.Fatalf("demo/client in JSON: %+v", p)
				}
			case "backend/server-a", "backend/server-b":
				found++
				if p.Captured || p.Mode != "" {
					t.Fatalf("%s/%s in JSON: %+v", p.Namespace, p.Name, p)
				}
			}
		}
		if found != 3 {
			t.Fatalf("pods in JSON: %+v; want the client and both servers", pods)
		}
	})

	t.Run("rules", func(t *testing.T) {
		out := ok("rules", "demo/client")
		has(out, "POD", "demo/client", "MODE", "redirect", "BACKEND    nft\n", "VERIFIED", "yes", "WEIR_OUTPUT", "--to-ports 15001")
		// A bare name works when it is unique on the node.
		has(ok("rules", "client"), "demo/client", "--to-ports 15006")
		var v struct {
			Captured, Verified bool
			Mode               string
			Rules, Problems    []string
		}
		js(&v, "rules", "demo/client")
		if !v.Captured || !v.Verified || v.Mode != "redirect" || len(v.Rules) == 0 || len(v.Problems) != 0 {
			t.Fatalf("rules in JSON: %+v", v)
		}
		out = ok("rules", "backend/server-a")
		has(out, "CAPTURED", "no", "not captured")
		if strings.Contains(out, "WEIR_") {
			t.Fatalf("an uncaptured pod shows weir rules:\n%s", out)
		}
		out, code := run("rules", "demo/nobody")
		if code != 1 {
			t.Fatalf("rules of an unknown pod: exit %d, want 1\n%s", code, out)
		}
		has(out, "no pod demo/nobody on this node", "weirctl pods")
	})

	t.Run("routes", func(t *testing.T) {
		out := ok("routes")
		has(out, "SERVICE", "BALANCER", "ENDPOINTS", svc, "10.96.0.10:80", "round_robin", "2/2 healthy")
		has(ok("routes", svc), svc, "2/2 healthy")
		var all struct {
			Unknown  string
			Services []struct{ Name string }
		}
		js(&all, "routes")
		if all.Unknown != "passthrough" || len(all.Services) != 1 || all.Services[0].Name != svc {
			t.Fatalf("routes in JSON: %+v", all)
		}
		var one struct {
			Name      string
			Addresses []string
		}
		js(&one, "routes", svc)
		if one.Name != svc || len(one.Addresses) != 1 || one.Addresses[0] != "10.96.0.10:80" {
			t.Fatalf("routes %s in JSON: %+v", svc, one)
		}
		out, code := run("routes", "nosuch")
		if code != 1 {
			t.Fatalf("routes of an unknown service: exit %d\n%s", code, out)
		}
		has(out, `no service "nosuch"`)
	})

	t.Run("endpoints", func(t *testing.T) {
		type ep struct {
			Addr       string
			Health     string
			Ejected    bool
			EjectedFor string
			Ejections  int
			Active     int
		}
		var v struct {
			Service   string
			Endpoints []ep
		}
		js(&v, "endpoints", svc)
		if v.Service != svc || len(v.Endpoints) != 2 {
			t.Fatalf("endpoints in JSON: %+v", v)
		}
		for _, e := range v.Endpoints {
			if e.Ejected || (e.Addr != epA && e.Addr != epB) {
				t.Fatalf("endpoint before any failure: %+v", e)
			}
		}
		out := ok("endpoints", svc)
		has(out, "ENDPOINT", "HEALTH", "EJECTED", "ACTIVE", epA, epB, "healthy")

		// Server B goes away: its first failed connect ejects it, and
		// weirctl shows it ejected with the time left.
		m.nginxB.Stop()
		m.srvB.WaitPortClosed(t, epB)
		deadline := time.Now().Add(20 * time.Second)
		for {
			m.client.Get(url(vip("v4")))
			js(&v, "endpoints", svc)
			var b ep
			for _, e := range v.Endpoints {
				if e.Addr == epB {
					b = e
				}
			}
			if b.Ejected {
				if b.Ejections < 1 || b.EjectedFor == "" {
					t.Fatalf("ejected endpoint in JSON: %+v", b)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("server B not ejected within 20s: %+v", v.Endpoints)
			}
			time.Sleep(100 * time.Millisecond)
		}
		out = ok("endpoints", svc)
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, epB) {
				has(l, "ejected", "yes (", "left)")
			}
		}
		has(ok("routes", svc), "1/2 healthy")
		out, code := run("endpoints", "nosuch")
		if code != 1 {
			t.Fatalf("endpoints of an unknown service: exit %d\n%s", code, out)
		}
		has(out, `no service "nosuch"`, "weirctl routes")
	})

	t.Run("top", func(t *testing.T) {
		// Traffic while top samples: its rates must see it.
		stop := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				m.client.Get(url(vip("v4")))
				time.Sleep(20 * time.Millisecond)
			}
		}()
		defer func() { close(stop); wg.Wait() }()
		out := ok("top", "--interval", "1s")
		has(out, "rates over", "connections: ", "CLUSTER", "CONN/S", svc, "PROTOCOL", "REQ/S", "P99", "http1", "SERVICE", "ROUTE")
		if n := strings.Count(out, "CLUSTER"); n != 1 {
			t.Fatalf("top printed %d screens by default, want 1:\n%s", n, out)
		}
		out = ok("top", "--interval", "500ms", "--count", "2", "-o", "json")
		dec := json.NewDecoder(strings.NewReader(out))
		screens := 0
		for dec.More() {
			var v struct {
				Clusters []struct {
					Cluster              string
					ConnectionsPerSecond float64
				}
				HTTP []struct {
					Protocol          string
					RequestsPerSecond float64
				}
				Routes []struct {
					Service           string
					RequestsPerSecond float64
				}
			}
			if err := dec.Decode(&v); err != nil {
				t.Fatalf("top -o json: %v\n%s", err, out)
			}
			screens++
			var rate float64
			for _, c := range v.Clusters {
				if c.Cluster == svc {
					rate = c.ConnectionsPerSecond
				}
			}
			var reqs float64
			for _, h := range v.HTTP {
				if h.Protocol == "http1" {
					reqs = h.RequestsPerSecond
				}
			}
			if rate <= 0 || reqs <= 0 {
				t.Fatalf("top screen %d: %s at %v conn/s, http1 at %v req/s, want both > 0 under traffic\n%s", screens, svc, rate, reqs, out)
			}
			var routeReqs float64
			for _, r := range v.Routes {
				if r.Service == svc {
					routeReqs += r.RequestsPerSecond
				}
			}
			if routeReqs <= 0 {
				t.Fatalf("top screen %d: no per-route requests for %s under traffic\n%s", screens, svc, out)
			}
		}
		if screens != 2 {
			t.Fatalf("top --count 2 printed %d screens\n%s", screens, out)
		}
	})

	t.Run("config", func(t *testing.T) {
		out := ok("config")
		has(out, "KEY", "VALUE", "admin", testworld.AdminAddr, "capture.namespaces", "[demo]", "services[0].name", svc)
		var v struct {
			Config struct {
				Admin   string
				Capture struct{ Namespaces []string }
			}
		}
		js(&v, "config")
		if v.Config.Admin != testworld.AdminAddr || len(v.Config.Capture.Namespaces) != 1 || v.Config.Capture.Namespaces[0] != "demo" {
			t.Fatalf("config in JSON: %+v", v)
		}
	})

	// Last but one: it leaves the client's outbound traffic uncaptured.
	t.Run("rules damaged", func(t *testing.T) {
		// Damage the client's rules: weirctl says so, naming what is
		// missing, and exits 1 (the agent repairs them at its next
		// reconcile, a minute away).
		m.client.MustRun(t, "iptables-nft", "-t", "nat", "-F", "WEIR_OUTPUT")
		out, code := run("rules", "demo/client")
		if code != 1 {
			t.Fatalf("rules after damage: exit %d, want 1\n%s", code, out)
		}
		has(out, "VERIFIED", "no:", "PROBLEMS", "WEIR_OUTPUT: missing rule")
		var v struct {
			Verified bool
			Problems []string
		}
		out, code = run("rules", "demo/client", "-o", "json")
		if code != 1 || json.Unmarshal([]byte(out), &v) != nil || v.Verified || len(v.Problems) == 0 {
			t.Fatalf("rules -o json after damage: exit %d, %+v\n%s", code, v, out)
		}
	})

	t.Run("no agent", func(t *testing.T) {
		// A wrong address, by flag and by WEIR_ADMIN.
		want := "no weir-agent answers at 127.0.0.1:1: is it running? (--admin / WEIR_ADMIN)"
		out, code := run("pods", "--admin", "127.0.0.1:1")
		if code != 1 || !strings.Contains(out, want) {
			t.Fatalf("wrong --admin: exit %d\n%s", code, out)
		}
		out, err := m.node.Run("env", "WEIR_ADMIN=127.0.0.1:1", weirctl, "routes")
		if err == nil || !strings.Contains(out, want) {
			t.Fatalf("wrong WEIR_ADMIN: %v\n%s", err, out)
		}
		m.agent.Stop(t)
		for _, args := range [][]string{{"pods"}, {"rules", "demo/client"}, {"routes"}, {"endpoints", svc}, {"top"}, {"config", "-o", "json"}} {
			out, code := run(args...)
			if code != 1 || !strings.Contains(out, "no weir-agent answers at 127.0.0.1:15020: is it running? (--admin / WEIR_ADMIN)") {
				t.Fatalf("weirctl %s with no agent: exit %d\n%s", strings.Join(args, " "), code, out)
			}
		}
	})
}

// weirctl rules in every capture backend and mode: the mode shows, the
// rules hold what the backend installs (native nftables rules as nft
// prints them, policy routes, the eBPF enrolment), verified; damaged
// nftables rules are named.
func TestWeirctlRulesModes(t *testing.T) {
	cases := []struct {
		w    world
		want []string
	}{
		{world{"1.0.0", "redirect", "v4", nftables}, []string{"nftables inet weir/output: type nat hook output", `nftables inet weir/output: meta l4proto tcp redirect to :15001 comment "weir: outbound TCP to the agent"`}},
		{world{"1.0.0", "tproxy", "v4", nftables}, []string{"nftables inet weir/prerouting: type filter hook prerouting", "tproxy ip to 127.0.0.1:15001", "IPv4 routing: ip rule pref 157", "IPv4 routing: ip route"}},
		{world{"1.0.0", "tproxy", "v4", nft}, []string{"iptables mangle/WEIR_PREROUTING", "IPv4 routing: ip rule pref 157", "IPv4 routing: ip route"}},
		{world{"1.1.0", "ebpf", "v4", ""}, []string{"ebpf: enrolled in the capture pinned at"}},
	}
	for _, c := range cases {
		t.Run(c.w.String(), func(t *testing.T) {
			m := newMesh(t, c.w)
			weirctl := filepath.Join(testworld.Binaries(t), "weirctl")
			out := m.node.MustRun(t, weirctl, "pods")
			if !strings.Contains(out, c.w.mode) {
				t.Fatalf("weirctl pods in a %s node:\n%s", c.w.mode, out)
			}
			out = m.node.MustRun(t, weirctl, "rules", "demo/client")
			want := append(c.want, "MODE       "+c.w.mode, "VERIFIED   yes")
			if c.w.backend != "" {
				want = append(want, "BACKEND    "+c.w.backend+"\n")
			}
			for _, w := range want {
				if !strings.Contains(out, w) {
					t.Fatalf("weirctl rules lacks %q:\n%s", w, out)
				}
			}
			if c.w.backend != nft && strings.Contains(out, "WEIR_") {
				t.Fatalf("iptables rules in a %s pod:\n%s", c.w, out)
			}
			if c.w.backend == nftables && c.w.mode == "redirect" {
				m.client.MustRun(t, "nft", "flush", "chain", "inet", "weir", "output")
				out, err := m.node.Run(weirctl, "rules", "demo/client")
				if err == nil || !strings.Contains(out, "VERIFIED   no:") || !strings.Contains(out, `nftables inet weir/output: missing rule "meta l4proto tcp redirect to :15001`) {
					t.Fatalf("weirctl rules after flushing the output chain: %v\n%s", err, out)
				}
			}
		})
	}
}
