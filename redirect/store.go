package redirect

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/internal/sysfile"
)

// store is one place weir's packet rules can live in a network namespace:
// an iptables flavour (both families) or weir's nftables table. Apply
// programs the store the spec names and empties the others, so a pod moves
// between backends without being captured twice; Remove, Verify and
// Installed look at every store, whichever backend the caller uses now.
type store interface {
	String() string
	// program makes the store hold exactly s's rules and pushes how to go
	// back onto undo.
	program(undo *undoStack, s Spec) error
	// clear takes weir's rules out of a store not in use, pushing how to go
	// back onto undo. A store whose tools are missing or cannot read the
	// namespace is skipped: it can hold nothing weir could have put there.
	clear(undo *undoStack) error
	// remove is clear for Remove: there is no way back, and a store that
	// cannot be read is an error.
	remove() error
	// problems names how the store differs from s's rules (inUse) or from
	// holding nothing of weir's (!inUse).
	problems(s Spec, inUse bool) ([]string, error)
	// holds reports whether any weir rule or chain is in the store.
	holds() (bool, error)
}

var (
	_ store = iptStore{}
	_ store = nftStore{}
)

// nsOp is one operation inside a pod network namespace: what it opens on
// the way is opened once and closed at the end.
type nsOp struct {
	nft    *nftSession
	nftErr error
	tried  bool
	// weirInNFT caches nftSession.weirChains for the operation.
	weirInNFT map[family]bool
	// bgRelease closes the nftables sockets in the background
	// (WithBackgroundRelease).
	bgRelease bool
}

// session is the nftables netlink session, opened on first use.
func (o *nsOp) session() (*nftSession, error) {
	if !o.tried {
		o.tried = true
		o.nft, o.nftErr = openNFT()
	}
	return o.nft, o.nftErr
}

func (o *nsOp) close() {
	if o.nft == nil {
		return
	}
	if o.bgRelease {
		// Only the socket's release waits; the buffers go back at once,
		// for the next operation to take.
		fd := o.nft.fd
		putNLBuffers(o.nft.nftBuffers)
		o.nft.nftBuffers = nil
		go unix.Close(fd)
		return
	}
	o.nft.close()
}

// stores lists every store, the iptables flavours first.
func (o *nsOp) stores() []store {
	return []store{iptStore{backend: BackendNFT, op: o}, iptStore{backend: BackendLegacy, op: o}, nftStore{op: o}}
}

// storeFor is the store a backend names.
func (o *nsOp) storeFor(backend string) store {
	for _, st := range o.stores() {
		if st.String() == storeName(backend) {
			return st
		}
	}
	return nil
}

func storeName(backend string) string {
	if backend == BackendNFTables {
		return "nftables"
	}
	return "iptables-" + backend
}

// iptStore is one iptables flavour, driven through its save and restore
// programs (iptables.go).
type iptStore struct {
	backend string
	op      *nsOp
}

func (st iptStore) String() string { return storeName(st.backend) }

// mayHold tells, without starting a program, whether the flavour can hold
// weir rules of family f in this namespace. Legacy tables come into being
// in a namespace only when something uses them, and the kernel lists those
// that exist; iptables-nft keeps its chains in nftables, which netlink
// lists. When the cheap answer is unsure, it is yes.
func (st iptStore) mayHold(f family) bool {
	if st.backend == BackendLegacy {
		names, err := legacyTables(f)
		return err != nil || len(names) > 0
	}
	if st.op.weirInNFT == nil {
		sess, err := st.op.session()
		if err != nil {
			return true
		}
		if st.op.weirInNFT, err = sess.weirChains(); err != nil {
			st.op.weirInNFT = nil
			return true
		}
	}
	return st.op.weirInNFT[f]
}

