package redirect

import (
	"fmt"
)

// Rules lists what weir has installed in the network namespace at
// netnsPath, for an operator to read: one line per jump into a weir chain,
// rule in a weir chain, nftables rule, policy rule and route, each
// prefixed with where it lives, e.g. `iptables nat/WEIR_OUTPUT: -A
// WEIR_OUTPUT -p tcp ... -j REDIRECT --to-ports 15001`, `nftables inet
// weir/output: ...` or `IPv4 routing: ip rule pref 157 ...`. Every store is
// listed (Verify looks at them all); iptables rules of a flavour s does not
// use carry its name (`iptables-legacy`). An nftables rule is shown as `nft
// list ruleset` prints it when it is one of s's, else by its comment and
// handle. For s in mode ebpf, an `ebpf:` line says whether the namespace is
// enrolled in the capture (s.PinPath or the default). It changes nothing.
func Rules(netnsPath string, s Spec) ([]string, error) {
	s = s.WithDefaults()
	var out []string
	err := inNetns(netnsPath, func() error {
		backend, err := pickBackend(s.Backend)
		if err != nil {
			return err
		}
		op := &nsOp{}
		defer op.close()
		primary := op.storeFor(backend)
		for _, st := range op.stores() {
			var lines []string
			switch st := st.(type) {
			case iptStore:
				lines, err = iptLines(st, s, st == primary)
			case nftStore:
				lines, err = nftLines(st, s, st == primary)
			}
			if err != nil {
				return err
			}
			out = append(out, lines...)
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
			for _, r := range have.rules {
				out = append(out, f.String()+" routing: "+ruleString(r))
			}
			for _, r := range have.routes {
				out = append(out, f.String()+" routing: "+routeString(r))
			}
		}
		if s.Mode != ModeEBPF {
			return nil
		}
		pin := s.PinPath
		if pin == "" {
			pin = optionsOf(nil).pinPath
		}
		on, err := enrolledEBPF(pin)
		if err != nil {
			return err
		}
		if on {
			out = append(out, "ebpf: enrolled in the capture pinned at "+pin)
		} else {
			out = append(out, "ebpf: not enrolled in the capture pinned at "+pin)
		}
		return nil
	})
	if err != nil {
		return out, fmt.Errorf("list redirect in %s: %w", netnsPath, err)
	}
	return out, nil
}

// iptLines lists weir's jumps and chains in one iptables flavour. A
// flavour that cannot be read is an error only when s uses it.
func iptLines(st iptStore, s Spec, inUse bool) ([]string, error) {
	var out []string
	for _, f := range []family{ipv4, ipv6} {
		required := inUse && s.wants(f)
		if !required && !st.mayHold(f) {
			continue
		}
		t, err := lookupTools(st.backend, f)
		if err != nil {
			continue
		}
		have, err := t.read()
		if err != nil {
			if required {
				return nil, fmt.Errorf("read %s rules: %w", t, err)
			}
			continue
		}
		label := t.label(inUse)
		for _, tname := range tableNames(have) {
			tr := have[tname]
			for _, j := range tr.jumps {
				out = append(out, fmt.Sprintf("%s %s/%s: -A %s %s", label, tname, j.chain, j.chain, j.rule))
			}
			for _, c := range tr.chains {
				for _, r := range c.rules {
					out = append(out, fmt.Sprintf("%s %s/%s: -A %s %s", label, tname, c.name, c.name, r))
				}
			}
		}
	}
	return out, nil
}

// nftLines lists weir's nftables table: each chain's declaration, then its
// rules. A table that cannot be read is an error only when s uses it.
func nftLines(st nftStore, s Spec, inUse bool) ([]string, error) {
	sess, err := st.op.session()
	if err != nil {
		if inUse && !nftUnavailable(err) {
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
	if cur == nil {
		return nil, nil
	}
	// The text of the rules s wants, by chain and identity.
	known := map[string]string{}
	if s.Mode != ModeEBPF && s.Validate() == nil {
		for _, c := range nftChainsFor(s) {
			for _, r := range c.rules {
				known[c.name+"\x00"+r.state(c.name).key()] = r.text()
			}
		}
	}
	var out []string
	for _, c := range cur.chains {
		at := fmt.Sprintf("nftables inet %s/%s: ", nftTableName, c.name)
		out = append(out, at+c.header())
		for _, r := range c.rules {
			text, ok := known[c.name+"\x00"+r.key()]
			if !ok {
				text = r.describe()
			}
			out = append(out, at+text)
		}
	}
	return out, nil
}
