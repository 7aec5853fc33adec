package redirect

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// ErrToolNotFound is wrapped when the iptables programs of a backend are not
// installed. Remove and Installed skip such a backend (nothing can have been
// programmed through it); Apply and Verify fail.
var ErrToolNotFound = errors.New("iptables tool not found")

// family is an IP version; it picks iptables or ip6tables.
type family int

const (
	ipv4 family = iota
	ipv6
)

func (f family) String() string {
	if f == ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// tools is the save/restore pair that reads and writes one backend's rules
// for one family.
type tools struct {
	backend string
	family  family
	save    string
	restore string
}

func (t tools) String() string { return t.backend + "/" + t.family.String() }

// sbinDirs are searched after $PATH: a CNI plugin inherits the runtime's
// environment, which may leave out the sbin directories iptables lives in.
var sbinDirs = []string{"/usr/sbin", "/sbin", "/usr/local/sbin"}

var toolCache sync.Map // toolKey -> tools

type toolKey struct {
	backend string
	family  family
}

// lookupTools finds the programs for backend and family. It prefers the
// explicit names (iptables-nft-save, ip6tables-legacy-restore …) and falls
// back to the plain names when their --version says they are that backend.
// Successful answers are cached; a missing tool is looked for again next time.
func lookupTools(backend string, f family) (tools, error) {
	key := toolKey{backend, f}
	if t, ok := toolCache.Load(key); ok {
		return t.(tools), nil
	}
	prog := "iptables"
	if f == ipv6 {
		prog = "ip6tables"
	}
	want := map[string]string{BackendLegacy: "(legacy)", BackendNFT: "(nf_tables)"}[backend]
	if want == "" {
		return tools{}, fmt.Errorf("unknown backend %q", backend)
	}
	t := tools{backend: backend, family: f}
	save, errSave := lookPath(prog + "-" + backend + "-save")
	restore, errRestore := lookPath(prog + "-" + backend + "-restore")
	if errSave == nil && errRestore == nil {
		t.save, t.restore = save, restore
		toolCache.Store(key, t)
		return t, nil
	}
	// Plain names, if they are the backend we want.
	save, errSave = lookPath(prog + "-save")
	restore, errRestore = lookPath(prog + "-restore")
	if errSave == nil && errRestore == nil {
		out, err := run([]string{save, "--version"}, nil)
		v := string(out)
		// Before 1.8 there was only legacy, and --version named no backend.
		isLegacy := strings.Contains(v, "(legacy)") || (err == nil && !strings.Contains(v, "("))
		if err == nil && (strings.Contains(v, want) || (backend == BackendLegacy && isLegacy)) {
			t.save, t.restore = save, restore
			toolCache.Store(key, t)
			return t, nil
		}
	}
	return tools{}, fmt.Errorf("%w: no %s-%s-save/-restore (nor a plain %s-save that is %s)", ErrToolNotFound, prog, backend, prog, backend)
}

// lookPath is exec.LookPath with the sbin directories added after $PATH.
func lookPath(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range sbinDirs {
		p := filepath.Join(d, name)
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrToolNotFound, name)
}

// kubeHintChains are chains kubelet creates in the backend it uses, so their
// presence settles the question the way kube-proxy settles it.
var kubeHintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// DetectBackend tells which iptables backend the caller's network namespace
// (the node) uses, so pod rules go where the node's datapath tooling expects
// them: a chain kubelet leaves behind (KUBE-IPTABLES-HINT or
// KUBE-KUBELET-CANARY) decides first; otherwise the backend holding more
// rules wins; a tie goes to what plain `iptables --version` names, and
// finally to nft. It only reads: it runs the save programs, nothing else.
func DetectBackend() (string, error) {
	b, _, err := detectIPTables()
	return b, err
}

// detectIPTables is DetectBackend, with the evidence that decided it.
func detectIPTables() (backend, basis string, err error) {
	type census struct {
		rules int
		hint  bool
		err   error
	}
	count := func(backend string) census {
		var c census
		found := false
		for _, f := range []family{ipv4, ipv6} {
			t, err := lookupTools(backend, f)
			if err != nil {
				continue
			}
			out, err := run([]string{t.save}, nil)
			if err != nil {
				c.err = err
				continue
			}
			found = true
			st, err := parseSave(out)
			if err != nil {
				c.err = err
				continue
			}
			for _, tbl := range st {
				for _, name := range tbl.order {
					if isHintChain(name) {
						c.hint = true
					}
					c.rules += len(tbl.rules[name])
				}
			}
		}
		if found {
			c.err = nil
		} else if c.err == nil {
			c.err = fmt.Errorf("%w: %s backend", ErrToolNotFound, backend)
		}
		return c
	}
	legacy, nft := count(BackendLegacy), count(BackendNFT)
	switch {
	case legacy.err != nil && nft.err != nil:
		return "", "", fmt.Errorf("detect iptables backend: %w", errors.Join(legacy.err, nft.err))
	case legacy.err != nil:
		return BackendNFT, "only iptables-nft can read the node's rules", nil
	case nft.err != nil:
		return BackendLegacy, "only iptables-legacy can read the node's rules", nil
	case legacy.hint != nft.hint:
		if legacy.hint {
			return BackendLegacy, "kubelet's hint chain is in iptables-legacy", nil
		}
		return BackendNFT, "kubelet's hint chain is in iptables-nft", nil
	case legacy.rules > nft.rules:
		return BackendLegacy, fmt.Sprintf("iptables-legacy holds %d rules, iptables-nft %d", legacy.rules, nft.rules), nil
	case nft.rules > legacy.rules:
		return BackendNFT, fmt.Sprintf("iptables-nft holds %d rules, iptables-legacy %d", nft.rules, legacy.rules), nil
	}
	if p, err := lookPath("iptables"); err == nil {
		if out, err := run([]string{p, "--version"}, nil); err == nil && strings.Contains(string(out), "(legacy)") {
			return BackendLegacy, fmt.Sprintf("both flavours hold %d rules and plain iptables is legacy", nft.rules), nil
		}
	}
	return BackendNFT, fmt.Sprintf("both flavours hold %d rules and plain iptables is not legacy", nft.rules), nil
}

// ChooseBackend picks the backend for pods of a node whose operator left
// the choice to weir (capture.backend auto), looking at the caller's
// network namespace as the node's, and says why in words fit for a log.
// Native nftables wins where the node uses nftables (its iptables is the
// nf_tables flavour, or it has no iptables at all) and the kernel takes
// weir's nftables rule sets: one table, one transaction, no program per
// pod. A node on iptables-legacy keeps legacy: its kernel and tooling may
// not do nftables. When nftables fails the kernel probe, the node's
// iptables flavour is used.
func ChooseBackend() (backend, why string, err error) {
	flavour, basis, derr := detectIPTables()
	if derr == nil && flavour == BackendLegacy {
		return BackendLegacy, "the node uses iptables-legacy (" + basis + ")", nil
	}
	if perr := ProbeNFTables(); perr != nil {
		if derr != nil {
			return "", "", fmt.Errorf("no usable backend: %w", errors.Join(derr, perr))
		}
		return flavour, fmt.Sprintf("the node uses iptables-nft (%s) but the kernel refuses weir's nftables rules: %v", basis, perr), nil
	}
	if derr != nil {
		return BackendNFTables, "no iptables on the node and the kernel takes weir's nftables rules", nil
	}
	return BackendNFTables, "the node uses nftables (iptables-nft: " + basis + ") and the kernel takes weir's nftables rules", nil
}

// ProbeNFTables programs weir's nftables rule sets, REDIRECT and TPROXY for
// both families, into a network namespace made for the purpose and thrown
// away, and returns what the kernel refused, if anything: a kernel without
// nf_tables, its inet family, nat, redir, tproxy or ct support fails here
// rather than at a pod's ADD.
func ProbeNFTables() error {
	errc := make(chan error, 1)
	go func() {
		// The thread never goes back to the caller's namespace: it is
		// locked and left to die with the goroutine, taking the probe
		// namespace with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("create a probe network namespace: %w", err)
			return
		}
		errc <- func() error {
			sess, err := openNFT()
			if err != nil {
				return err
			}
			defer sess.close()
			for _, mode := range []Mode{ModeRedirect, ModeTPROXY} {
				s := Spec{Mode: mode, IPv4: true, IPv6: true, ExcludeInboundPorts: []uint16{1},
					ExcludeOutboundPorts: []uint16{1}, ExcludeOutboundCIDRs: []string{"192.0.2.0/24", "2001:db8::/32"}}
				if err := sess.replace(s.WithDefaults()); err != nil {
					return fmt.Errorf("%s rules: %w", mode, err)
				}
			}
			return nil
		}()
	}()
	return <-errc
}

