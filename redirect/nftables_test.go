package redirect

import (
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/google/nftables/expr"
)

func nftSpec(mode Mode) Spec {
	s := fullSpec(BackendNFTables)
	s.Mode = mode
	return s
}

// nftList is `nft list ruleset` inside n.
func nftList(t *testing.T, n ns.NetNS) string {
	t.Helper()
	requireNftTool(t)
	return inNS(t, n, "nft", "list", "ruleset")
}

// ruleLines are the rule lines of nft's listing, trimmed.
func ruleLines(listing string) []string {
	var out []string
	for _, l := range strings.Split(listing, "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "table ") || strings.HasPrefix(l, "chain ") ||
			strings.HasPrefix(l, "type ") || l == "}" {
			continue
		}
		out = append(out, l)
	}
	return out
}

// iptablesSaves is what every save program prints inside n.
func iptablesSaves(t *testing.T, n ns.NetNS) string {
	t.Helper()
	var b strings.Builder
	for _, backend := range backends {
		for _, f := range []family{ipv4, ipv6} {
			if _, err := lookupTools(backend, f); err != nil {
				continue
			}
			b.WriteString(inNS(t, n, saveProg(backend, f)))
		}
	}
	return b.String()
}

// TestNFTablesApply checks weir's table in every mode and family mix: it
// verifies, `nft list ruleset` prints exactly the rules weir renders (each
// with its comment, so the listing explains itself), and no iptables save
// program, of either flavour, shows anything of weir.
func TestNFTablesApply(t *testing.T) {
	requireBackend(t, BackendNFTables)
	for _, mode := range []Mode{ModeRedirect, ModeTPROXY} {
		for _, fams := range []struct {
			name   string
			v4, v6 bool
		}{{"dual", true, true}, {"v4", true, false}, {"v6", false, true}} {
			t.Run(string(mode)+"/"+fams.name, func(t *testing.T) {
				n := newNS(t)
				s := nftSpec(mode)
				s.IPv4, s.IPv6 = fams.v4, fams.v6
				if err := Apply(n.Path(), s); err != nil {
					t.Fatalf("Apply: %v", err)
				}
				if err := Verify(n.Path(), s); err != nil {
					t.Errorf("Verify after Apply: %v", err)
				}
				if ok, err := Installed(n.Path()); err != nil || !ok {
					t.Errorf("Installed = %v, %v; want true", ok, err)
				}
				listing := nftList(t, n)
				if c := strings.Count(listing, "table "); c != 1 || !strings.Contains(listing, "table inet weir {") {
					t.Errorf("want exactly weir's table, got:\n%s", listing)
				}
				var want []string
				for _, ch := range nftChainsFor(s.WithDefaults()) {
					for _, r := range ch.rules {
						want = append(want, r.text())
					}
				}
				got := ruleLines(listing)
				if strings.Join(got, "\n") != strings.Join(want, "\n") {
					t.Errorf("nft lists\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
				}
				for _, l := range got {
					if !strings.Contains(l, `comment "weir: `) {
						t.Errorf("rule without a weir comment: %s", l)
					}
				}
				if saves := iptablesSaves(t, n); strings.Contains(strings.ToLower(saves), "weir") {
					t.Errorf("iptables-save shows weir:\n%s", saves)
				}
			})
		}
	}
}

// handleOf finds the handle of the rule whose listing contains comment.
func handleOf(t *testing.T, n ns.NetNS, comment string) string {
	t.Helper()
	requireNftTool(t)
	out := inNS(t, n, "nft", "-a", "list", "table", "inet", nftTableName)
	re := regexp.MustCompile(regexp.QuoteMeta(comment) + `" # handle (\d+)`)
	m := re.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no rule with comment %q in\n%s", comment, out)
	}
	return m[1]
}

