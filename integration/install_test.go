package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// Must show 6 (issue 5), end to end: the installer chains the real weir-cni
// into a primary conflist, and the result runs a real chain that captures.
func TestInstalledConflistRunsRealChain(t *testing.T) {
	node := testworld.NewNode(t, world{"1.1.0", "redirect", "v4", ""}.nodeOptions())
	node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	// The primary: the node's chain without weir.
	var list map[string]any
	if err := json.Unmarshal(node.Conflist(), &list); err != nil {
		t.Fatal(err)
	}
	list["plugins"] = list["plugins"].([]any)[:1]
	primary, _ := json.MarshalIndent(list, "", "  ")
	confDir, binDir := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(confDir, "10-bridge.conflist"), primary, 0o644); err != nil {
		t.Fatal(err)
	}
	// No --binary: as in the image, weir-cni installs itself, and its
	// rules helper beside it (weir-cni hands install to the helper).
	out, err := node.Run(filepath.Join(node.Bin, "weir-cni"), "install", "--once",
		"--cni-conf-dir", confDir, "--cni-bin-dir", binDir,
		"--agent-socket", node.Socket, "--log-file", node.CNILog)
	if err != nil {
		t.Fatalf("weir-cni install: %v\n%s", err, out)
	}
	installed, err := os.ReadFile(filepath.Join(confDir, "10-bridge.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(installed), `"weir-cni"`) != 1 {
		t.Fatalf("installed conflist:\n%s", installed)
	}
	for _, name := range []string{"weir-cni", "weir-cni-rules"} {
		want, _ := os.ReadFile(filepath.Join(node.Bin, name))
		got, err := os.ReadFile(filepath.Join(binDir, name))
		if err != nil || len(want) == 0 || !bytes.Equal(got, want) {
			t.Fatalf("%s not installed as built (%v)", name, err)
		}
	}
	p := node.NewPodNetns(t, "demo", "installed")
	if err := node.AddList(t, p, installed, binDir); err != nil {
		t.Fatalf("ADD through the installed conflist: %v", err)
	}
	if ok, err := redirect.Installed(p.Path); err != nil || !ok {
		t.Fatalf("pod added through the installed conflist is not captured (installed=%v err=%v)", ok, err)
	}
	// Uninstall removes weir and leaves the primary working.
	if out, err := node.Run(filepath.Join(node.Bin, "weir-cni"), "uninstall", "--cni-conf-dir", confDir, "--cni-bin-dir", binDir); err != nil {
		t.Fatalf("weir-cni uninstall: %v\n%s", err, out)
	}
	after, _ := os.ReadFile(filepath.Join(confDir, "10-bridge.conflist"))
	if strings.Contains(string(after), "weir-cni") {
		t.Fatalf("uninstall left weir in the conflist:\n%s", after)
	}
	plain := node.NewPodNetns(t, "demo", "after-uninstall")
	if err := node.AddList(t, plain, after); err != nil {
		t.Fatalf("ADD through the primary after uninstall: %v", err)
	}
	if ok, _ := redirect.Installed(plain.Path); ok {
		t.Fatal("pod added after uninstall has weir rules")
	}
}
