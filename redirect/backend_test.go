package redirect

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// detectIn runs DetectBackend with n as the caller's namespace.
func detectIn(t *testing.T, n ns.NetNS) string {
	t.Helper()
	var got string
	err := n.Do(func(ns.NetNS) error {
		var err error
		got, err = DetectBackend()
		return err
	})
	if err != nil {
		t.Fatalf("DetectBackend in %s: %v", n.Path(), err)
	}
	return got
}

func TestDetectBackend(t *testing.T) {
	for _, b := range backends {
		requireBackend(t, b)
	}
	cases := []struct {
		name  string
		setup [][]string
		want  string
	}{
		{"legacy holds rules", [][]string{
			{"iptables-legacy", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
		}, BackendLegacy},
		{"nft holds rules", [][]string{
			{"iptables-nft", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
		}, BackendNFT},
		{"more rules win", [][]string{
			{"iptables-legacy", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
			{"ip6tables-nft", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
			{"ip6tables-nft", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
		}, BackendNFT},
		{"kubelet hint beats rule count", [][]string{
			{"iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"},
			{"iptables-nft", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
			{"iptables-nft", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT"},
		}, BackendLegacy},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newNS(t)
			for _, argv := range c.setup {
				inNS(t, n, argv...)
			}
			if got := detectIn(t, n); got != c.want {
				t.Errorf("DetectBackend = %q, want %q", got, c.want)
			}
		})
	}
	// An empty namespace falls back to what plain iptables is, or nft.
	if got := detectIn(t, newNS(t)); got != BackendLegacy && got != BackendNFT {
		t.Errorf("DetectBackend in an empty netns = %q", got)
	}
}

// TestApplyDetectsBackend leaves Backend empty: the rules must land in the
// backend the caller's namespace uses.
func TestApplyDetectsBackend(t *testing.T) {
	for _, b := range backends {
		requireBackend(t, b)
	}
	caller, pod := newNS(t), newNS(t)
	inNS(t, caller, "iptables-legacy", "-w", "-t", "filter", "-A", "INPUT", "-j", "ACCEPT")
	err := caller.Do(func(ns.NetNS) error { return Apply(pod.Path(), Spec{IPv4: true}) })
	if err != nil {
		t.Fatal(err)
	}
	if rs := weirOf(t, pod, BackendLegacy, ipv4); rs.empty() {
		t.Error("rules not in legacy, the caller's backend")
	}
	if rs := weirOf(t, pod, BackendNFT, ipv4); !rs.empty() {
		t.Errorf("rules in nft although the caller uses legacy:\n%s", render(rs))
	}
	err = caller.Do(func(ns.NetNS) error { return Verify(pod.Path(), Spec{IPv4: true}) })
	if err != nil {
		t.Error(err)
	}
}
