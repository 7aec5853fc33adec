package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// captureWorlds are the worlds the capture knobs are tested in: every mode,
// dual stack so both families are exercised in each, every backend of the
// rule-programming modes (eBPF mode programs no rules, so it has no
// backend axis).
func captureWorlds() []world {
	var out []world
	for _, backend := range []string{nftables, nft, legacy} {
		out = append(out, world{"1.0.0", "redirect", "dual", backend}, world{"1.0.0", "tproxy", "dual", backend})
	}
	return append(out, world{"1.0.0", "ebpf", "dual", ""})
}

// assertNoRulesIn runs assertNoRules on each pod when w is in eBPF mode.
func (w world) assertNoRulesIn(t *testing.T, pods ...*testworld.Pod) {
	t.Helper()
	if w.mode != "ebpf" {
		return
	}
	for _, p := range pods {
		assertNoRules(t, p)
	}
}

// installed reports whether p's netns holds weir's capture: rules, or an
// enrolment in the node's pinned eBPF capture.
func installed(t *testing.T, node *testworld.Node, p *testworld.Pod) bool {
	t.Helper()
	on, err := redirect.Installed(p.Path, redirect.WithPinPath(node.PinPath))
	if err != nil {
		t.Fatalf("inspect capture of pod %s: %v", p.Name, err)
	}
	return on
}

// knobWorld is a node with an agent whose static config gives pods of
// namespace demo the override under test, two plain servers (ports 8080 and
// 8081 each), a captured client and a captured app (ports 8080 and 8081).
type knobWorld struct {
	w           world
	node        *testworld.Node
	agent       *testworld.Agent
	srvA, srvB  *testworld.Pod
	client, app *testworld.Pod
}

func newKnobWorld(t *testing.T, w world, override map[string]any) *knobWorld {
	t.Helper()
	k := &knobWorld{w: w, node: testworld.NewNode(t, w.nodeOptions())}
	o := map[string]any{"namespace": "demo"}
	for key, v := range override {
		o[key] = v
	}
	k.agent = k.node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}, "overrides": []any{o}}})
	k.srvA = k.node.MustAddPod(t, "backend", "server-a")
	k.srvB = k.node.MustAddPod(t, "backend", "server-b")
	k.client = k.node.MustAddPod(t, "demo", "client")
	k.app = k.node.MustAddPod(t, "demo", "app")
	for _, p := range []*testworld.Pod{k.srvA, k.srvB, k.app} {
		p.StartNginx(t, 8080, p.Name+"-8080")
		p.StartNginx(t, 8081, p.Name+"-8081")
	}
	w.assertNoRulesIn(t, k.client, k.app)
	return k
}

// viaAgent requests url from pod p and reports whether the agent counted the
// connection in direction dir.
func (k *knobWorld) viaAgent(t *testing.T, p *testworld.Pod, target netip.AddrPort, dir string) bool {
	t.Helper()
	series := fmt.Sprintf(`weir_connections_total{direction=%q}`, dir)
	before := k.agent.Metric(t, series)
	body, err := p.Curl(t, url(target))
	if err != nil || !strings.HasSuffix(strings.TrimSpace(body), fmt.Sprint(target.Port())) {
		t.Fatalf("request %s from %s: %v: %q", target, p.Name, err, body)
	}
	return k.agent.Metric(t, series)-before == 1
}

// expect checks, in every family of the world, whether a request from pod
// from to target's port goes through the agent (want) or bypasses it.
func (k *knobWorld) expect(t *testing.T, from, target *testworld.Pod, port uint16, dir string, want bool, what string) {
	t.Helper()
	for _, fam := range k.w.families() {
		if got := k.viaAgent(t, from, netip.AddrPortFrom(addr(target, fam), port), dir); got != want {
			t.Errorf("%s: %s (through the agent: %v, want %v)", fam, what, got, want)
		}
	}
}

