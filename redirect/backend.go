package redirect

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
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
		return "", fmt.Errorf("detect iptables backend: %w", errors.Join(legacy.err, nft.err))
	case legacy.err != nil:
		return BackendNFT, nil
	case nft.err != nil:
		return BackendLegacy, nil
	case legacy.hint != nft.hint:
		if legacy.hint {
			return BackendLegacy, nil
		}
		return BackendNFT, nil
	case legacy.rules > nft.rules:
		return BackendLegacy, nil
	case nft.rules > legacy.rules:
		return BackendNFT, nil
	}
	if p, err := lookPath("iptables"); err == nil {
		if out, err := run([]string{p, "--version"}, nil); err == nil && strings.Contains(string(out), "(legacy)") {
			return BackendLegacy, nil
		}
	}
	return BackendNFT, nil
}

func isHintChain(name string) bool {
	for _, h := range kubeHintChains {
		if name == h {
			return true
		}
	}
	return false
}