// TestNFTablesVerifyNamesWhatIsMissing damages weir's table by hand, the
// ways an operator or another tool might, and checks Verify (CNI CHECK)
// names each problem as nft prints the rule; Apply repairs it.
func TestNFTablesVerifyNamesWhatIsMissing(t *testing.T) {
	requireBackend(t, BackendNFTables)
	requireNftTool(t)
	n := newNS(t)
	s := nftSpec(ModeRedirect)
	if err := Apply(n.Path(), s); err != nil {
		t.Fatal(err)
	}
	expect := func(what string, want ...string) {
		t.Helper()
		err := Verify(n.Path(), s)
		var ve *VerifyError
		if !errors.As(err, &ve) {
			t.Fatalf("%s: Verify = %v, want a VerifyError", what, err)
		}
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: Verify = %v\nwant it to name %s", what, err, w)
			}
		}
		if err := Apply(n.Path(), s); err != nil {
			t.Fatalf("%s: repair: %v", what, err)
		}
		if err := Verify(n.Path(), s); err != nil {
			t.Fatalf("%s: Verify after repair: %v", what, err)
		}
	}

	inNS(t, n, "nft", "delete", "rule", "inet", nftTableName, nftChainOutput, "handle", handleOf(t, n, "weir: outbound TCP to the agent"))
	expect("one rule deleted",
		`nftables inet weir/output: missing rule "meta l4proto tcp redirect to :15001 comment \"weir: outbound TCP to the agent\""`)

	inNS(t, n, "nft", "flush", "chain", "inet", nftTableName, nftChainOutput)
	expect("chain flushed",
		`nftables inet weir/output: missing rule "meta mark & 0x0000ff00 == 0x00005700 return comment \"weir: agent sockets carry the bypass mark\""`,
		`nftables inet weir/output: missing rule "meta l4proto tcp redirect to :15001`)

	inNS(t, n, "nft", "insert", "rule", "inet", nftTableName, nftChainPrerouting, "tcp", "dport", "9", "accept", "comment", `"sneaked in"`)
	expect("rule added", `nftables inet weir/prerouting: unexpected rule with comment "sneaked in"`)

	inNS(t, n, "nft", "replace", "rule", "inet", nftTableName, nftChainOutput, "handle", handleOf(t, n, "weir: outbound port 53 excluded"),
		"tcp", "dport", "54", "return", "comment", `"weir: outbound port 53 excluded"`)
	expect("rule changed under its comment",
		`nftables inet weir/output: missing rule "tcp dport 53 return comment \"weir: outbound port 53 excluded\""`,
		`nftables inet weir/output: unexpected rule with comment "weir: outbound port 53 excluded"`)

	inNS(t, n, "nft", "delete", "chain", "inet", nftTableName, nftChainPrerouting)
	expect("chain deleted", "nftables inet weir/prerouting: missing chain")

	inNS(t, n, "nft", "delete", "table", "inet", nftTableName)
	expect("table deleted", "nftables inet weir: missing table")

	// A spec with another port does not verify against these rules.
	other := s
	other.OutboundPort = 15111
	if err := Verify(n.Path(), other); err == nil || !strings.Contains(err.Error(), "redirect to :15111") {
		t.Errorf("Verify with another port = %v", err)
	}
}

