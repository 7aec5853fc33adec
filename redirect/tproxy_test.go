package redirect

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
)

func tproxySpec(backend string) Spec {
	s := fullSpec(backend)
	s.Mode = ModeTPROXY
	return s
}

// TestTPROXYApplyMatchesSave checks the mangle rules land exactly as
// rendered and the policy rule and local route exist, per family.
func TestTPROXYApplyMatchesSave(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := tproxySpec(backend)
			if err := Apply(n.Path(), s); err != nil {
				t.Fatalf("Apply: %v", err)
			}
			d := s.WithDefaults()
			for _, f := range []family{ipv4, ipv6} {
				have, want := weirOf(t, n, backend, f), rulesFor(d, f)
				if got, exp := render(have), render(want); got != exp {
					t.Errorf("%s: saved rules differ from rendered ones\nsaved:\n%s\nrendered:\n%s", f, got, exp)
				}
				if _, ok := have["nat"]; ok {
					t.Errorf("%s: TPROXY mode left nat rules", f)
				}
			}
			ipFlag := map[family]string{ipv4: "-4", ipv6: "-6"}
			for f, dst := range map[family]string{ipv4: "local default dev lo", ipv6: "local default dev lo"} {
				rules := inNS(t, n, "ip", ipFlag[f], "rule", "show")
				if !strings.Contains(rules, "157:\tfrom all fwmark 0x5800/0xff00 lookup 157 proto 87") {
					t.Errorf("%s policy rule missing:\n%s", f, rules)
				}
				routes := inNS(t, n, "ip", ipFlag[f], "route", "show", "table", "157")
				if !strings.Contains(routes, dst) {
					t.Errorf("%s route missing in table 157:\n%s", f, routes)
				}
			}
			if err := Verify(n.Path(), s); err != nil {
				t.Errorf("Verify: %v", err)
			}
			if ok, err := Installed(n.Path()); err != nil || !ok {
				t.Errorf("Installed = %v, %v", ok, err)
			}
		})
	}
}

func TestTPROXYIdempotentAndVerify(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := tproxySpec(backend)
			for i := 0; i < 3; i++ {
				if err := Apply(n.Path(), s); err != nil {
					t.Fatalf("Apply #%d: %v", i+1, err)
				}
			}
			for _, f := range []family{ipv4, ipv6} {
				saved := inNS(t, n, saveProg(backend, f))
				for _, j := range []string{"-A PREROUTING ", "-A OUTPUT "} {
					if c := strings.Count(saved, j); c != 1 {
						t.Errorf("%s: %d %q lines after three Applies", f, c, j)
					}
				}
			}
			for _, flag := range []string{"-4", "-6"} {
				if c := strings.Count(inNS(t, n, "ip", flag, "rule", "show"), "lookup 157"); c != 1 {
					t.Errorf("ip %s rule: %d weir rules after three Applies", flag, c)
				}
			}
			if err := Verify(n.Path(), s); err != nil {
				t.Fatal(err)
			}

			inNS(t, n, "ip", "-4", "rule", "del", "pref", "157")
			err := Verify(n.Path(), s)
			if err == nil || !strings.Contains(err.Error(), `IPv4 routing: missing policy rule "ip rule pref 157 fwmark 0x5800/0xff00 lookup 157 proto 87"`) {
				t.Errorf("Verify without the v4 rule = %v", err)
			}
			inNS(t, n, "ip", "-6", "route", "del", "local", "::/0", "dev", "lo", "table", "157")
			err = Verify(n.Path(), s)
			if err == nil || !strings.Contains(err.Error(), `IPv6 routing: missing route "ip -6 route local ::/0`) {
				t.Errorf("Verify without the v6 route = %v", err)
			}
			inNS(t, n, cmdProg(backend, ipv4), "-w", "-t", "mangle", "-D", chainPrerouting, "2")
			err = Verify(n.Path(), s)
			if err == nil || !strings.Contains(err.Error(), `iptables mangle/WEIR_PREROUTING: missing rule "-i lo -m comment`) {
				t.Errorf("Verify without a mangle rule = %v", err)
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

// TestModeSwitch moves a pod between modes: each Apply leaves exactly its
// own mode's rules and routes.
func TestModeSwitch(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			r, tp := fullSpec(backend), tproxySpec(backend)
			for i, s := range []Spec{r, tp, r, tp} {
				if err := Apply(n.Path(), s); err != nil {
					t.Fatalf("Apply #%d (%s): %v", i+1, s.Mode, err)
				}
				if err := Verify(n.Path(), s); err != nil {
					t.Errorf("Verify #%d (%s): %v", i+1, s.Mode, err)
				}
				rules := inNS(t, n, "ip", "-6", "rule", "show")
				if has := strings.Contains(rules, "lookup 157"); has != (s.Mode == ModeTPROXY) {
					t.Errorf("after %s: policy rule present = %v:\n%s", s.Mode, has, rules)
				}
			}
			// The policy of another spec (other table) is replaced, not added to.
			moved := tp
			moved.RouteTable, moved.RulePriority = 1570, 1570
			if err := Apply(n.Path(), moved); err != nil {
				t.Fatal(err)
			}
			if err := Verify(n.Path(), moved); err != nil {
				t.Error(err)
			}
			if err := Verify(n.Path(), tp); err == nil || !strings.Contains(err.Error(), "unexpected policy rule") {
				t.Errorf("Verify with the old table = %v", err)
			}
			for i := 0; i < 2; i++ {
				if err := Remove(n.Path()); err != nil {
					t.Fatal(err)
				}
			}
			if ok, err := Installed(n.Path()); err != nil || ok {
				t.Errorf("Installed after Remove = %v, %v", ok, err)
			}
			for _, flag := range []string{"-4", "-6"} {
				if rules := inNS(t, n, "ip", flag, "rule", "show"); strings.Contains(rules, "proto 87") {
					t.Errorf("ip %s rule after Remove:\n%s", flag, rules)
				}
				if routes := inNS(t, n, "ip", flag, "route", "show", "table", "all"); strings.Contains(routes, "proto 87") {
					t.Errorf("ip %s route after Remove:\n%s", flag, routes)
				}
			}
		})
	}
}

