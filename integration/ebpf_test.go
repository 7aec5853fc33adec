package integration

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/bpf/capture"
	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// assertNoRules fails unless the pod netns holds no iptables, ip6tables or
// nft rule and no policy route beyond the kernel's defaults: eBPF capture
// must need none.
func assertNoRules(t *testing.T, p *testworld.Pod) {
	t.Helper()
	for _, tool := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		out := p.MustRun(t, tool)
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "-A ") {
				t.Fatalf("%s in pod %s: rule %q; eBPF capture must program none", tool, p.Name, l)
			}
		}
	}
	if _, err := exec.LookPath("nft"); err == nil {
		if out := strings.TrimSpace(p.MustRun(t, "nft", "list", "ruleset")); out != "" {
			t.Fatalf("nft ruleset in pod %s is not empty:\n%s", p.Name, out)
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		for _, l := range strings.Split(strings.TrimSpace(p.MustRun(t, "ip", fam, "rule")), "\n") {
			if !strings.Contains(l, "lookup local") && !strings.Contains(l, "lookup main") && !strings.Contains(l, "lookup default") {
				t.Fatalf("policy route in pod %s: %q", p.Name, l)
			}
		}
	}
}

// TestEBPFCaptureLifecycle: in ebpf mode a captured pod holds no rule and
// no policy route; it is enrolled in the pinned maps and released by DEL;
// an agent restart re-uses the pinned programs (the cgroup still has five
// links, not ten) and captured traffic flows again within 2 s.
func TestEBPFCaptureLifecycle(t *testing.T) {
	for _, fam := range []string{"v4", "dual"} {
		t.Run(fam, func(t *testing.T) {
			w := world{"1.1.0", "ebpf", fam, ""}
			m := newMesh(t, w)
			assertNoRules(t, m.client)
			if on, err := redirect.Installed(m.client.Path, redirect.WithPinPath(m.node.PinPath)); err != nil || !on {
				t.Fatalf("captured pod: enrolled=%v err=%v", on, err)
			}
			if n, err := capture.CgroupLinks(m.node.Cgroup); err != nil || n != 5 {
				t.Fatalf("cgroup links: %d (err %v), want 5", n, err)
			}
			if err := m.node.Check(m.client); err != nil {
				t.Fatalf("CHECK of an ebpf pod: %v", err)
			}

			m.agent.Restart(t)
			if n, err := capture.CgroupLinks(m.node.Cgroup); err != nil || n != 5 {
				t.Fatalf("cgroup links after a restart: %d (err %v), want 5: attached twice", n, err)
			}
			deadline := time.Now().Add(2 * time.Second)
			for {
				body, err := m.client.Curl(t, url(vip(w.families()[0])), "--max-time", "1")
				if err == nil && strings.HasPrefix(strings.TrimSpace(body), "server-") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("service not reachable 2s after the agent restarted: %v: %s", err, body)
				}
				time.Sleep(50 * time.Millisecond)
			}

			if err := m.node.Del(m.client); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if on, err := redirect.Installed(m.client.Path, redirect.WithPinPath(m.node.PinPath)); err != nil || on {
				t.Fatalf("after DEL: enrolled=%v err=%v", on, err)
			}
		})
	}
}

// TestEBPFFallback: a node whose cgroup v2 path is missing gets the named
// error; with ebpfFallback redirect the pod is captured with iptables
// instead, and with none its ADD fails naming what is missing.
func TestEBPFFallback(t *testing.T) {
	node := testworld.NewNode(t, testworld.NodeOptions{Weir: map[string]any{"mode": "ebpf"}, EBPF: true})
	bad := map[string]any{"pinPath": node.PinPath, "cgroup": "/sys/fs/cgroup/weir-no-such-cgroup"}
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{
		"namespaces": []string{"demo"}, "ebpf": bad, "ebpfFallback": "redirect"}})
	p := node.MustAddPod(t, "demo", "fallback")
	// The fallback programs rules in the node's backend: native nftables
	// (auto on an nftables node) or an iptables flavour.
	ipt := p.MustRun(t, "iptables-save", "-t", "nat")
	nft, _ := p.Run("nft", "list", "table", "inet", "weir")
	if !strings.Contains(ipt, "WEIR_OUTPUT") && !strings.Contains(nft, "redirect to :15001") {
		t.Fatalf("fallback redirect: no weir rules in the pod:\n%s\n%s", ipt, nft)
	}
	if log := agent.Log(); !strings.Contains(log, "cgroup") || !strings.Contains(log, "eBPF capture unavailable") {
		t.Fatalf("agent log does not name the missing cgroup v2:\n%s", log)
	}
	agent.Stop(t)

	node.StartAgent(t, map[string]any{"capture": map[string]any{
		"namespaces": []string{"demo"}, "ebpf": bad, "ebpfFallback": "none"}})
	_, err := node.AddPod(t, "demo", "nofallback")
	if err == nil || !strings.Contains(err.Error(), "cgroup") {
		t.Fatalf("ADD with ebpfFallback none on a node without cgroup v2: %v; want an error naming cgroup v2", err)
	}
}
