package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// Apply programs s into the network namespace at netnsPath: after it returns
// nil, exactly the rules (and, for TPROXY, the policy routes) that s
// describes are in place, for every family s selects, in the backend s
// names (or the one the caller's namespace uses). It is idempotent and
// replaces whatever weir had installed there before, including rules of a
// family, mode or backend s no longer uses. It is all or nothing: on error
// the namespace is left as it was. An invalid spec or a path that is not a
// network namespace changes nothing.
func Apply(netnsPath string, s Spec, opts ...Option) error {
	if s.Mode == ModeEBPF {
		s, err := checkSpec("apply", netnsPath, s)
		if err != nil {
			return err
		}
		return applyEBPF(netnsPath, s)
	}
	clk := newPhaseClock(optionsOf(opts).trace)
	err := inNetnsWithSpec("apply", netnsPath, s, func(s Spec, backend string) error { return apply(s, backend, clk) })
	clk.mark(PhaseLeave)
	return err
}

// The phases of Apply that WithTrace reports, in order. Phases that do not
// run (an error, nothing to prune) are not reported.
const (
	// PhaseEnter: open the namespace, switch a thread into it, take the lock.
	PhaseEnter = "enter"
	// PhaseFamilies: check that the spec covers every address family the
	// namespace has (a link and address dump).
	PhaseFamilies = "families"
	// PhaseRoutes: read weir's policy rules and routes, add those the spec
	// needs (TPROXY).
	PhaseRoutes = "routes"
	// PhaseProgram: read and write the backend the spec names.
	PhaseProgram = "program"
	// PhaseClear: take weir's rules out of every other backend.
	PhaseClear = "clear"
	// PhasePrune: delete policy rules and routes the spec no longer needs.
	PhasePrune = "prune"
	// PhaseLeave: close what the operation opened, switch back, unlock.
	PhaseLeave = "leave"
)

// phaseClock reports the time since its previous mark; nil reports nothing.
type phaseClock struct {
	fn   func(string, time.Duration)
	last time.Time
}

func newPhaseClock(fn func(string, time.Duration)) *phaseClock {
	if fn == nil {
		return nil
	}
	return &phaseClock{fn: fn, last: time.Now()}
}

func (c *phaseClock) mark(phase string) {
	if c == nil {
		return
	}
	now := time.Now()
	c.fn(phase, now.Sub(c.last))
	c.last = now
}

// checkSpec defaults and validates s; errors name the verb and the path.
func checkSpec(verb, netnsPath string, s Spec) (Spec, error) {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return s, fmt.Errorf("%s redirect in %s: invalid spec: %w", verb, netnsPath, err)
	}
	return s, nil
}

// inNetnsWithSpec defaults and validates s, picks its backend, and runs f in
// the namespace at netnsPath; errors name the verb and the path.
func inNetnsWithSpec(verb, netnsPath string, s Spec, f func(Spec, string) error) error {
	s = s.WithDefaults()
	if err := s.Validate(); err != nil {
		return fmt.Errorf("%s redirect in %s: invalid spec: %w", verb, netnsPath, err)
	}
	backend, err := pickBackend(s.Backend)
	if err != nil {
		return fmt.Errorf("%s redirect in %s: %w", verb, netnsPath, err)
	}
	if err := inNetns(netnsPath, func() error { return f(s, backend) }); err != nil {
		return fmt.Errorf("%s redirect in %s: %w", verb, netnsPath, err)
	}
	return nil
}

// Remove takes every weir chain, jump, rule, policy rule and route out of the
// network namespace at netnsPath, in both families and both backends, and
// releases it from the eBPF capture pinned at the default path (or the one
// WithPinPath names) if one is loaded. It is idempotent, and a path that no
// longer exists returns nil, so a CNI DEL for a sandbox that is already gone
// succeeds.
func Remove(netnsPath string, opts ...Option) error {
	o := optionsOf(opts)
	err := inNetns(netnsPath, func() error { return errors.Join(remove(o.bgRelease), removeEBPF(o.pinPath)) })
	if errors.Is(err, ErrNetnsNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove redirect from %s: %w", netnsPath, err)
	}
	return nil
}

// Verify returns nil when the network namespace at netnsPath holds exactly
// what Apply(netnsPath, s) would install. Otherwise it returns an error (a
// *VerifyError inside) naming each missing or unexpected chain, jump, rule
// or route, e.g. `iptables nat/WEIR_OUTPUT: missing rule "-p tcp -j
// REDIRECT --to-ports 15001"`. It changes nothing.
func Verify(netnsPath string, s Spec) error {
	if s.Mode == ModeEBPF {
		s, err := checkSpec("verify", netnsPath, s)
		if err != nil {
			return err
		}
		if err := inNetns(netnsPath, func() error { return verifyEBPF(s) }); err != nil {
			return fmt.Errorf("verify redirect in %s: %w", netnsPath, err)
		}
		return nil
	}
	return inNetnsWithSpec("verify", netnsPath, s, verify)
}

