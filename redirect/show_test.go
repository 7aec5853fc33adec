package redirect

import (
	"strings"
	"testing"
)

// TestRules checks Rules lists what Apply installed, where it lives, in
// every backend and both modes, and nothing once it is removed.
func TestRules(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			if got, err := Rules(n.Path(), fullSpec(backend)); err != nil || len(got) != 0 {
				t.Fatalf("Rules of a fresh namespace = %q, %v; want none", got, err)
			}
			for _, s := range []Spec{fullSpec(backend), tproxySpec(backend)} {
				if err := Apply(n.Path(), s); err != nil {
					t.Fatal(err)
				}
				got, err := Rules(n.Path(), s)
				if err != nil {
					t.Fatal(err)
				}
				all := strings.Join(got, "\n")
				want := []string{
					`iptables nat/OUTPUT: -A OUTPUT -m comment --comment "weir: capture outbound" -j WEIR_OUTPUT`,
					`ip6tables nat/WEIR_OUTPUT: -A WEIR_OUTPUT -p tcp -m comment --comment "weir: outbound TCP to the agent" -j REDIRECT --to-ports 15001`,
				}
				if s.Mode == ModeTPROXY {
					want = []string{
						"iptables mangle/WEIR_PREROUTING: -A WEIR_PREROUTING",
						"IPv4 routing: ip rule pref 157 fwmark 0x5800/0xff00 lookup 157",
						"IPv6 routing: ip -6 rule pref 157",
					}
				}
				if backend == BackendNFTables {
					want = []string{"nftables inet weir/output: type nat hook output", "redirect to :15001", `comment "weir: outbound TCP to the agent"`}
					if s.Mode == ModeTPROXY {
						want = []string{"nftables inet weir/prerouting: type filter hook prerouting", "tproxy", "IPv4 routing: ip rule pref 157"}
					}
				}
				for _, w := range want {
					if !strings.Contains(all, w) {
						t.Errorf("%s: Rules lacks %q:\n%s", s.Mode, w, all)
					}
				}
				for _, bad := range []string{"-legacy ", "-nft ", "handle", "ebpf:"} {
					if strings.Contains(all, bad) {
						t.Errorf("%s: Rules holds %q (another backend's rules, an unknown rule, eBPF):\n%s", s.Mode, bad, all)
					}
				}
			}
			if err := Remove(n.Path()); err != nil {
				t.Fatal(err)
			}
			if got, err := Rules(n.Path(), fullSpec(backend)); err != nil || len(got) != 0 {
				t.Fatalf("Rules after Remove = %q, %v; want none", got, err)
			}
		})
	}
}
