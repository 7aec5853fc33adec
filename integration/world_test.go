package integration

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// world says which test world a case runs in.
type world struct {
	spec    string // CNI spec version
	mode    string // redirect | tproxy | ebpf
	family  string // v4 | v6 | dual
	backend string // the agent's capture.backend: nftables | nft | legacy; "" is auto
}

func (w world) String() string {
	b := w.backend
	if b == "" {
		b = "auto"
	}
	return fmt.Sprintf("cni-%s/%s/%s/%s", w.spec, w.mode, w.family, b)
}

// Backends the suites run under: native nftables (what auto picks on a
// node that uses nftables, as the test machine's does) and both iptables
// flavours.
const (
	nftables = redirect.BackendNFTables
	nft      = redirect.BackendNFT
	legacy   = redirect.BackendLegacy
)

// families are the IP families a world's pods have.
func (w world) families() []string {
	switch w.family {
	case "v6":
		return []string{"v6"}
	case "dual":
		return []string{"v4", "v6"}
	}
	return []string{"v4"}
}

// matrix is every world the skeleton suite must pass in: both CNI spec
// versions, both modes, IPv4-only, IPv6-only and dual-stack pods, with
// rules in native nftables and in iptables-nft; iptables-legacy in both
// modes on dual-stack pods (the family and spec axes exercise nothing
// backend-specific that the others do not).
func matrix() []world {
	var out []world
	for _, backend := range []string{nftables, nft} {
		for _, spec := range specVersions {
			for _, mode := range []string{"redirect", "tproxy"} {
				for _, fam := range []string{"v4", "v6", "dual"} {
					out = append(out, world{spec, mode, fam, backend})
				}
			}
		}
	}
	for _, mode := range []string{"redirect", "tproxy"} {
		out = append(out, world{"1.0.0", mode, "dual", legacy})
	}
	// eBPF mode programs no rules, so it has no backend axis.
	for _, spec := range specVersions {
		for _, fam := range []string{"v4", "v6", "dual"} {
			out = append(out, world{spec, "ebpf", fam, ""})
		}
	}
	return out
}

func forEachWorld(t *testing.T, f func(t *testing.T, w world)) {
	for _, w := range matrix() {
		t.Run(w.String(), func(t *testing.T) { f(t, w) })
	}
}

func (w world) nodeOptions() testworld.NodeOptions {
	return testworld.NodeOptions{
		SpecVersion:    w.spec,
		IPv6:           w.family != "v4",
		NoIPv4:         w.family == "v6",
		Weir:           map[string]any{"mode": w.mode},
		CaptureBackend: w.backend,
		EBPF:           w.mode == "ebpf",
	}
}

// addr returns p's address of family fam.
func addr(p *testworld.Pod, fam string) netip.Addr {
	if fam == "v6" {
		return p.IP6
	}
	return p.IP4
}

// hostPort formats ip:port, bracketing IPv6.
func hostPort(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }

// vip is the virtual service address of family fam.
func vip(fam string) netip.AddrPort {
	if fam == "v6" {
		return netip.MustParseAddrPort("[fd00:96::10]:80")
	}
	return netip.MustParseAddrPort("10.96.0.10:80")
}
