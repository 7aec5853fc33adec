package redirect

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

// fullSpec exercises every option of REDIRECT mode.
func fullSpec(backend string) Spec {
	return Spec{
		Mode: ModeRedirect, IPv4: true, IPv6: true, Backend: backend,
		ExcludeInboundPorts:  []uint16{22},
		ExcludeOutboundPorts: []uint16{53, 853},
		ExcludeOutboundCIDRs: []string{"10.96.0.0/12", "169.254.169.254/32", "fd00:10:96::/108"},
	}
}

// TestApplyMatchesSave checks the rules land as iptables-save prints them:
// the rendered words must equal the saved words exactly, in both backends,
// or Verify could never pass.
func TestApplyMatchesSave(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := fullSpec(backend)
			if err := Apply(n.Path(), s); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			d := s.WithDefaults()
			for _, f := range []family{ipv4, ipv6} {
				have, want := weirOf(t, n, backend, f), rulesFor(d, f)
				if got, exp := render(have), render(want); got != exp {
					t.Errorf("%s %s: saved rules differ from rendered ones\nsaved:\n%s\nrendered:\n%s", backend, f, got, exp)
				}
			}
			if err := Verify(n.Path(), s); err != nil {
				t.Errorf("Verify after Apply: %v", err)
			}
			if ok, err := Installed(n.Path()); err != nil || !ok {
				t.Errorf("Installed = %v, %v; want true", ok, err)
			}
			other := otherBackend(backend)
			if _, err := lookupTools(other, ipv4); err == nil {
				if rs := weirOf(t, n, other, ipv4); !rs.empty() {
					t.Errorf("rules leaked into the %s backend:\n%s", other, render(rs))
				}
			}
		})
	}
}

func TestApplyIsIdempotent(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := fullSpec(backend)
			for i := 0; i < 3; i++ {
				if err := Apply(n.Path(), s); err != nil {
					t.Fatalf("Apply #%d: %v", i+1, err)
				}
			}
			for _, f := range []family{ipv4, ipv6} {
				saved := inNS(t, n, saveProg(backend, f))
				for _, j := range []string{"-A PREROUTING ", "-A OUTPUT "} {
					if c := strings.Count(saved, j); c != 1 {
						t.Errorf("%s: %d %q lines after three Applies, want 1:\n%s", f, c, j, saved)
					}
				}
			}
			// A stray duplicate jump (an old weir's bug, a hand edit) is
			// reported by Verify and cleaned by the next Apply.
			inNS(t, n, cmdProg(backend, ipv4), "-w", "-t", "nat", "-A", "OUTPUT", "-m", "comment", "--comment", "weir: capture outbound", "-j", chainOutput)
			err := Verify(n.Path(), s)
			if err == nil || !strings.Contains(err.Error(), `iptables nat/OUTPUT: unexpected jump`) {
				t.Errorf("Verify with a duplicate jump: %v", err)
			}
			if err := Apply(n.Path(), s); err != nil {
				t.Fatal(err)
			}
			if err := Verify(n.Path(), s); err != nil {
				t.Errorf("Verify after repair: %v", err)
			}
		})
	}
}

func TestVerifyNamesWhatIsMissing(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := fullSpec(backend)
			if err := Apply(n.Path(), s); err != nil {
				t.Fatal(err)
			}
			// Delete the final outbound REDIRECT in IPv4 by hand.
			inNS(t, n, cmdProg(backend, ipv4), "-w", "-t", "nat", "-D", chainOutput,
				"-p", "tcp", "-m", "comment", "--comment", "weir: outbound TCP to the agent", "-j", "REDIRECT", "--to-ports", "15001")
			err := Verify(n.Path(), s)
			want := `iptables nat/WEIR_OUTPUT: missing rule "-p tcp -m comment --comment \"weir: outbound TCP to the agent\" -j REDIRECT --to-ports 15001"`
			if err == nil || !strings.Contains(err.Error(), want) {
				t.Fatalf("Verify = %v\nwant it to contain %s", err, want)
			}
			var ve *VerifyError
			if !errors.As(err, &ve) || len(ve.Problems) != 1 {
				t.Errorf("want exactly one problem, got %v", err)
			}
			// Delete the IPv6 PREROUTING jump.
			inNS(t, n, cmdProg(backend, ipv6), "-w", "-t", "nat", "-D", "PREROUTING",
				"-m", "comment", "--comment", "weir: capture inbound", "-j", chainPrerouting)
			err = Verify(n.Path(), s)
			if err == nil || !strings.Contains(err.Error(), `ip6tables nat/PREROUTING: missing jump "-m comment --comment \"weir: capture inbound\" -j WEIR_PREROUTING"`) {
				t.Fatalf("Verify after deleting the v6 jump = %v", err)
			}
			// Flush a whole chain.
			inNS(t, n, cmdProg(backend, ipv6), "-w", "-t", "nat", "-F", chainPrerouting)
			if err = Verify(n.Path(), s); err == nil || !strings.Contains(err.Error(), `ip6tables nat/WEIR_PREROUTING: missing rule`) {
				t.Fatalf("Verify after flushing = %v", err)
			}
			// A spec with other ports does not verify against these rules.
			if err := Apply(n.Path(), s); err != nil {
				t.Fatal(err)
			}
			other := s
			other.OutboundPort = 15111
			if err := Verify(n.Path(), other); err == nil || !strings.Contains(err.Error(), "--to-ports 15111") {
				t.Errorf("Verify with another port = %v", err)
			}
			// v4-only spec: the IPv6 chains are unexpected.
			v4 := s
			v4.IPv6 = false
			if err := Verify(n.Path(), v4); err == nil || !strings.Contains(err.Error(), "ip6tables nat/WEIR_OUTPUT: unexpected chain") {
				t.Errorf("Verify v4-only against dual-stack rules = %v", err)
			}
		})
	}
}