// TestTPROXYRollback: when ip6tables-restore fails, IPv4 rules and the
// policy routes of both families go back to what they were.
func TestTPROXYRollback(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			real6, err := lookupTools(backend, ipv6)
			if err != nil {
				t.Fatal(err)
			}
			failing := filepath.Join(t.TempDir(), "ip6tables-restore-fails")
			if err := os.WriteFile(failing, []byte("#!/bin/sh\necho simulated failure >&2\nexit 1\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			key := toolKey{backend, ipv6}
			t.Cleanup(func() { toolCache.Store(key, real6) })

			fresh, redirected := newNS(t), newNS(t)
			if err := Apply(redirected.Path(), fullSpec(backend)); err != nil {
				t.Fatal(err)
			}
			broken := real6
			broken.restore = failing
			toolCache.Store(key, broken)
			for _, n := range []ns.NetNS{fresh, redirected} {
				err := Apply(n.Path(), tproxySpec(backend))
				if err == nil || !strings.Contains(err.Error(), "simulated failure") {
					t.Fatalf("Apply = %v", err)
				}
				var ve *VerifyError
				if errors.As(err, &ve) {
					t.Fatalf("unexpected verify error %v", err)
				}
				for _, flag := range []string{"-4", "-6"} {
					if rules := inNS(t, n, "ip", flag, "rule", "show"); strings.Contains(rules, "proto 87") {
						t.Errorf("policy rule left after failed Apply:\n%s", rules)
					}
					if routes := inNS(t, n, "ip", flag, "route", "show", "table", "all"); strings.Contains(routes, "proto 87") {
						t.Errorf("route left after failed Apply:\n%s", routes)
					}
				}
			}
			if rs := weirOf(t, fresh, backend, ipv4); !rs.empty() {
				t.Errorf("IPv4 left programmed:\n%s", render(rs))
			}
			toolCache.Store(key, real6)
			if err := Verify(redirected.Path(), fullSpec(backend)); err != nil {
				t.Errorf("redirect rules not restored: %v", err)
			}
		})
	}
}

// TestTPROXYTableInUse: a route weir did not add already sits in the
// table; Apply says so and leaves nothing behind.
func TestTPROXYTableInUse(t *testing.T) {
	requireBackend(t, BackendNFT)
	n := newNS(t)
	inNS(t, n, "ip", "route", "add", "local", "default", "dev", "lo", "table", "157")
	err := Apply(n.Path(), tproxySpec(BackendNFT))
	if err == nil || !strings.Contains(err.Error(), "pick another route table") {
		t.Fatalf("Apply into a used table = %v", err)
	}
	if ok, err := Installed(n.Path()); err != nil || ok {
		t.Errorf("Installed after refused Apply = %v, %v", ok, err)
	}
	if routes := inNS(t, n, "ip", "route", "show", "table", "157"); !strings.Contains(routes, "local default dev lo") {
		t.Errorf("the foreign route was removed:\n%s", routes)
	}
	s := tproxySpec(BackendNFT)
	s.RouteTable = 158
	if err := Apply(n.Path(), s); err != nil {
		t.Errorf("Apply with another table: %v", err)
	}
}
