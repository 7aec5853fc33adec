package integration

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// The state files across releases (docs/install.md, "Downgrades"): an agent
// that stops leaves, beside its per-pod files, a state.json an agent older
// than per-pod files reads (every pod, with its netns); and a state.json
// such an older agent wrote (no mirror mark) is what a newer agent restores
// from, dropping its own stale per-pod files.
func TestStateMirrorForOlderAgents(t *testing.T) {
	testworld.RequireTool(t, "ss")
	node := testworld.NewNode(t, testworld.NodeOptions{})
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}}
	agent := node.StartAgent(t, cfg)
	server := node.MustAddPod(t, "backend", "server")
	server.StartNginx(t, 8080, "server")
	var pods []*testworld.Pod
	for _, name := range []string{"a", "b", "c"} {
		pods = append(pods, node.MustAddPod(t, "demo", name))
	}
	if err := agent.Stop(t); err != nil {
		t.Fatalf("stop agent: %v", err)
	}
	statePath := filepath.Join(node.Dir, "state.json")
	b, err := os.ReadFile(statePath)
	if err != nil {
		t.Fatalf("no state.json after the agent stopped: %v", err)
	}
	// What an older agent decodes.
	var st struct {
		Version int  `json:"version"`
		Mirror  bool `json:"mirror"`
		Pods    []struct {
			Netns string          `json:"netns"`
			Spec  json.RawMessage `json:"spec"`
		} `json:"pods"`
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Version != 1 || !st.Mirror {
		t.Fatalf("state.json: %v, %s", err, b)
	}
	var captured []string
	for _, p := range st.Pods {
		if p.Spec != nil {
			captured = append(captured, p.Netns)
		}
	}
	for _, p := range pods {
		if !slices.Contains(captured, p.Path) {
			t.Fatalf("state.json lacks captured pod netns %s: %s", p.Path, b)
		}
	}
	// An older agent ran meanwhile: its state.json has no mark and knows
	// pods a and b only; the per-pod files are older than it.
	var older map[string]any
	json.Unmarshal(b, &older)
	delete(older, "mirror")
	var keep []any
	for _, p := range older["pods"].([]any) {
		if p.(map[string]any)["netns"] != pods[2].Path {
			keep = append(keep, p)
		}
	}
	older["pods"] = keep
	b, _ = json.Marshal(older)
	if err := os.WriteFile(statePath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	agent.Restart(t)
	for i, p := range pods {
		listening := strings.Contains(listeningPorts(t, p), ":15001")
		if want := i < 2; listening != want {
			t.Fatalf("pod %s: capture listener %v after restoring from an older agent's state.json, want %v", p.Name, listening, want)
		}
	}
	body, err := pods[0].Curl(t, url(netip.AddrPortFrom(server.IP4, 8080)))
	if err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("restored pod cannot reach the server: %v: %q", err, body)
	}
	ents, err := os.ReadDir(filepath.Join(node.Dir, "pods"))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 3 { // a, b and the uncaptured server
		var names []string
		for _, e := range ents {
			names = append(names, e.Name())
		}
		t.Fatalf("pods/ holds %d files after the restore, want 3 (stale ones dropped): %v", len(ents), names)
	}
}