// TestNFTablesIdempotent: Apply of what is already there writes nothing
// (the handles stay), and a repeated Apply never grows the table.
func TestNFTablesIdempotent(t *testing.T) {
	requireBackend(t, BackendNFTables)
	requireNftTool(t)
	n := newNS(t)
	s := nftSpec(ModeTPROXY)
	if err := Apply(n.Path(), s); err != nil {
		t.Fatal(err)
	}
	before := inNS(t, n, "nft", "-a", "list", "ruleset")
	for i := 0; i < 3; i++ {
		if err := Apply(n.Path(), s); err != nil {
			t.Fatalf("Apply #%d: %v", i+2, err)
		}
	}
	if after := inNS(t, n, "nft", "-a", "list", "ruleset"); after != before {
		t.Errorf("a repeated Apply rewrote the table:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// refuseBatch makes the kernel refuse the next nftables batch at its last
// message, after the table, chains and rules: a rule jumping to a chain
// that does not exist.
func refuseBatch(t *testing.T) {
	t.Helper()
	nftFaultHook = func(bt *nftBatch) {
		bt.addRule(nftChainOutput, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "no-such-chain"}}, nil)
	}
	t.Cleanup(func() { nftFaultHook = nil })
}

// TestNFTablesFailedTransactionLeavesNothing: when the kernel refuses the
// transaction half way (after the table, its chains and rules), nothing of
// it is left: a fresh pod holds no table and no policy route, a captured
// one keeps exactly its old rules.
func TestNFTablesFailedTransactionLeavesNothing(t *testing.T) {
	requireBackend(t, BackendNFTables)
	requireNftTool(t)
	fresh, captured := newNS(t), newNS(t)
	old := nftSpec(ModeRedirect)
	if err := Apply(captured.Path(), old); err != nil {
		t.Fatal(err)
	}
	oldListing := nftList(t, captured)
	refuseBatch(t)
	for _, n := range []ns.NetNS{fresh, captured} {
		err := Apply(n.Path(), nftSpec(ModeTPROXY))
		if err == nil || !strings.Contains(err.Error(), "nftables transaction") {
			t.Fatalf("Apply with a refused batch = %v", err)
		}
		for _, flag := range []string{"-4", "-6"} {
			if rules := inNS(t, n, "ip", flag, "rule", "show"); strings.Contains(rules, "proto 87") {
				t.Errorf("policy rule left after the failed Apply:\n%s", rules)
			}
		}
	}
	if listing := nftList(t, fresh); strings.TrimSpace(listing) != "" {
		t.Errorf("a refused transaction left rules in a fresh pod:\n%s", listing)
	}
	if ok, err := Installed(fresh.Path()); err != nil || ok {
		t.Errorf("Installed after the failed Apply = %v, %v", ok, err)
	}
	if listing := nftList(t, captured); listing != oldListing {
		t.Errorf("a refused transaction changed the captured pod:\n%s\nwant:\n%s", listing, oldListing)
	}
	nftFaultHook = nil
	if err := Verify(captured.Path(), old); err != nil {
		t.Errorf("old rules no longer verify: %v", err)
	}
}

// TestNFTablesRollback: the transaction commits but a later step of Apply
// (emptying iptables-nft of stale weir rules) fails; the old table is put
// back as it was.
func TestNFTablesRollback(t *testing.T) {
	requireBackend(t, BackendNFTables)
	requireBackend(t, BackendNFT)
	requireNftTool(t)
	n := newNS(t)
	old := nftSpec(ModeTPROXY)
	if err := Apply(n.Path(), old); err != nil {
		t.Fatal(err)
	}
	oldListing := inNS(t, n, "nft", "list", "table", "inet", nftTableName)
	inNS(t, n, "iptables-nft", "-w", "-t", "nat", "-N", "WEIR_STALE")

	real4, err := lookupTools(BackendNFT, ipv4)
	if err != nil {
		t.Fatal(err)
	}
	failing := filepath.Join(t.TempDir(), "iptables-restore-fails")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho simulated failure >&2\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	broken := real4
	broken.restore = failing
	key := toolKey{BackendNFT, ipv4}
	toolCache.Store(key, broken)
	t.Cleanup(func() { toolCache.Store(key, real4) })

	err = Apply(n.Path(), nftSpec(ModeRedirect))
	if err == nil || !strings.Contains(err.Error(), "simulated failure") {
		t.Fatalf("Apply = %v", err)
	}
	if got := inNS(t, n, "nft", "list", "table", "inet", nftTableName); got != oldListing {
		t.Errorf("table not rolled back:\n%s\nwant:\n%s", got, oldListing)
	}
	toolCache.Store(key, real4)
	err = Verify(n.Path(), old)
	var ve *VerifyError
	if !errors.As(err, &ve) || len(ve.Problems) != 1 || !strings.Contains(err.Error(), "WEIR_STALE: unexpected chain") {
		t.Errorf("Verify of the rolled-back pod = %v; want only the stale chain", err)
	}
}

// TestBackendSwitchAll moves one pod through every backend and mode: after
// each Apply exactly one backend holds weir's rules and the pod verifies;
// Remove, whatever backend the caller would pick, leaves nothing.
func TestBackendSwitchAll(t *testing.T) {
	for _, b := range allBackends {
		requireBackend(t, b)
	}
	n := newNS(t)
	op := func(f func(o *nsOp) error) {
		t.Helper()
		if err := n.Do(func(ns.NetNS) error {
			o := &nsOp{}
			defer o.close()
			return f(o)
		}); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		backend string
		mode    Mode
	}{
		{BackendLegacy, ModeRedirect}, {BackendNFTables, ModeRedirect}, {BackendNFT, ModeTPROXY},
		{BackendNFTables, ModeTPROXY}, {BackendLegacy, ModeTPROXY}, {BackendNFTables, ModeRedirect},
	}
	for i, st := range steps {
		s := fullSpec(st.backend)
		s.Mode = st.mode
		if err := Apply(n.Path(), s); err != nil {
			t.Fatalf("step %d (%s %s): %v", i+1, st.backend, st.mode, err)
		}
		if err := Verify(n.Path(), s); err != nil {
			t.Errorf("step %d (%s %s): %v", i+1, st.backend, st.mode, err)
		}
		op(func(o *nsOp) error {
			for _, store := range o.stores() {
				held, err := store.holds()
				if err != nil {
					return err
				}
				if want := store.String() == storeName(st.backend); held != want {
					t.Errorf("step %d (%s %s): %s holds weir rules = %v", i+1, st.backend, st.mode, store, held)
				}
			}
			return nil
		})
	}
	if err := Remove(n.Path()); err != nil {
		t.Fatal(err)
	}
	if ok, err := Installed(n.Path()); err != nil || ok {
		t.Errorf("Installed after Remove = %v, %v", ok, err)
	}
}

// TestNFTablesRemoveLeavesOthers: Remove deletes weir's table and nothing
// else, and a second Remove is a no-op.
func TestNFTablesRemoveLeavesOthers(t *testing.T) {
	requireBackend(t, BackendNFTables)
	requireNftTool(t)
	n := newNS(t)
	inNS(t, n, "nft", "add", "table", "inet", "other")
	inNS(t, n, "nft", "add", "chain", "inet", "other", "c")
	inNS(t, n, "nft", "add", "rule", "inet", "other", "c", "tcp", "dport", "1", "accept")
	if err := Apply(n.Path(), nftSpec(ModeTPROXY)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := Remove(n.Path()); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
	}
	listing := nftList(t, n)
	if strings.Contains(listing, "weir") || !strings.Contains(listing, "tcp dport 1 accept") {
		t.Errorf("after Remove:\n%s", listing)
	}
	if ok, err := Installed(n.Path()); err != nil || ok {
		t.Errorf("Installed after Remove = %v, %v", ok, err)
	}
}

// TestNFTablesRemoveInBackground: with WithBackgroundRelease the table is
// gone when Remove returns (only the sockets' release is left to run), and
// a later Apply in the same namespace programs it afresh.
func TestNFTablesRemoveInBackground(t *testing.T) {
	requireBackend(t, BackendNFTables)
	requireNftTool(t)
	n := newNS(t)
	for i := 0; i < 3; i++ {
		if err := Apply(n.Path(), nftSpec(ModeRedirect)); err != nil {
			t.Fatalf("Apply #%d: %v", i+1, err)
		}
		if err := Remove(n.Path(), WithBackgroundRelease()); err != nil {
			t.Fatalf("Remove #%d: %v", i+1, err)
		}
		if listing := nftList(t, n); strings.Contains(listing, "weir") {
			t.Fatalf("weir's table still listed right after Remove #%d:\n%s", i+1, listing)
		}
	}
	if err := Apply(n.Path(), nftSpec(ModeRedirect)); err != nil {
		t.Fatal(err)
	}
	if err := Verify(n.Path(), nftSpec(ModeRedirect)); err != nil {
		t.Fatalf("Verify after Apply into a namespace Removed in the background: %v", err)
	}
}

// TestApplyTrace: WithTrace reports Apply's phases in order, each once.
func TestApplyTrace(t *testing.T) {
	requireBackend(t, BackendNFTables)
	n := newNS(t)
	var got []string
	trace := WithTrace(func(phase string, took time.Duration) {
		if took < 0 {
			t.Errorf("phase %s took %v", phase, took)
		}
		got = append(got, phase)
	})
	if err := Apply(n.Path(), nftSpec(ModeRedirect), trace); err != nil {
		t.Fatal(err)
	}
	want := []string{PhaseEnter, PhaseFamilies, PhaseRoutes, PhaseProgram, PhaseClear, PhasePrune, PhaseLeave}
	if !slices.Equal(got, want) {
		t.Fatalf("phases %v, want %v", got, want)
	}
}

// TestChooseBackend: auto keeps a legacy node on legacy and moves a node
// that uses nftables (iptables-nft, or nothing yet) to native nftables.
func TestChooseBackend(t *testing.T) {
	for _, b := range allBackends {
		requireBackend(t, b)
	}
	for _, c := range []struct {
		name  string
		setup []string
		want  string
	}{
		{"legacy node", []string{"iptables-legacy", "-w", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"}, BackendLegacy},
		{"nft node", []string{"iptables-nft", "-w", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"}, BackendNFTables},
	} {
		t.Run(c.name, func(t *testing.T) {
			n := newNS(t)
			inNS(t, n, c.setup...)
			var got, why string
			err := n.Do(func(ns.NetNS) error {
				var err error
				got, why, err = ChooseBackend()
				return err
			})
			if err != nil || got != c.want || why == "" {
				t.Errorf("ChooseBackend = %q, %q, %v; want %q with a reason", got, why, err, c.want)
			}
		})
	}
}

// TestForeignIPTables: a pod netns with iptables rules of someone else
// reports their flavour; weir's own rules do not count.
func TestForeignIPTables(t *testing.T) {
	for _, b := range allBackends {
		requireBackend(t, b)
	}
	check := func(n ns.NetNS, want string) {
		t.Helper()
		got, err := ForeignIPTables(n.Path())
		if err != nil || got != want {
			t.Errorf("ForeignIPTables = %q, %v; want %q", got, err, want)
		}
	}
	empty := newNS(t)
	check(empty, "")
	ours := newNS(t)
	for _, b := range backends {
		if err := Apply(ours.Path(), fullSpec(b)); err != nil {
			t.Fatal(err)
		}
		check(ours, "")
	}
	nft := newNS(t)
	inNS(t, nft, "ip6tables-nft", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
	check(nft, BackendNFT)
	legacy := newNS(t)
	inNS(t, legacy, "iptables-legacy", "-w", "-t", "mangle", "-A", "PREROUTING", "-j", "RETURN")
	check(legacy, BackendLegacy)
	policy := newNS(t)
	inNS(t, policy, "iptables-nft", "-w", "-P", "INPUT", "DROP")
	check(policy, BackendNFT)
}
