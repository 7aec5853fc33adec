package integration

import (
	"os"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// Issue 15, the thin ADD path: weir-cni links no rule code, the agent
// programs an ADD's rules, and rule work weir-cni cannot do itself goes to
// weir-cni-rules. Shown on the real chain, per backend and mode:
//   - an ADD's rules are the agent's ("rulesByAgent":true) and in place;
//   - a DEL naming a namespace the agent never held, with weir rules left
//     in it (an agent that lost its state), has them removed by the agent,
//     with no helper;
//   - with the agent down, a DEL still removes everything (the helper
//     does), and CHECK fails as before (retry later, code 11).
func TestRulesWithoutPluginRuleCode(t *testing.T) {
	for _, w := range []world{
		{"1.0.0", "redirect", "v4", nftables},
		{"1.0.0", "tproxy", "dual", legacy},
		{"1.1.0", "redirect", "v4", nft},
	} {
		t.Run(w.String(), func(t *testing.T) { rulesWithoutPluginRuleCode(t, w) })
	}
}

func rulesWithoutPluginRuleCode(t *testing.T, w world) {
	node := testworld.NewNode(t, w.nodeOptions())
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}, "mode": w.mode, "backend": w.backend}})
	p := node.MustAddPod(t, "demo", "kept")
	if !installed(t, node, p) {
		t.Fatal("no capture after ADD")
	}
	if !cniLogHas(t, node, p.ContainerID, `"msg":"pod captured"`, `"rulesByAgent":true`) {
		t.Fatal("the ADD's rules were not programmed by the agent")
	}

	// Rules left in a namespace the agent does not know.
	stale := node.NewPodNetns(t, "demo", "stale")
	spec := redirect.Spec{Mode: redirect.Mode(w.mode), OutboundPort: 15001, InboundPort: 15006, IPv4: true, IPv6: w.family == "dual", Backend: w.backend}
	if err := redirect.Apply(stale.Path, spec); err != nil {
		t.Fatalf("plant weir rules by hand: %v", err)
	}
	if err := node.Del(stale); err != nil {
		t.Fatalf("DEL of a pod the agent never held: %v", err)
	}
	if installed(t, node, stale) {
		t.Fatal("weir rules left in a namespace after its DEL")
	}
	if !cniLogHas(t, node, stale.ContainerID, `"msg":"pod deleted"`, `"rulesRemovedByAgent":true`) {
		t.Fatal("the agent did not remove the rules of a namespace it never held")
	}

	// The agent goes away: DEL is the helper's, and complete.
	if err := agent.Stop(t); err != nil {
		t.Fatalf("stop agent: %v", err)
	}
	if err := node.Check(p); err == nil || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("CHECK with the agent down: %v; want weir-agent unreachable", err)
	}
	if err := node.Del(p); err != nil {
		t.Fatalf("DEL with the agent down: %v", err)
	}
	if installed(t, node, p) {
		t.Fatal("capture left after a DEL with the agent down")
	}
	if !cniLogHas(t, node, p.ContainerID, `"msg":"pod deleted"`, `"rulesRemovedByAgent":false`) {
		t.Fatal("no DEL whose rules weir-cni-rules removed in the log")
	}
}

// cniLogHas reports whether one weir-cni log line of container holds every
// fragment.
func cniLogHas(t *testing.T, node *testworld.Node, container string, fragments ...string) bool {
	t.Helper()
	b, err := os.ReadFile(node.CNILog)
	if err != nil {
		t.Fatalf("read weir-cni log: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"container":"`+container+`"`) {
			continue
		}
		all := true
		for _, f := range fragments {
			all = all && strings.Contains(line, f)
		}
		if all {
			return true
		}
	}
	return false
}