// Installed reports whether any weir chain, jump, policy rule or route is in
// the network namespace at netnsPath, in either family and either backend,
// or the namespace is enrolled in the eBPF capture (default pin path, or
// WithPinPath's): true for a captured pod, false for one that never was or
// was released.
func Installed(netnsPath string, opts ...Option) (bool, error) {
	o := optionsOf(opts)
	var found bool
	err := inNetns(netnsPath, func() error {
		var err error
		if found, err = installed(); err != nil || found {
			return err
		}
		found, err = enrolledEBPF(o.pinPath)
		return err
	})
	if err != nil {
		return false, fmt.Errorf("inspect redirect in %s: %w", netnsPath, err)
	}
	return found, nil
}

// inNetns runs fn on an OS thread switched into the network namespace at
// path, holding that namespace's weir lock; programs fn starts inherit the
// namespace. A path that does not exist gives an error wrapping
// ErrNetnsNotExist.
func inNetns(path string, fn func() error) error {
	n, err := ns.GetNS(path)
	if err != nil {
		var notExist ns.NSPathNotExistErr
		if errors.As(err, &notExist) {
			return fmt.Errorf("%w: %s", ErrNetnsNotExist, path)
		}
		var notNS ns.NSPathNotNSErr
		if errors.As(err, &notNS) {
			return fmt.Errorf("%s is not a network namespace: %w", path, err)
		}
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer n.Close()
	return n.Do(func(ns.NetNS) error {
		unlock, err := lockNetns()
		if err != nil {
			return err
		}
		defer unlock()
		return fn()
	})
}

// pickBackend returns the backend to program: the one asked for, or the one
// the caller's network namespace uses.
func pickBackend(asked string) (string, error) {
	if asked != "" {
		return asked, nil
	}
	b, err := DetectBackend()
	if err != nil {
		return "", err
	}
	return b, nil
}

func otherBackend(b string) string {
	if b == BackendLegacy {
		return BackendNFT
	}
	return BackendLegacy
}

func (s Spec) wants(f family) bool {
	if f == ipv6 {
		return s.IPv6
	}
	return s.IPv4
}

// undoStack collects the inverse of each step Apply has taken, to run in
// reverse order if a later step fails.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

func (u undoStack) run() error {
	var errs []error
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// apply runs inside the pod netns. Order: address check; policy routes
// the spec needs (so nothing is marked before its route exists); the
// selected backend (an iptables flavour, IPv4 then IPv6, or weir's nftables
// table in one transaction); every other backend emptied of weir's rules,
// after the new ones are in place so no connection starts uncaptured in
// between; policy routes the spec no longer needs. Each step records how to
// go back, and a failure unwinds every step before it.
func apply(s Spec, backend string, clk *phaseClock) (err error) {
	clk.mark(PhaseEnter)
	nl, err := openNetlink()
	if err != nil {
		return err
	}
	defer nl.close()
	if err := checkFamilies(nl, s); err != nil {
		return err
	}
	clk.mark(PhaseFamilies)
	op := &nsOp{}
	defer op.close()
	var undo undoStack
	defer func() {
		if err != nil {
			if uerr := undo.run(); uerr != nil {
				err = errors.Join(err, fmt.Errorf("roll back: %w", uerr))
			}
		}
	}()
	havePolicy := map[family]policy{}
	for _, f := range []family{ipv4, ipv6} {
		if havePolicy[f], err = nl.current(f); err != nil {
			return err
		}
		if err := nl.add(&undo, havePolicy[f], policyFor(s, f, nl.lo)); err != nil {
			return err
		}
	}
	clk.mark(PhaseRoutes)
	primary := op.storeFor(backend)
	if err := primary.program(&undo, s); err != nil {
		return err
	}
	clk.mark(PhaseProgram)
	for _, st := range op.stores() {
		if st == primary {
			continue
		}
		if err := st.clear(&undo); err != nil {
			return fmt.Errorf("clear %s: %w", st, err)
		}
	}
	clk.mark(PhaseClear)
	for _, f := range []family{ipv4, ipv6} {
		if err := nl.prune(&undo, havePolicy[f], policyFor(s, f, nl.lo)); err != nil {
			return err
		}
	}
	clk.mark(PhasePrune)
	return nil
}

// reconcileStep makes one backend and family hold want and records how to
// go back. When required is false (a family or backend not in use), tools
// that are missing or cannot read the namespace are logged and skipped:
// there can be no weir rules for us to clean up where nothing can be read.
// With none, the caller knows the backend holds nothing of weir's in this
// family (iptStore.mayHold), and the rules are not read.
func reconcileStep(undo *undoStack, backend string, f family, want ruleSet, required, none bool) error {
	t, err := lookupTools(backend, f)
	if err != nil {
		if required {
			return fmt.Errorf("%s: %w", f, err)
		}
		return nil
	}
	cur := ruleSet{}
	if !none {
		cur, err = t.read()
	}
	if err != nil {
		if required {
			return fmt.Errorf("read %s rules: %w", t, err)
		}
		slog.Debug("redirect: cannot read rules of an unused backend or family, skipping", "tools", t.String(), "error", err)
		return nil
	}
	if err := t.reconcile(cur, want); err != nil {
		return fmt.Errorf("program %s rules: %w", t, err)
	}
	undo.push(func() error {
		now, err := t.read()
		if err != nil {
			return fmt.Errorf("read %s rules: %w", t, err)
		}
		return t.reconcile(now, cur)
	})
	return nil
}

// remove runs inside the pod netns and empties every backend, then deletes
// weir's policy rules and routes, once no rule marks packets for them any
// more.
func remove(bgRelease bool) error {
	var errs []error
	op := &nsOp{bgRelease: bgRelease}
	defer op.close()
	for _, st := range op.stores() {
		if err := st.remove(); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", st, err))
		}
	}
	nl, err := openNetlink()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer nl.close()
	for _, f := range []family{ipv4, ipv6} {
		cur, err := nl.current(f)
		if err == nil {
			err = nl.prune(nil, cur, policy{})
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// verify runs inside the pod netns.
func verify(s Spec, backend string) error {
	var probs []string
	op := &nsOp{}
	defer op.close()
	primary := op.storeFor(backend)
	for _, st := range op.stores() {
		p, err := st.problems(s, st == primary)
		if err != nil {
			return err
		}
		probs = append(probs, p...)
	}
	nl, err := openNetlink()
	if err != nil {
		return err
	}
	defer nl.close()
	for _, f := range []family{ipv4, ipv6} {
		have, err := nl.current(f)
		if err != nil {
			return err
		}
		for _, p := range have.problems(policyFor(s, f, nl.lo)) {
			probs = append(probs, f.String()+" routing: "+p)
		}
	}
	if len(probs) > 0 {
		return &VerifyError{Problems: probs}
	}
	return nil
}

// installed runs inside the pod netns.
func installed() (bool, error) {
	var errs []error
	op := &nsOp{}
	defer op.close()
	for _, st := range op.stores() {
		found, err := st.holds()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", st, err))
			continue
		}
		if found {
			return true, nil
		}
	}
	nl, err := openNetlink()
	if err != nil {
		return false, errors.Join(append(errs, err)...)
	}
	defer nl.close()
	for _, f := range []family{ipv4, ipv6} {
		have, err := nl.current(f)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if !have.empty() {
			return true, nil
		}
	}
	return false, errors.Join(errs...)
}

// checkFamilies refuses a spec that leaves one of the namespace's address
// families uncaptured: a dual-stack pod captured over IPv4 only would reach
// every IPv6 destination around the agent. Loopback and link-local
// addresses do not count. One dump of every address; a link is looked up
// only to name it in a refusal, or to tell whether an interface other than
// lo is a loopback one.
func checkFamilies(nl *netlinkState, s Spec) error {
	if s.IPv4 && s.IPv6 {
		return nil // every address is captured: nothing to look at
	}
	// The dump read in place first: when no address would need a closer
	// look (the usual answer), the handle, the parsed list and the link
	// lookups below are spared; otherwise they decide as before.
	if suspect, err := anySuspectAddr(nl.lo, s); err != nil || !suspect {
		return err
	}
	h, err := nl.handle()
	if err != nil {
		return err
	}
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		ip := a.IP
		if a.LinkIndex == nl.lo || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			continue
		}
		v4 := ip.To4() != nil
		if (v4 && s.IPv4) || (!v4 && s.IPv6) {
			continue
		}
		link, err := h.LinkByIndex(a.LinkIndex)
		if err != nil {
			continue // gone since the dump: its addresses with it
		}
		if link.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		if v4 {
			return fmt.Errorf("%s has IPv4 address %s but the spec captures IPv6 only: IPv4 traffic would bypass the agent", link.Attrs().Name, ip)
		}
		return fmt.Errorf("%s has IPv6 address %s but the spec captures IPv4 only: IPv6 traffic would bypass the agent", link.Attrs().Name, ip)
	}
	return nil
}
