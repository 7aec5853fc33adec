// Package testworld builds a Kubernetes-like node out of network namespaces
// for weir's end-to-end tests: an isolated node netns holding the bridge, the
// agent and the CNI chain; pod netns attached to it by the real CNI reference
// plugins run through libcni with weir-cni chained last; real programs
// (nginx, curl, iperf3, …) inside the pods.
//
// Nothing is attached to the root network namespace: traffic that escapes
// capture dies inside the node netns. Everything a test builds is torn down
// by t.Cleanup, even when the test fails, and names are unique per test so
// tests may run side by side.
package testworld

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run in CI, where a missing prerequisite must
// fail rather than skip: a skipped test proves nothing.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require stops the test when ok is false: a failure in CI, a skip elsewhere.
func Require(t T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if InCI() {
		t.Fatalf("missing prerequisite (CI=true, so this fails instead of skipping): %s", what)
	}
	t.Skipf("missing prerequisite: %s", what)
}

// RequireRoot needs root (network namespaces, iptables).
func RequireRoot(t T) {
	t.Helper()
	Require(t, os.Geteuid() == 0, "root privileges (run the tests as root)")
}

// RequireTool needs a program on PATH.
func RequireTool(t T, names ...string) {
	t.Helper()
	for _, n := range names {
		_, err := exec.LookPath(n)
		Require(t, err == nil, "program "+n+" on PATH (see the README's install step)")
	}
}

// T is the part of testing.TB the test world uses, so that the demo program
// can build the same world outside a test.
type T interface {
	Helper()
	Logf(format string, args ...any)
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
	Skipf(format string, args ...any)
	Fatal(args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

var _ T = (testing.TB)(nil)
