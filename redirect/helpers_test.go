package redirect

import (
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// missing skips the test, or fails it under CI=true, where a skipped test
// would prove nothing.
func missing(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and this test cannot run: "+format, args...)
	}
	t.Skipf(format, args...)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		missing(t, "needs root (network namespaces, iptables)")
	}
}

// requireBackend makes sure backend can be used here: both families' tools
// of an iptables flavour, or a kernel that takes weir's nftables rules.
func requireBackend(t testing.TB, backend string) {
	t.Helper()
	requireRoot(t)
	if backend == BackendNFTables {
		nftOnce.Do(func() { nftErr = ProbeNFTables() })
		if nftErr != nil {
			missing(t, "the kernel refuses weir's nftables rules (nf_tables with inet, nat, redir, tproxy and ct): %v", nftErr)
		}
		return
	}
	for _, f := range []family{ipv4, ipv6} {
		if _, err := lookupTools(backend, f); err != nil {
			missing(t, "backend %s: %v (Debian: apt-get install iptables)", backend, err)
		}
	}
}

// backends are the iptables flavours; allBackends adds native nftables.
var (
	backends    = []string{BackendLegacy, BackendNFT}
	allBackends = []string{BackendLegacy, BackendNFT, BackendNFTables}
)

var (
	nftOnce sync.Once
	nftErr  error
)

// requireNftTool needs the nft program, to look at rules the way an
// operator would.
func requireNftTool(t testing.TB) {
	t.Helper()
	if _, err := lookPath("nft"); err != nil {
		missing(t, "program nft (Debian: apt-get install nftables)")
	}
}

// newNS creates a fresh, uniquely named network namespace with lo up and
// removes it when the test ends.
func newNS(t testing.TB) ns.NetNS {
	t.Helper()
	requireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		n.Close()
		// A mount namespace another test's `ip netns exec` made at that
		// moment may hold a copy of the bind mount (EBUSY): retry, then
		// detach lazily; the namespace goes when the last holder does.
		var err error
		for range 5 {
			if err = testutils.UnmountNS(n); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		if derr := unix.Unmount(n.Path(), unix.MNT_DETACH); derr != nil {
			t.Errorf("unmount netns %s: %v; lazily: %v", n.Path(), err, derr)
			return
		}
		os.Remove(n.Path())
	})
	h := nsHandle(t, n)
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatalf("find lo in %s: %v", n.Path(), err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		t.Fatalf("set lo up in %s: %v", n.Path(), err)
	}
	return n
}

// nsHandle is a netlink handle whose sockets live in n; it is closed at the
// end of the test.
func nsHandle(t testing.TB, n ns.NetNS) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	err := n.Do(func(ns.NetNS) error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		t.Fatalf("netlink handle in %s: %v", n.Path(), err)
	}
	t.Cleanup(h.Close)
	return h
}

// inNS runs a program inside n and returns its stdout.
func inNS(t testing.TB, n ns.NetNS, argv ...string) string {
	t.Helper()
	out, err := inNSErr(n, argv...)
	if err != nil {
		t.Fatalf("%s in %s: %v", strings.Join(argv, " "), n.Path(), err)
	}
	return out
}

func inNSErr(n ns.NetNS, argv ...string) (string, error) {
	var out []byte
	err := n.Do(func(ns.NetNS) error {
		var err error
		out, err = exec.Command(argv[0], argv[1:]...).Output()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = errors.Join(err, errors.New(string(ee.Stderr)))
		}
		return err
	})
	return string(out), err
}

// saveProg is the save program of backend and family, e.g. ip6tables-nft-save.
func saveProg(backend string, f family) string {
	p := "iptables"
	if f == ipv6 {
		p = "ip6tables"
	}
	return p + "-" + backend + "-save"
}

func cmdProg(backend string, f family) string {
	p := "iptables"
	if f == ipv6 {
		p = "ip6tables"
	}
	return p + "-" + backend
}

// weirOf reads weir's part of n's rules for backend and family.
func weirOf(t testing.TB, n ns.NetNS, backend string, f family) ruleSet {
	t.Helper()
	st, err := parseSave([]byte(inNS(t, n, saveProg(backend, f))))
	if err != nil {
		t.Fatalf("parse %s: %v", saveProg(backend, f), err)
	}
	return weirView(st)
}

// addAddr puts cidr on link inside the handle's netns; IPv6 addresses skip
// duplicate address detection so they are usable at once.
func addAddr(t testing.TB, h *netlink.Handle, link netlink.Link, cidr string) {
	t.Helper()
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		t.Fatal(err)
	}
	if a.IP.To4() == nil {
		a.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(link, a); err != nil {
		t.Fatalf("add %s to %s: %v", cidr, link.Attrs().Name, err)
	}
}

// ipOf strips the prefix length.
func ipOf(cidr string) net.IP {
	ip, _, err := net.ParseCIDR(cidr)
	if err != nil {
		panic(err)
	}
	return ip
}