func TestRemove(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := fullSpec(backend)
			// Something that is not weir's must survive Remove.
			inNS(t, n, cmdProg(backend, ipv4), "-w", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
			if err := Apply(n.Path(), s); err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 2; i++ {
				if err := Remove(n.Path()); err != nil {
					t.Fatalf("Remove #%d: %v", i+1, err)
				}
			}
			for _, f := range []family{ipv4, ipv6} {
				saved := inNS(t, n, saveProg(backend, f))
				if strings.Contains(saved, "WEIR") {
					t.Errorf("%s: weir left behind:\n%s", f, saved)
				}
			}
			if saved := inNS(t, n, saveProg(backend, ipv4)); !strings.Contains(saved, "-A OUTPUT -p udp -j RETURN") {
				t.Errorf("Remove deleted a rule weir does not own:\n%s", saved)
			}
			if ok, err := Installed(n.Path()); err != nil || ok {
				t.Errorf("Installed after Remove = %v, %v", ok, err)
			}
			if err := Verify(n.Path(), s); err == nil || !strings.Contains(err.Error(), "missing chain") {
				t.Errorf("Verify after Remove = %v", err)
			}
		})
	}
}

func TestMissingNetns(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "no-such-netns")
	if err := Remove(path); err != nil {
		t.Errorf("Remove of a missing netns = %v, want nil", err)
	}
	s := Spec{IPv4: true}
	for name, err := range map[string]error{
		"Apply":  Apply(path, s),
		"Verify": Verify(path, s),
		"Installed": func() error {
			_, err := Installed(path)
			return err
		}(),
	} {
		if err == nil || !errors.Is(err, ErrNetnsNotExist) || !IsNotExist(err) || !strings.Contains(err.Error(), path) {
			t.Errorf("%s on a missing netns = %v; want ErrNetnsNotExist naming %s", name, err, path)
		}
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("Apply created %s", path)
	}
	// A path that exists but is not a netns is an error everywhere.
	file := filepath.Join(t.TempDir(), "plain-file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Apply(file, s); err == nil || !strings.Contains(err.Error(), "is not a network namespace") {
		t.Errorf("Apply on a plain file = %v", err)
	}
	if err := Remove(file); err == nil {
		t.Error("Remove on a plain file succeeded")
	}
}

func TestInvalidSpecChangesNothing(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			good := fullSpec(backend)
			if err := Apply(n.Path(), good); err != nil {
				t.Fatal(err)
			}
			before := inNS(t, n, saveProg(backend, ipv4))
			bad := good
			bad.ExcludeOutboundCIDRs = append(bad.ExcludeOutboundCIDRs, "not-a-cidr")
			err := Apply(n.Path(), bad)
			if err == nil || !strings.Contains(err.Error(), "invalid spec") || !strings.Contains(err.Error(), n.Path()) {
				t.Fatalf("Apply(bad) = %v", err)
			}
			if after := inNS(t, n, saveProg(backend, ipv4)); stripComments(after) != stripComments(before) {
				t.Errorf("invalid Apply changed the rules:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			if err := Verify(n.Path(), good); err != nil {
				t.Error(err)
			}
		})
	}
}

