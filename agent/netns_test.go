package agent

import (
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy/netns"
)

// throwawayNetns makes a named network namespace for a test (root only;
// under CI=true a missing privilege fails instead of skipping).
func throwawayNetns(t *testing.T, name string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("needs root (CI=true: failing instead of skipping)")
		}
		t.Skip("needs root")
	}
	name = "weir-guard-" + name
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v %s", name, err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", name).Run() })
	return "/run/netns/" + name
}

func guardAgent(t *testing.T, hostPath string) *Agent {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	nodes, err := findNodeNamespaces(hostPath, log)
	if err != nil {
		t.Fatal(err)
	}
	return &Agent{log: log, pods: newRegistry(), nodeNetns: nodes}
}

func wantRefusal(t *testing.T, err error, path, why string) {
	t.Helper()
	var r *netnsRefusal
	if !errors.As(err, &r) {
		t.Fatalf("error %v (%T), want a refusal", err, err)
	}
	if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), why) {
		t.Fatalf("refusal %q does not name %s and %q", err, path, why)
	}
}

// The node's namespaces and whatever is no network namespace are refused,
// naming the path and the reason; a pod's namespace passes.
func TestVetNetns(t *testing.T) {
	host := throwawayNetns(t, "host")
	podNS := throwawayNetns(t, "pod")
	a := guardAgent(t, host)
	file := filepath.Join(t.TempDir(), "netns")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ path, why string }{
		{"/proc/self/ns/net", "the agent's own network namespace"},
		{"/proc/thread-self/ns/net", "the agent's own network namespace"},
		{host, "the host's network namespace (PID 1's"},
		{"/proc/self/ns/mnt", "not a network namespace: it is a mount namespace"},
		{file, "not a network namespace"},
		{"/run/netns/weir-guard-missing", "cannot be opened"},
	} {
		_, err := a.vetNetns(tc.path)
		wantRefusal(t, err, tc.path, tc.why)
	}
	if _, err := a.vetNetns("/run/netns/weir-guard-missing"); !notExist(err) {
		t.Fatalf("a missing path is not reported as gone: %v", err)
	}
	id, err := a.vetNetns(podNS)
	if err != nil {
		t.Fatalf("pod namespace refused: %v", err)
	}
	if want, _ := netns.IDOf(podNS); id != want {
		t.Fatalf("identity %v, want %v", id, want)
	}
}

// PID 1's namespace may be unreadable (a container without the host's PID
// namespace): the guard still knows the agent's own.
func TestFindNodeNamespacesWithoutPID1(t *testing.T) {
	a := guardAgent(t, filepath.Join(t.TempDir(), "no-such-ns"))
	own, _ := netns.IDOf("/proc/self/ns/net")
	if len(a.nodeNetns) != 1 || a.nodeNetns[own] == "" {
		t.Fatalf("node namespaces %v, want the agent's own (%v) only", a.nodeNetns, own)
	}
}

// A namespace known under one container id is refused under another; the
// same container (another interface), a stand-in of discovery for the same
// pod, and an entry whose namespace is gone are no owners.
func TestNotShared(t *testing.T) {
	podNS := throwawayNetns(t, "shared")
	a := guardAgent(t, "/proc/self/ns/net")
	id, err := netns.IDOf(podNS)
	if err != nil {
		t.Fatal(err)
	}
	first := api.Attachment{ContainerID: "c1", IfName: "eth0"}
	a.pods.swap(&pod{att: first, meta: api.Pod{Namespace: "demo", Name: "a"}, netnsPath: podNS, nsID: id})

	_, err = a.admitNetns(podNS, api.Attachment{ContainerID: "c2", IfName: "eth0"}, api.Pod{Namespace: "demo", Name: "b"})
	wantRefusal(t, err, podNS, "already the network namespace of pod demo/a (container c1")
	for _, att := range []api.Attachment{first, {ContainerID: "c1", IfName: "net1"}} {
		if _, err := a.admitNetns(podNS, att, api.Pod{Namespace: "demo", Name: "a"}); err != nil {
			t.Fatalf("%+v refused: %v", att, err)
		}
	}

	// Discovery's stand-in gives way to an ADD of the same pod only.
	b := guardAgent(t, "/proc/self/ns/net")
	b.pods.swap(&pod{att: api.Attachment{ContainerID: discoveredPrefix + "u1", IfName: "eth0"}, meta: api.Pod{Namespace: "demo", Name: "a", UID: "u1"}, netnsPath: podNS, nsID: id})
	if _, err := b.admitNetns(podNS, first, api.Pod{Namespace: "demo", Name: "a", UID: "u1"}); err != nil {
		t.Fatalf("ADD of the discovered pod refused: %v", err)
	}
	_, err = b.admitNetns(podNS, first, api.Pod{Namespace: "demo", Name: "other"})
	wantRefusal(t, err, podNS, "already the network namespace of pod demo/a")
	_, err = b.admitNetns(podNS, first, api.Pod{Namespace: "demo", Name: "a", UID: "u2"})
	wantRefusal(t, err, podNS, "already the network namespace of pod demo/a")
	b.dropStandIns(id, first, api.Pod{Namespace: "demo", Name: "a"})
	if b.pods.len() != 0 {
		t.Fatalf("stand-in kept after the ADD that supersedes it")
	}

	// An uncaptured entry whose namespace is gone owns nothing.
	c := guardAgent(t, "/proc/self/ns/net")
	c.pods.swap(&pod{att: first, meta: api.Pod{Namespace: "demo", Name: "a"}, netnsPath: filepath.Join(t.TempDir(), "gone"), nsID: id})
	if _, err := c.admitNetns(podNS, api.Attachment{ContainerID: "c2", IfName: "eth0"}, api.Pod{Namespace: "demo", Name: "b"}); err != nil {
		t.Fatalf("stale entry blocks its (reused) namespace: %v", err)
	}
}