// legacyTables lists the x_tables (legacy iptables) tables that exist in
// the calling thread's network namespace. The kernel creates a table in a
// namespace on first use, so none listed means no legacy rule at all.
func legacyTables(f family) ([]string, error) {
	name := "/proc/thread-self/net/ip_tables_names"
	if f == ipv6 {
		name = "/proc/thread-self/net/ip6_tables_names"
	}
	var buf [256]byte
	b, err := sysfile.Read(name, buf[:])
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil // x_tables not in this kernel: nothing can be there
	}
	if err != nil {
		return nil, err
	}
	return strings.Fields(string(b)), nil
}

func (st iptStore) program(undo *undoStack, s Spec) error {
	for _, f := range []family{ipv4, ipv6} {
		may := st.mayHold(f)
		if !s.wants(f) && !may {
			continue
		}
		want := ruleSet{}
		if s.wants(f) {
			want = rulesFor(s, f)
		}
		// A pod's first ADD finds nothing of weir's: then the save
		// program's answer is known without starting it (no weir chain
		// means no jump to one either), which spares every such ADD one
		// process of the two.
		if err := reconcileStep(undo, st.backend, f, want, s.wants(f), !may); err != nil {
			return err
		}
	}
	return nil
}

func (st iptStore) clear(undo *undoStack) error {
	for _, f := range []family{ipv4, ipv6} {
		if !st.mayHold(f) {
			continue
		}
		if err := reconcileStep(undo, st.backend, f, ruleSet{}, false, false); err != nil {
			return err
		}
	}
	return nil
}

func (st iptStore) remove() error {
	var errs []error
	for _, f := range []family{ipv4, ipv6} {
		if !st.mayHold(f) {
			continue
		}
		t, err := lookupTools(st.backend, f)
		if err != nil {
			continue
		}
		cur, err := t.read()
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s rules: %w", t, err))
			continue
		}
		if err := t.reconcile(cur, ruleSet{}); err != nil {
			errs = append(errs, fmt.Errorf("remove %s rules: %w", t, err))
		}
	}
	return errors.Join(errs...)
}

func (st iptStore) problems(s Spec, inUse bool) ([]string, error) {
	var probs []string
	for _, f := range []family{ipv4, ipv6} {
		required := inUse && s.wants(f)
		if !required && !st.mayHold(f) {
			continue
		}
		t, err := lookupTools(st.backend, f)
		if err != nil {
			if required {
				return nil, fmt.Errorf("%s: %w", f, err)
			}
			continue
		}
		have, err := t.read()
		if err != nil {
			if required {
				return nil, fmt.Errorf("read %s rules: %w", t, err)
			}
			continue
		}
		want := ruleSet{}
		if required {
			want = rulesFor(s, f)
		}
		probs = append(probs, problems(t.label(inUse)+" ", have, want)...)
	}
	return probs, nil
}

func (st iptStore) holds() (bool, error) {
	var errs []error
	for _, f := range []family{ipv4, ipv6} {
		if !st.mayHold(f) {
			continue
		}
		t, err := lookupTools(st.backend, f)
		if err != nil {
			continue
		}
		have, err := t.read()
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s rules: %w", t, err))
			continue
		}
		if !have.empty() {
			return true, nil
		}
	}
	return false, errors.Join(errs...)
}

// nftStore is weir's own nftables table (nftables.go, nftkernel.go).
type nftStore struct {
	op *nsOp
}

func (nftStore) String() string { return "nftables" }

func (st nftStore) program(undo *undoStack, s Spec) error {
	sess, err := st.op.session()
	if err != nil {
		return err
	}
	// A pod's first Apply (its CNI ADD) finds no table of weir's: one
	// lookup says so and nothing is listed. Creating the table without
	// looking first would save that lookup but, where a table exists, the
	// kernel's abort of the refused transaction waits for an RCU grace
	// period, which costs a repeated Apply more than the lookup saves.
	cur, err := sess.read()
	if err != nil {
		return err
	}
	write := sess.replace
	switch {
	case cur == nil:
		write = sess.create
	case len(nftProblems(cur, nftChainsFor(s))) == 0:
		return nil
	}
	if err := write(s); err != nil {
		return err
	}
	undo.push(func() error { return sess.restore(cur) })
	return nil
}