// Must show 4 (issue 3): every exclusion does what it says, in both modes and
// both families, and the traffic it does not exclude still goes through the
// agent.
func TestExclusions(t *testing.T) {
	for _, w := range captureWorlds() {
		t.Run(w.String(), func(t *testing.T) {
			t.Run("excludeOutboundPorts", func(t *testing.T) {
				k := newKnobWorld(t, w, map[string]any{"excludeOutboundPorts": []int{8081}})
				k.expect(t, k.client, k.srvA, 8080, "outbound", true, "port 8080 bypassed the agent")
				k.expect(t, k.client, k.srvA, 8081, "outbound", false, "excluded port 8081 went through the agent")
			})
			t.Run("excludeOutboundCIDRs", func(t *testing.T) {
				k := newKnobWorld(t, w, nil)
				// Restart with the exclusion naming server-b's addresses,
				// known only now.
				k.agent.Stop(t)
				k.agent = k.node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}, "overrides": []any{
					map[string]any{"namespace": "demo", "excludeOutboundCIDRs": []string{k.srvB.IP4.String() + "/32", k.srvB.IP6.String() + "/128"}},
				}}})
				k.client = k.node.MustAddPod(t, "demo", "client2")
				w.assertNoRulesIn(t, k.client)
				k.expect(t, k.client, k.srvA, 8080, "outbound", true, "server-a bypassed the agent")
				k.expect(t, k.client, k.srvB, 8080, "outbound", false, "excluded server-b went through the agent")
			})
			t.Run("excludeInboundPorts", func(t *testing.T) {
				k := newKnobWorld(t, w, map[string]any{"excludeInboundPorts": []int{8081}})
				k.expect(t, k.srvA, k.app, 8080, "inbound", true, "inbound 8080 bypassed the agent")
				k.expect(t, k.srvA, k.app, 8081, "inbound", false, "excluded inbound 8081 went through the agent")
			})
			t.Run("includeInboundPorts", func(t *testing.T) {
				k := newKnobWorld(t, w, map[string]any{"includeInboundPorts": []int{8081}})
				k.expect(t, k.srvA, k.app, 8081, "inbound", true, "included inbound 8081 bypassed the agent")
				k.expect(t, k.srvA, k.app, 8080, "inbound", false, "inbound 8080, not included, went through the agent")
			})
		})
	}
}

// Must show 5 (issue 3): a kubelet-style probe from the node to a captured
// pod's port works in every mode and family. In eBPF mode the probe goes
// through sk_lookup to the agent's inbound listener like any inbound
// connection, so the agent counts it.
func TestHealthProbeFromNode(t *testing.T) {
	for _, w := range captureWorlds() {
		t.Run(w.String(), func(t *testing.T) {
			node := testworld.NewNode(t, w.nodeOptions())
			agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
			app := node.MustAddPod(t, "demo", "app")
			app.StartNginx(t, 8080, "healthy")
			w.assertNoRulesIn(t, app)
			for _, fam := range w.families() {
				before := inbound(t, agent)
				body, err := node.Curl(t, url(netip.AddrPortFrom(addr(app, fam), 8080)))
				if err != nil || strings.TrimSpace(body) != "healthy" {
					t.Fatalf("%s probe from the node: %v: %q", fam, err, body)
				}
				if w.mode == "ebpf" && inbound(t, agent)-before != 1 {
					t.Fatalf("%s probe from the node did not go through the agent's inbound listener", fam)
				}
			}
		})
	}
}

