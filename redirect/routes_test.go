package redirect

import (
	"maps"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestAnyTagged checks the in-place rule and route scan against rules and
// routes added through the same library Apply uses: a fresh namespace's
// defaults and a rule of another protocol are not weir's; a routeProtocol
// rule of either family is, and so is a routeProtocol route in any table.
func TestAnyTagged(t *testing.T) {
	n := newNS(t)
	h := nsHandle(t, n)
	scan := func() bool {
		t.Helper()
		var got bool
		if err := n.Do(func(ns.NetNS) error {
			var err error
			got, err = anyTagged()
			return err
		}); err != nil {
			t.Fatalf("scan rules in %s: %v", n.Path(), err)
		}
		return got
	}
	add := func(fam int, proto uint8, prio int) {
		t.Helper()
		r := netlink.NewRule()
		r.Family, r.Protocol, r.Priority, r.Table, r.Mark = fam, proto, prio, 133, 0x400
		if err := h.RuleAdd(r); err != nil {
			t.Fatalf("add rule proto %d family %d: %v", proto, fam, err)
		}
	}
	if scan() {
		t.Fatal("a fresh namespace reported a weir rule")
	}
	add(netlink.FAMILY_V4, unix.RTPROT_STATIC, 100)
	if scan() {
		t.Fatal("a rule of protocol static was taken for weir's")
	}
	add(netlink.FAMILY_V6, routeProtocol, 101)
	if !scan() {
		t.Fatal("an IPv6 rule of weir's protocol was not found")
	}
	if err := h.RuleDel(&netlink.Rule{Family: netlink.FAMILY_V6, Priority: 101, Table: 133, Mark: 0x400, Protocol: routeProtocol, Goto: -1, Flow: -1, SuppressIfgroup: -1, SuppressPrefixlen: -1}); err != nil {
		t.Fatalf("delete the IPv6 rule: %v", err)
	}
	if scan() {
		t.Fatal("a deleted rule was still reported")
	}
	add(netlink.FAMILY_V4, routeProtocol, 102)
	if !scan() {
		t.Fatal("an IPv4 rule of weir's protocol was not found")
	}
	if err := h.RuleDel(&netlink.Rule{Family: netlink.FAMILY_V4, Priority: 102, Table: 133, Mark: 0x400, Protocol: routeProtocol, Goto: -1, Flow: -1, SuppressIfgroup: -1, SuppressPrefixlen: -1}); err != nil {
		t.Fatalf("delete the IPv4 rule: %v", err)
	}
	if scan() {
		t.Fatal("a deleted rule was still reported")
	}
	// The route TPROXY installs, in its own table, then one of another
	// protocol in the same table.
	other := policyFor(Spec{Mode: ModeTPROXY, IPv4: true, RouteTable: 133}, ipv4, loopbackIndex).routes[0]
	other.Protocol = unix.RTPROT_STATIC
	other.Dst = &net.IPNet{IP: net.IPv4(10, 1, 0, 0).To4(), Mask: net.CIDRMask(16, 32)}
	if err := h.RouteAdd(&other); err != nil {
		t.Fatalf("add a static route: %v", err)
	}
	if scan() {
		t.Fatal("a route of protocol static was taken for weir's")
	}
	weirs := policyFor(Spec{Mode: ModeTPROXY, IPv4: true, RouteTable: 133}, ipv4, loopbackIndex).routes[0]
	if err := h.RouteAdd(&weirs); err != nil {
		t.Fatalf("add weir's route: %v", err)
	}
	if !scan() {
		t.Fatal("a route of weir's protocol was not found")
	}
}

// TestWeirChainsInPlace checks the in-place chain scan against the decoded
// chain list it replaced, in a namespace with weir's iptables-nft chains
// (which it must find) beside weir's nftables table (whose chains, in
// family inet, it must not count).
func TestWeirChainsInPlace(t *testing.T) {
	requireBackend(t, BackendNFT)
	requireBackend(t, BackendNFTables)
	n := newNS(t)
	scan := func() (inPlace, decoded map[family]bool) {
		t.Helper()
		err := n.Do(func(ns.NetNS) error {
			sess, err := openNFT()
			if err != nil {
				return err
			}
			defer sess.close()
			if inPlace, err = sess.weirChains(); err != nil {
				return err
			}
			chains, err := sess.chains(nftables.TableFamilyUnspecified, "")
			if err != nil {
				return err
			}
			decoded = map[family]bool{}
			for _, c := range chains {
				if strings.HasPrefix(c.name, chainPrefix) && c.family == nftables.TableFamilyIPv4 {
					decoded[ipv4] = true
				}
				if strings.HasPrefix(c.name, chainPrefix) && c.family == nftables.TableFamilyIPv6 {
					decoded[ipv6] = true
				}
			}
			return nil
		})
		if err != nil {
			t.Fatalf("list chains in %s: %v", n.Path(), err)
		}
		return inPlace, decoded
	}
	if got, want := scan(); len(got) != 0 || len(want) != 0 {
		t.Fatalf("fresh namespace: in place %v, decoded %v; want none", got, want)
	}
	if err := Apply(n.Path(), fullSpec(BackendNFTables)); err != nil {
		t.Fatal(err)
	}
	if got, want := scan(); len(got) != 0 || len(want) != 0 {
		t.Fatalf("weir's own nftables table only: in place %v, decoded %v; want none", got, want)
	}
	// Apply through iptables-nft: weir's chains in family ip (and ip6),
	// the nftables table gone (Apply replaces whatever weir installed).
	if err := Apply(n.Path(), fullSpec(BackendNFT)); err != nil {
		t.Fatal(err)
	}
	got, want := scan()
	if !got[ipv4] || !maps.Equal(got, want) {
		t.Fatalf("with iptables-nft chains: in place %v, decoded %v; want ipv4 in both", got, want)
	}
}

// TestCheckFamilies: a spec that leaves a family with a global address
// uncaptured is refused, whether the in-place scan or the full listing
// decides; loopback and link-local addresses, and lo, do not count.
func TestCheckFamilies(t *testing.T) {
	n := newNS(t)
	h := nsHandle(t, n)
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0peer"}
	if err := h.LinkAdd(link); err != nil {
		t.Fatalf("add a veth pair: %v", err)
	}
	if err := h.LinkSetUp(link); err != nil {
		t.Fatalf("set eth0 up: %v", err)
	}
	addAddr := func(cidr string) *netlink.Addr {
		t.Helper()
		a, err := netlink.ParseAddr(cidr)
		if err != nil {
			t.Fatal(err)
		}
		a.Flags = unix.IFA_F_NODAD
		if err := h.AddrAdd(link, a); err != nil {
			t.Fatalf("add %s: %v", cidr, err)
		}
		return a
	}
	check := func(s Spec) (suspect bool, err error) {
		t.Helper()
		if derr := n.Do(func(ns.NetNS) error {
			var serr error
			if suspect, serr = anySuspectAddr(loopbackIndex, s); serr != nil {
				return serr
			}
			err = checkFamilies(&netlinkState{lo: loopbackIndex}, s)
			return nil
		}); derr != nil {
			t.Fatalf("scan addresses in %s: %v", n.Path(), derr)
		}
		return suspect, err
	}
	v4only, v6only := Spec{IPv4: true}, Spec{IPv6: true}
	addAddr("10.1.2.3/24")
	addAddr("fe80::1/64")
	if suspect, err := check(v4only); suspect || err != nil {
		t.Fatalf("IPv4 and link-local IPv6 under an IPv4 spec: suspect %v, %v; want neither", suspect, err)
	}
	if suspect, err := check(v6only); !suspect || err == nil || !strings.Contains(err.Error(), "IPv4 address 10.1.2.3") {
		t.Fatalf("IPv4 address under an IPv6 spec: suspect %v, %v; want a refusal naming 10.1.2.3", suspect, err)
	}
	v6 := addAddr("fd00::1/64")
	if suspect, err := check(v4only); !suspect || err == nil || !strings.Contains(err.Error(), "eth0 has IPv6 address fd00::1") {
		t.Fatalf("global IPv6 address under an IPv4 spec: suspect %v, %v; want a refusal naming it", suspect, err)
	}
	if suspect, err := check(Spec{IPv4: true, IPv6: true}); suspect || err != nil {
		t.Fatalf("dual-stack spec: suspect %v, %v; want neither", suspect, err)
	}
	if err := h.AddrDel(link, v6); err != nil {
		t.Fatalf("delete fd00::1: %v", err)
	}
	if suspect, err := check(v4only); suspect || err != nil {
		t.Fatalf("after deleting fd00::1: suspect %v, %v", suspect, err)
	}
}