func (st nftStore) clear(undo *undoStack) error {
	sess, err := st.op.session()
	if err != nil {
		slog.Debug("redirect: no nftables netlink, so no weir table to clear", "error", err)
		return nil
	}
	cur, err := sess.read()
	if err != nil {
		slog.Debug("redirect: cannot read nftables, skipping", "error", err)
		return nil
	}
	if cur == nil {
		return nil
	}
	if err := sess.remove(); err != nil {
		return err
	}
	undo.push(func() error { return sess.restore(cur) })
	return nil
}

// nftUnavailable reports whether err says the kernel has no nftables
// netlink at all: then no weir table can exist either.
func nftUnavailable(err error) bool {
	return errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EAFNOSUPPORT)
}

func (st nftStore) remove() error {
	sess, err := st.op.session()
	if nftUnavailable(err) {
		return nil
	}
	if err != nil {
		return err
	}
	exists, err := sess.tableExists()
	if err != nil || !exists {
		return err
	}
	return sess.remove()
}

func (st nftStore) problems(s Spec, inUse bool) ([]string, error) {
	sess, err := st.op.session()
	if err != nil {
		if inUse {
			return nil, err
		}
		return nil, nil
	}
	cur, err := sess.read()
	if err != nil {
		if inUse {
			return nil, err
		}
		return nil, nil
	}
	if !inUse {
		if cur == nil {
			return nil, nil
		}
		return []string{fmt.Sprintf("nftables table inet %s: unexpected table (backend %s is in use)", nftTableName, storeName(s.Backend))}, nil
	}
	return nftProblems(cur, nftChainsFor(s)), nil
}

func (st nftStore) holds() (bool, error) {
	sess, err := st.op.session()
	if nftUnavailable(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return sess.tableExists()
}

// nftProblems names how a table read from the kernel differs from the
// chains weir wants, in words an operator finds in `nft list ruleset`:
// missing chains and rules first, then anything extra or out of order.
func nftProblems(have *nftState, want []nftChain) []string {
	label := "nftables inet " + nftTableName
	if have == nil {
		return []string{label + ": missing table"}
	}
	var out []string
	for _, wc := range want {
		at := label + "/" + wc.name
		hc := have.chain(wc.name)
		if hc == nil {
			out = append(out, at+": missing chain")
			continue
		}
		if h := hc.header(); h != wc.header() {
			out = append(out, fmt.Sprintf("%s: chain is %q, want %q", at, h, wc.header()))
		}
		wantKeys := make([]string, len(wc.rules))
		for i, r := range wc.rules {
			wantKeys[i] = r.state(wc.name).key()
		}
		haveKeys := make([]string, len(hc.rules))
		for i, r := range hc.rules {
			haveKeys[i] = r.key()
		}
		used := make([]bool, len(haveKeys))
		missing := 0
		for i, k := range wantKeys {
			j := slices.IndexFunc(haveKeys, func(h string) bool { return h == k })
			for j >= 0 && used[j] {
				next := slices.IndexFunc(haveKeys[j+1:], func(h string) bool { return h == k })
				if next < 0 {
					j = -1
					break
				}
				j += 1 + next
			}
			if j < 0 {
				missing++
				out = append(out, fmt.Sprintf("%s: missing rule %q", at, wc.rules[i].text()))
				continue
			}
			used[j] = true
		}
		extra := 0
		for j, u := range used {
			if !u {
				extra++
				out = append(out, fmt.Sprintf("%s: unexpected %s", at, hc.rules[j].describe()))
			}
		}
		if missing == 0 && extra == 0 && !slices.Equal(wantKeys, haveKeys) {
			out = append(out, at+": rules out of order")
		}
	}
	for _, hc := range have.chains {
		if !slices.ContainsFunc(want, func(c nftChain) bool { return c.name == hc.name }) {
			out = append(out, fmt.Sprintf("%s/%s: unexpected chain", label, hc.name))
		}
	}
	return out
}