// Must show 3 (issue 3): under TPROXY the captured connection's destination
// is never rewritten (no DNAT entry in the pod's conntrack table); under
// REDIRECT there is one, which shows the check can fail. eBPF mode rewrites
// the connect before any packet exists, so conntrack has no DNAT either.
func TestTPROXYHasNoDNAT(t *testing.T) {
	testworld.RequireTool(t, "conntrack")
	for _, w := range captureWorlds() {
		t.Run(w.String(), func(t *testing.T) {
			node := testworld.NewNode(t, w.nodeOptions())
			node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
			srv := node.MustAddPod(t, "backend", "server")
			client := node.MustAddPod(t, "demo", "client")
			ln := srv.Listen(t, "[::]:9000")
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					defer c.Close()
				}
			}()
			for _, fam := range w.families() {
				c, err := client.Dial(hostPort(addr(srv, fam), 9000), 5*time.Second)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			time.Sleep(100 * time.Millisecond)
			out := client.MustRun(t, "conntrack", "-L", "--dst-nat", "-p", "tcp")
			dnat := strings.Count(out, "dport=9000")
			switch w.mode {
			case "tproxy", "ebpf":
				if dnat != 0 {
					t.Fatalf("%s: conntrack shows rewritten destinations:\n%s", w.mode, out)
				}
			case "redirect":
				if dnat == 0 {
					t.Fatalf("REDIRECT: expected DNAT entries for the captured connections, got:\n%s", out)
				}
			}
		})
	}
}

// weirBackends lists the backends holding weir rules in p's netns:
// "legacy" and "nft" when that iptables flavour's save program prints a
// WEIR_ chain, "nftables" when weir's table exists.
func weirBackends(t *testing.T, p *testworld.Pod) []string {
	t.Helper()
	var out []string
	for _, b := range []string{legacy, nft} {
		for _, prog := range []string{"iptables-" + b + "-save", "ip6tables-" + b + "-save"} {
			if o := p.MustRun(t, prog); strings.Contains(o, "WEIR_") {
				out = append(out, b)
				break
			}
		}
	}
	if _, err := p.Run("nft", "list", "table", "inet", "weir"); err == nil {
		out = append(out, nftables)
	}
	return out
}

// Must show 6 (issue 3, issue 15): rules land in the backend the agent is
// set to, or, under auto, native nftables on a node that uses nftables and
// iptables-legacy on one that uses legacy; the agent says which and why;
// traffic goes through the agent with each.
func TestBackends(t *testing.T) {
	testworld.RequireTool(t, "nft")
	for _, c := range []struct {
		name, nodeUses, configured, want string
	}{
		{"legacy", "", legacy, legacy},
		{"nft", "", nft, nft},
		{"nftables", "", nftables, nftables},
		{"auto on a legacy node", legacy, "auto", legacy},
		{"auto on an nft node", nft, "auto", nftables},
	} {
		t.Run(c.name, func(t *testing.T) {
			opts := world{"1.0.0", "redirect", "v4", c.configured}.nodeOptions()
			opts.Backend = c.nodeUses
			node := testworld.NewNode(t, opts)
			agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
			if !strings.Contains(agent.Log(), `"msg":"capture backend chosen","backend":"`+c.want+`","why":"`) {
				t.Fatalf("agent did not log its choice of %s:\n%s", c.want, agent.Log())
			}
			srv := node.MustAddPod(t, "backend", "server")
			srv.StartNginx(t, 8080, "server")
			client := node.MustAddPod(t, "demo", "client")
			if got := weirBackends(t, client); len(got) != 1 || got[0] != c.want {
				t.Fatalf("weir rules are in %v, want only %s", got, c.want)
			}
			before := outbound(t, agent)
			if body, err := client.Curl(t, url(netip.AddrPortFrom(srv.IP4, 8080))); err != nil || strings.TrimSpace(body) != "server" {
				t.Fatalf("request: %v: %q", err, body)
			}
			if outbound(t, agent)-before != 1 {
				t.Fatal("request did not go through the agent")
			}
		})
	}
}