// ForeignIPTables reports which iptables flavour, if any, holds rules that
// are not weir's in the network namespace at netnsPath ("" for none):
// something in that pod depends on iptables, and weir's capture had better
// sit in the same flavour than beside it in a table of its own, where the
// order of two nat or mangle hooks at one priority is not defined. It reads
// without starting a program unless legacy tables exist there.
func ForeignIPTables(netnsPath string) (string, error) {
	var flavour string
	err := inNetns(netnsPath, func() error {
		for _, f := range []family{ipv4, ipv6} {
			names, err := legacyTables(f)
			if err != nil {
				return err
			}
			if len(names) == 0 {
				continue
			}
			t, err := lookupTools(BackendLegacy, f)
			if err != nil {
				continue
			}
			out, err := run([]string{t.save}, nil)
			if err != nil {
				return err
			}
			st, err := parseSave(out)
			if err != nil {
				return err
			}
			if foreignRules(st) {
				flavour = BackendLegacy
				return nil
			}
		}
		op := &nsOp{}
		defer op.close()
		sess, err := op.session()
		if err != nil {
			return err
		}
		for _, f := range []family{ipv4, ipv6} {
			found, err := sess.foreignIPTablesNFT(f)
			if err != nil {
				return err
			}
			if found {
				flavour = BackendNFT
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("look for other iptables rules in %s: %w", netnsPath, err)
	}
	return flavour, nil
}

// foreignRules reports whether a saved rule set holds a rule outside
// weir's chains that does not jump into one.
func foreignRules(st saveState) bool {
	for _, tbl := range st {
		for chain, rules := range tbl.rules {
			if strings.HasPrefix(chain, chainPrefix) {
				continue
			}
			for _, r := range rules {
				if !strings.HasPrefix(r.target(), chainPrefix) {
					return true
				}
			}
		}
	}
	return false
}

func isHintChain(name string) bool {
	for _, h := range kubeHintChains {
		if name == h {
			return true
		}
	}
	return false
}
