package redirect

import (
	"bufio"
	"bytes"
	"fmt"
	"slices"
	"strings"
)

// chainPrefix marks the chains weir owns. Everything named so is weir's to
// flush and delete; nothing else is.
const chainPrefix = "WEIR_"

// rule is one rule's arguments as iptables-save prints them after
// "-A CHAIN", split into words with quoting removed.
type rule []string

// String renders the rule so iptables-restore reads back the same words.
func (r rule) String() string {
	var b strings.Builder
	for i, w := range r {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(quoteWord(w))
	}
	return b.String()
}

func (r rule) equal(o rule) bool { return slices.Equal(r, o) }

// target is the chain or extension the rule jumps or goes to, "" if none.
func (r rule) target() string {
	for i := 0; i+1 < len(r); i++ {
		if r[i] == "-j" || r[i] == "-g" || r[i] == "--jump" || r[i] == "--goto" {
			return r[i+1]
		}
	}
	return ""
}

func quoteWord(w string) string {
	if w != "" && !strings.ContainsAny(w, " \t\"'\\#") {
		return w
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range w {
		if c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteRune(c)
	}
	b.WriteByte('"')
	return b.String()
}

// splitWords splits a rule line the way iptables-restore does: on blanks,
// with double quotes grouping and backslash escaping inside them.
func splitWords(line string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord, inQuote, escaped := false, false, false
	for _, c := range line {
		switch {
		case escaped:
			cur.WriteRune(c)
			escaped = false
		case inQuote && c == '\\':
			escaped = true
		case c == '"':
			inQuote = !inQuote
			inWord = true
		case !inQuote && (c == ' ' || c == '\t'):
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if inQuote {
		return nil, fmt.Errorf("unterminated quote in %q", line)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// tableState is one table as iptables-save printed it.
type tableState struct {
	order []string          // chains in the order they were declared
	rules map[string][]rule // chain -> its rules, in order
}

// saveState is the output of one iptables-save run, by table name.
type saveState map[string]*tableState

// parseSave reads iptables-save output. Comment lines (including nft's
// warning about legacy tables) are skipped.
func parseSave(out []byte) (saveState, error) {
	st := saveState{}
	var cur *tableState
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			cur = &tableState{rules: map[string][]rule{}}
			st[line[1:]] = cur
		case line == "COMMIT":
			cur = nil
		case cur == nil:
			return nil, fmt.Errorf("iptables-save line %d outside a table: %q", n, line)
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			if _, ok := cur.rules[name]; !ok {
				cur.order = append(cur.order, name)
				cur.rules[name] = nil
			}
		case strings.HasPrefix(line, "-A "):
			words, err := splitWords(line[3:])
			if err != nil || len(words) == 0 {
				return nil, fmt.Errorf("iptables-save line %d: cannot parse %q", n, line)
			}
			chain := words[0]
			if _, ok := cur.rules[chain]; !ok {
				cur.order = append(cur.order, chain)
			}
			cur.rules[chain] = append(cur.rules[chain], rule(words[1:]))
		default:
			return nil, fmt.Errorf("iptables-save line %d: unexpected %q", n, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read iptables-save output: %w", err)
	}
	return st, nil
}

// ruleSet is everything weir has (or wants) in one family of one backend:
// per table, the WEIR_* chains with their rules and the jumps into them from
// other chains.
type ruleSet map[string]*tableRules

type tableRules struct {
	chains []chainRules
	jumps  []jumpRule
}

type chainRules struct {
	name  string
	rules []rule
}

// jumpRule is a rule in a chain weir does not own (PREROUTING, OUTPUT …)
// that sends packets into a WEIR_* chain.
type jumpRule struct {
	chain string
	rule  rule
}

func (ts *tableRules) chain(name string) (chainRules, bool) {
	for _, c := range ts.chains {
		if c.name == name {
			return c, true
		}
	}
	return chainRules{}, false
}

// tableNames returns the tables of a and b, sorted, so output is stable.
func tableNames(sets ...ruleSet) []string {
	var names []string
	for _, s := range sets {
		for n := range s {
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	slices.Sort(names)
	return names
}

// empty reports whether the set holds no chain and no jump.
func (rs ruleSet) empty() bool {
	for _, t := range rs {
		if len(t.chains) > 0 || len(t.jumps) > 0 {
			return false
		}
	}
	return true
}

// weirView extracts weir's part of a saved state.
func weirView(st saveState) ruleSet {
	rs := ruleSet{}
	for tname, tbl := range st {
		tr := &tableRules{}
		for _, chain := range tbl.order {
			if strings.HasPrefix(chain, chainPrefix) {
				tr.chains = append(tr.chains, chainRules{name: chain, rules: tbl.rules[chain]})
				continue
			}
			for _, r := range tbl.rules[chain] {
				if strings.HasPrefix(r.target(), chainPrefix) {
					tr.jumps = append(tr.jumps, jumpRule{chain: chain, rule: r})
				}
			}
		}
		if len(tr.chains) > 0 || len(tr.jumps) > 0 {
			rs[tname] = tr
		}
	}
	return rs
}

// restorePayload is the iptables-restore --noflush input that turns cur into
// want, or "" when they already match. Per table it declares every weir chain
// of either side (which creates or flushes it), deletes jumps want does not
// hold (and duplicates of those it does), inserts missing jumps at the top of
// their chain, fills the wanted chains and deletes the chains want lacks.
// Chains weir does not own are only touched by those jump lines, so a
// repeated Apply never stacks jumps.
func restorePayload(cur, want ruleSet) string {
	var b strings.Builder
	for _, tname := range tableNames(cur, want) {
		c, w := cur[tname], want[tname]
		if c == nil {
			c = &tableRules{}
		}
		if w == nil {
			w = &tableRules{}
		}
		if tablesEqual(c, w) {
			continue
		}
		fmt.Fprintf(&b, "*%s\n", tname)
		var declared []string
		for _, ch := range append(slices.Clone(c.chains), w.chains...) {
			if !slices.Contains(declared, ch.name) {
				declared = append(declared, ch.name)
				fmt.Fprintf(&b, ":%s - [0:0]\n", ch.name)
			}
		}
		kept := make([]bool, len(w.jumps))
		for _, j := range c.jumps {
			i := slices.IndexFunc(w.jumps, func(wj jumpRule) bool {
				return wj.chain == j.chain && wj.rule.equal(j.rule)
			})
			if i >= 0 && !kept[i] {
				kept[i] = true
				continue
			}
			fmt.Fprintf(&b, "-D %s %s\n", j.chain, j.rule)
		}
		for i, j := range w.jumps {
			if !kept[i] {
				fmt.Fprintf(&b, "-I %s 1 %s\n", j.chain, j.rule)
			}
		}
		for _, ch := range w.chains {
			for _, r := range ch.rules {
				fmt.Fprintf(&b, "-A %s %s\n", ch.name, r)
			}
		}
		for _, ch := range c.chains {
			if _, ok := w.chain(ch.name); !ok {
				fmt.Fprintf(&b, "-X %s\n", ch.name)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func tablesEqual(a, b *tableRules) bool {
	if len(a.chains) != len(b.chains) || len(a.jumps) != len(b.jumps) {
		return false
	}
	for _, ca := range a.chains {
		cb, ok := b.chain(ca.name)
		if !ok || !slices.EqualFunc(ca.rules, cb.rules, rule.equal) {
			return false
		}
	}
	missing, extra := multisetDiff(jumpRules(a.jumps), jumpRules(b.jumps))
	return len(missing) == 0 && len(extra) == 0
}

// problems lists how have falls short of want, in words that name the table,
// chain and rule: missing chains, jumps and rules first, then anything extra
// or out of order. It is empty when have equals want.
func problems(label string, have, want ruleSet) []string {
	var out []string
	for _, tname := range tableNames(have, want) {
		h, w := have[tname], want[tname]
		if h == nil {
			h = &tableRules{}
		}
		if w == nil {
			w = &tableRules{}
		}
		at := func(chain string) string { return fmt.Sprintf("%s%s/%s", label, tname, chain) }
		for _, wc := range w.chains {
			hc, ok := h.chain(wc.name)
			if !ok {
				out = append(out, fmt.Sprintf("%s: missing chain", at(wc.name)))
				continue
			}
			missing, extra := multisetDiff(wc.rules, hc.rules)
			for _, r := range missing {
				out = append(out, fmt.Sprintf("%s: missing rule %q", at(wc.name), r.String()))
			}
			for _, r := range extra {
				out = append(out, fmt.Sprintf("%s: unexpected rule %q", at(wc.name), r.String()))
			}
			if len(missing) == 0 && len(extra) == 0 && !slices.EqualFunc(wc.rules, hc.rules, rule.equal) {
				out = append(out, fmt.Sprintf("%s: rules out of order", at(wc.name)))
			}
		}
		for _, hc := range h.chains {
			if _, ok := w.chain(hc.name); !ok {
				out = append(out, fmt.Sprintf("%s: unexpected chain", at(hc.name)))
			}
		}
		wj, hj := jumpRules(w.jumps), jumpRules(h.jumps)
		missing, extra := multisetDiff(wj, hj)
		for _, r := range missing {
			chain, rest := r[0], rule(r[1:])
			out = append(out, fmt.Sprintf("%s: missing jump %q", at(chain), rest.String()))
		}
		for _, r := range extra {
			chain, rest := r[0], rule(r[1:])
			out = append(out, fmt.Sprintf("%s: unexpected jump %q", at(chain), rest.String()))
		}
	}
	return out
}

// jumpRules flattens jumps into rules prefixed with their chain, so they can
// be compared as a multiset.
func jumpRules(js []jumpRule) []rule {
	out := make([]rule, 0, len(js))
	for _, j := range js {
		out = append(out, append(rule{j.chain}, j.rule...))
	}
	return out
}

// multisetDiff returns the rules of want that have lacks and the rules of
// have that want lacks, counting duplicates.
func multisetDiff(want, have []rule) (missing, extra []rule) {
	used := make([]bool, len(have))
	for _, w := range want {
		found := false
		for i, h := range have {
			if !used[i] && h.equal(w) {
				used[i], found = true, true
				break
			}
		}
		if !found {
			missing = append(missing, w)
		}
	}
	for i, h := range have {
		if !used[i] {
			extra = append(extra, h)
		}
	}
	return missing, extra
}