// Must show 1 (issue 15): in a pod captured with nftables, iptables-save
// (both flavours, both families) shows nothing of weir, nft list ruleset
// shows weir's table with a comment on every rule, and the primary
// plugin's rules are untouched.
func TestNFTablesPodListings(t *testing.T) {
	testworld.RequireTool(t, "nft")
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) {
			node := testworld.NewNode(t, world{"1.0.0", mode, "dual", nftables}.nodeOptions())
			node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
			p := node.MustAddPod(t, "demo", "client")
			for _, prog := range []string{"iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"} {
				if out := p.MustRun(t, prog); strings.Contains(strings.ToLower(out), "weir") {
					t.Errorf("%s shows weir:\n%s", prog, out)
				}
			}
			listing := p.MustRun(t, "nft", "list", "ruleset")
			if !strings.Contains(listing, "table inet weir {") {
				t.Fatalf("no weir table:\n%s", listing)
			}
			rules := 0
			for _, l := range strings.Split(listing, "\n") {
				l = strings.TrimSpace(l)
				if l == "" || l == "}" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") || strings.HasPrefix(l, "type ") {
					continue
				}
				rules++
				if !strings.Contains(l, `comment "weir: `) {
					t.Errorf("rule without a weir comment: %s", l)
				}
			}
			if rules < 5 {
				t.Errorf("only %d rules listed:\n%s", rules, listing)
			}
		})
	}
}

// Must show 7 (issue 3): 50 concurrent ADDs then 50 concurrent DELs against
// one agent: every pod correct, nothing left behind, in every backend and
// in eBPF mode (50 concurrent enrolments in the pinned maps, no rule).
func TestConcurrentAddDel(t *testing.T) {
	for _, w := range []world{
		{"1.0.0", "redirect", "v4", nftables}, {"1.0.0", "redirect", "v4", nft}, {"1.0.0", "redirect", "v4", legacy},
		{"1.0.0", "ebpf", "dual", ""},
	} {
		t.Run(w.String(), func(t *testing.T) { concurrentAddDel(t, w) })
	}
}

func concurrentAddDel(t *testing.T, w world) {
	const n = 50
	node := testworld.NewNode(t, w.nodeOptions())
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	pods := make([]*testworld.Pod, n)
	for i := range pods {
		pods[i] = node.NewPodNetns(t, "demo", fmt.Sprintf("p%02d", i))
	}
	parallel := func(f func(p *testworld.Pod) error) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, p := range pods {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = f(p) }()
		}
		wg.Wait()
		return errs
	}
	for i, err := range parallel(func(p *testworld.Pod) error { return node.Add(t, p) }) {
		if err != nil {
			t.Fatalf("ADD %s: %v", pods[i].Name, err)
		}
	}
	if got := agent.Metric(t, "weir_pods_captured"); got != n {
		t.Fatalf("agent captures %v pods, want %d", got, n)
	}
	for i, err := range parallel(func(p *testworld.Pod) error { return node.Check(p) }) {
		if err != nil {
			t.Fatalf("CHECK %s after concurrent ADDs: %v", pods[i].Name, err)
		}
	}
	for _, p := range pods {
		// One listener of each kind per family.
		if ls, want := p.MustRun(t, "ss", "-Hltn"), len(w.families()); strings.Count(ls, ":15001") != want || strings.Count(ls, ":15006") != want {
			t.Fatalf("pod %s listeners:\n%s", p.Name, ls)
		}
	}
	// Every tenth pod: the rule listings cost eight programs per pod.
	for i := 0; i < n; i += 10 {
		w.assertNoRulesIn(t, pods[i])
	}
	for i, err := range parallel(func(p *testworld.Pod) error { return node.Del(p) }) {
		if err != nil {
			t.Fatalf("DEL %s: %v", pods[i].Name, err)
		}
	}
	if got := agent.Metric(t, "weir_pods_captured"); got != 0 {
		t.Fatalf("agent still captures %v pods after DELs", got)
	}
	for _, p := range pods {
		if installed(t, node, p) {
			t.Fatalf("pod %s still captured after DEL", p.Name)
		}
		if ls := p.MustRun(t, "ss", "-Hltn"); ls != "" {
			t.Fatalf("pod %s keeps listeners after DEL:\n%s", p.Name, ls)
		}
	}
}