func stripComments(save string) string {
	var keep []string
	for _, l := range strings.Split(save, "\n") {
		if !strings.HasPrefix(l, "#") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// TestIPv6FailureRollsBackIPv4 makes ip6tables-restore fail (a real program
// that exits 1, put where the tools are looked up) and checks IPv4 is left
// exactly as it was: empty in a fresh netns, the old rules in a captured one.
func TestIPv6FailureRollsBackIPv4(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			real6, err := lookupTools(backend, ipv6)
			if err != nil {
				t.Fatal(err)
			}
			failing := filepath.Join(t.TempDir(), "ip6tables-restore-fails")
			script := "#!/bin/sh\necho 'ip6tables-restore: simulated failure' >&2\nexit 1\n"
			if err := os.WriteFile(failing, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			broken := real6
			broken.restore = failing
			key := toolKey{backend, ipv6}
			t.Cleanup(func() { toolCache.Store(key, real6) })

			fresh, captured := newNS(t), newNS(t)
			old := fullSpec(backend)
			old.ExcludeOutboundPorts = []uint16{9999}
			if err := Apply(captured.Path(), old); err != nil {
				t.Fatal(err)
			}
			oldV4 := render(weirOf(t, captured, backend, ipv4))
			oldV6 := render(weirOf(t, captured, backend, ipv6))

			toolCache.Store(key, broken)
			s := fullSpec(backend)
			for _, n := range []ns.NetNS{fresh, captured} {
				err := Apply(n.Path(), s)
				if err == nil || !strings.Contains(err.Error(), "simulated failure") {
					t.Fatalf("Apply with failing ip6tables-restore = %v", err)
				}
			}
			if rs := weirOf(t, fresh, backend, ipv4); !rs.empty() {
				t.Errorf("IPv4 left programmed after IPv6 failed:\n%s", render(rs))
			}
			if got := render(weirOf(t, captured, backend, ipv4)); got != oldV4 {
				t.Errorf("IPv4 not rolled back to the previous rules:\n%s\nwant:\n%s", got, oldV4)
			}
			if got := render(weirOf(t, captured, backend, ipv6)); got != oldV6 {
				t.Errorf("IPv6 changed although its restore failed:\n%s", got)
			}
			// A v4-only spec does not need ip6tables-restore for a fresh
			// netns (nothing to clean in IPv6), so it still applies.
			v4 := s
			v4.IPv6 = false
			if err := Apply(fresh.Path(), v4); err != nil {
				t.Errorf("v4-only Apply with failing ip6tables-restore: %v", err)
			}
		})
	}
}

// TestBackendSwitch moves a pod from one backend to the other: the old
// backend's rules go, and Remove cleans both.
func TestBackendSwitch(t *testing.T) {
	for _, backend := range backends {
		requireBackend(t, backend)
	}
	n := newNS(t)
	s := fullSpec(BackendLegacy)
	if err := Apply(n.Path(), s); err != nil {
		t.Fatal(err)
	}
	s.Backend = BackendNFT
	if err := Verify(n.Path(), s); err == nil || !strings.Contains(err.Error(), "iptables-legacy nat/WEIR_OUTPUT: unexpected chain") {
		t.Errorf("Verify(nft) with rules in legacy = %v", err)
	}
	if err := Apply(n.Path(), s); err != nil {
		t.Fatal(err)
	}
	if rs := weirOf(t, n, BackendLegacy, ipv4); !rs.empty() {
		t.Errorf("legacy rules left after switching to nft:\n%s", render(rs))
	}
	if err := Verify(n.Path(), s); err != nil {
		t.Error(err)
	}
	// Put some back in legacy by hand; Remove must find both.
	inNS(t, n, "iptables-legacy", "-w", "-t", "nat", "-N", "WEIR_STALE")
	if err := Remove(n.Path()); err != nil {
		t.Fatal(err)
	}
	if ok, err := Installed(n.Path()); err != nil || ok {
		t.Errorf("Installed after Remove = %v, %v", ok, err)
	}
}

// TestDualStackGuard refuses to capture only IPv4 of a pod that has a
// global IPv6 address, and changes nothing.
func TestDualStackGuard(t *testing.T) {
	requireBackend(t, BackendNFT)
	n := newNS(t)
	h := nsHandle(t, n)
	// A veth pair inside the test netns stands in for eth0.
	inNS(t, n, "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
	inNS(t, n, "ip", "link", "set", "eth0", "up")
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addAddr(t, h, eth0, "10.200.0.5/24")
	addAddr(t, h, eth0, "fd00:200::5/64")
	err = Apply(n.Path(), Spec{IPv4: true, Backend: BackendNFT})
	if err == nil || !strings.Contains(err.Error(), "fd00:200::5") {
		t.Fatalf("v4-only Apply on a dual-stack pod = %v", err)
	}
	if ok, _ := Installed(n.Path()); ok {
		t.Error("refused Apply left rules behind")
	}
	if err := Apply(n.Path(), Spec{IPv4: true, IPv6: true, Backend: BackendNFT}); err != nil {
		t.Errorf("dual-stack Apply: %v", err)
	}
}

// TestConcurrentApply races several Applies (as the plugin and the agent
// might) on one netns: whatever the interleaving, the end state is one
// complete rule set with one jump per chain.
func TestConcurrentApply(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := fullSpec(backend)
			const workers = 6
			errs := make(chan error, workers)
			for i := 0; i < workers; i++ {
				go func() { errs <- Apply(n.Path(), s) }()
			}
			for i := 0; i < workers; i++ {
				if err := <-errs; err != nil {
					t.Errorf("concurrent Apply: %v", err)
				}
			}
			if err := Verify(n.Path(), s); err != nil {
				t.Errorf("Verify after concurrent Applies: %v", err)
			}
		})
	}
}
