package redirect

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Writes and reads go over nftSession's socket (nftwire.go); reads keep
// each expression's attributes as the kernel sent them: the library's rule
// decoding drops some (a ct expression's source register), and Verify must
// compare everything.

// nftFaultHook, when set (tests only), runs on the batch just before it is
// finished, to make the kernel refuse it half way.
var nftFaultHook func(bt *nftBatch)

// flush sends the batch build makes (or made before for key, when key is
// not empty). When the kernel asks for a retry (it loaded a module for one
// of the expressions and aborted the batch), the batch is sent again.
func (n *nftSession) flush(key string, build func(bt *nftBatch)) error {
	b, err := cachedBatch(key, build)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		err := n.send(b)
		if errors.Is(err, unix.EAGAIN) && attempt < 5 {
			continue
		}
		return err
	}
}

// specKey names the rule set of s in the batch cache.
func specKey(op string, s Spec) string { return fmt.Sprintf("%s %v", op, s) }

// replace swaps weir's table, whatever it held, for the one s wants, in one
// transaction: packets see the old table or the new one, never a mix, and
// on error the old one is left as it was.
func (n *nftSession) replace(s Spec) error {
	return n.write(specKey("replace", s), s, (*nftBatch).resetTable)
}

// create writes weir's table into a namespace that has none. It deletes
// nothing, which keeps a pod's first Apply (CNI ADD) fast: a transaction
// that deletes leaves the kernel work that must wait for an RCU grace
// period, and closing the netlink socket waits for that work (about 10 ms).
// If a table exists, the kernel refuses the whole batch (EEXIST).
func (n *nftSession) create(s Spec) error {
	return n.write(specKey("create", s), s, func(bt *nftBatch) { bt.addTable(true) })
}

// write sends one transaction: start (which makes an empty table), then
// the chains of s with their rules.
func (n *nftSession) write(key string, s Spec, start func(bt *nftBatch)) error {
	err := n.flush(key, func(bt *nftBatch) {
		start(bt)
		bt.addChains(nftChainsFor(s))
	})
	if err != nil {
		return fmt.Errorf("nftables transaction for table inet %s: %w", nftTableName, err)
	}
	return nil
}

// remove deletes weir's table, if any, in one transaction.
func (n *nftSession) remove() error {
	err := n.flush("remove", func(bt *nftBatch) {
		bt.addTable(false)
		bt.delTable()
	})
	if err != nil {
		return fmt.Errorf("delete table inet %s: %w", nftTableName, err)
	}
	return nil
}

// restore puts back a table as read, rules and all.
func (n *nftSession) restore(st *nftState) error {
	if st == nil {
		return n.remove()
	}
	var rules [][]expr.Any
	for _, ch := range st.chains {
		for _, r := range ch.rules {
			es, err := r.decode()
			if err != nil {
				return fmt.Errorf("restore table inet %s, chain %s: %w", nftTableName, ch.name, err)
			}
			rules = append(rules, es)
		}
	}
	err := n.flush("", func(bt *nftBatch) {
		bt.resetTable()
		i := 0
		for _, ch := range st.chains {
			bt.addChain(ch.name, ch.hasHook, ch.typ, ch.hook, ch.prio, ch.policy)
			for _, r := range ch.rules {
				bt.addRule(ch.name, rules[i], r.userdata)
				i++
			}
		}
	})
	if err != nil {
		return fmt.Errorf("restore table inet %s: %w", nftTableName, err)
	}
	return nil
}

// nftState is a table as dumped from the kernel.
type nftState struct {
	chains []*nftChainState
}

func (s *nftState) chain(name string) *nftChainState {
	for _, c := range s.chains {
		if c.name == name {
			return c
		}
	}
	return nil
}

type nftChainState struct {
	family  nftables.TableFamily
	table   string
	name    string
	hasHook bool
	typ     string
	hook    uint32
	prio    int32
	policy  uint32
	rules   []nftRuleState
}

func (c *nftChainState) header() string {
	if !c.hasHook {
		return "(not a base chain)"
	}
	pol := "accept"
	if c.policy == uint32(nftables.ChainPolicyDrop) {
		pol = "drop"
	}
	return fmt.Sprintf("type %s hook %s priority %d; policy %s;", c.typ, hookName(c.hook), c.prio, pol)
}

type nftRuleState struct {
	chain    string
	handle   uint64
	exprs    []rawExpr
	userdata []byte
}

// rawExpr is one expression: its name and its attributes as sent.
type rawExpr struct {
	name string
	data []byte
}

func (r nftRuleState) comment() string {
	c, _ := userdata.GetString(r.userdata, userdata.TypeComment)
	return c
}

// describe names a rule read from the kernel in messages.
func (r nftRuleState) describe() string {
	if c := r.comment(); c != "" {
		return fmt.Sprintf("rule with comment %q (handle %d)", c, r.handle)
	}
	return fmt.Sprintf("rule without comment (handle %d)", r.handle)
}

// key is the rule's identity for comparisons: every non-zero attribute of
// every expression, and its comment. Zero values are left out because the
// kernel reports some defaults the request did not carry.
func (r nftRuleState) key() string {
	var b strings.Builder
	for _, e := range r.exprs {
		b.WriteString(e.name)
		b.WriteString(canonAttrs(e.name, e.data, false))
		b.WriteByte(' ')
	}
	b.WriteString("# ")
	b.WriteString(hex.EncodeToString(r.userdata))
	return b.String()
}

// nestedAttrs are the attributes of each expression that hold attributes.
var nestedAttrs = map[string][]uint16{
	"cmp":       {unix.NFTA_CMP_DATA},
	"bitwise":   {unix.NFTA_BITWISE_MASK, unix.NFTA_BITWISE_XOR, 7 /* NFTA_BITWISE_DATA */},
	"immediate": {unix.NFTA_IMMEDIATE_DATA},
	"data":      {unix.NFTA_DATA_VERDICT},
}

func canonAttrs(kind string, data []byte, inData bool) string {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return "!" + hex.EncodeToString(data)
	}
	var parts []string
	for ad.Next() {
		typ := ad.Type() &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		v := ad.Bytes()
		var s string
		switch {
		case inData && slices.Contains(nestedAttrs["data"], typ):
			s = canonAttrs("verdict", v, false)
		case !inData && slices.Contains(nestedAttrs[kind], typ):
			s = canonAttrs(kind, v, true)
		default:
			if allZero(v) {
				continue
			}
			s = hex.EncodeToString(v)
		}
		if s == "{}" {
			continue
		}
		parts = append(parts, fmt.Sprintf("%d=%s", typ, s))
	}
	if ad.Err() != nil {
		return "!" + hex.EncodeToString(data)
	}
	sort.Strings(parts)
	return "{" + strings.Join(parts, ",") + "}"
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// wantState is the rule as it will read back: its expressions marshalled.
func (r nftRule) state(chain string) nftRuleState {
	st := nftRuleState{chain: chain, userdata: r.userData()}
	for _, e := range r.exprs() {
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			panic(fmt.Sprintf("marshal %T: %v", e, err)) // our own expressions: a bug
		}
		st.exprs = append(st.exprs, parseExpr(b)...)
	}
	return st
}

// parseExpr reads one expression element (NFTA_EXPR_NAME, NFTA_EXPR_DATA).
func parseExpr(b []byte) []rawExpr {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return []rawExpr{{name: "!malformed"}}
	}
	var e rawExpr
	for ad.Next() {
		switch ad.Type() &^ unix.NLA_F_NESTED {
		case unix.NFTA_EXPR_NAME:
			e.name = ad.String()
		case unix.NFTA_EXPR_DATA:
			e.data = ad.Bytes()
		}
	}
	return []rawExpr{e}
}

// decode turns a rule read from the kernel back into expressions the
// library can send, for the expressions weir writes.
func (r nftRuleState) decode() ([]expr.Any, error) {
	var out []expr.Any
	fam := byte(nftables.TableFamilyINet)
	for _, e := range r.exprs {
		var x expr.Any
		switch e.name {
		case "meta":
			x = &expr.Meta{}
		case "cmp":
			x = &expr.Cmp{}
		case "payload":
			x = &expr.Payload{}
		case "bitwise":
			x = &expr.Bitwise{}
		case "redir":
			x = &expr.Redir{}
		case "ct":
			ct := &expr.Ct{}
			if err := expr.Unmarshal(fam, e.data, ct); err != nil {
				return nil, err
			}
			// The library reads a destination register only.
			if v, ok := attrU32(e.data, unix.NFTA_CT_SREG); ok {
				ct.Register, ct.SourceRegister = v, true
			}
			out = append(out, ct)
			continue
		case "tproxy":
			t := &expr.TProxy{TableFamily: fam}
			v, _ := attrU32(e.data, expr.NFTA_TPROXY_FAMILY)
			t.Family = byte(v)
			t.RegAddr, _ = attrU32(e.data, expr.NFTA_TPROXY_REG_ADDR)
			t.RegPort, _ = attrU32(e.data, expr.NFTA_TPROXY_REG_PORT)
			out = append(out, t)
			continue
		case "immediate":
			x, err := decodeImmediate(e.data)
			if err != nil {
				return nil, err
			}
			out = append(out, x)
			continue
		default:
			return nil, fmt.Errorf("expression %q is not one weir writes", e.name)
		}
		if err := expr.Unmarshal(fam, e.data, x); err != nil {
			return nil, fmt.Errorf("decode %s expression: %w", e.name, err)
		}
		out = append(out, x)
	}
	return out, nil
}

func attrU32(data []byte, typ uint16) (uint32, bool) {
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return 0, false
	}
	for ad.Next() {
		if ad.Type()&^unix.NLA_F_NESTED == typ && len(ad.Bytes()) == 4 {
			return binary.BigEndian.Uint32(ad.Bytes()), true
		}
	}
	return 0, false
}

func decodeImmediate(data []byte) (expr.Any, error) {
	dreg, _ := attrU32(data, unix.NFTA_IMMEDIATE_DREG)
	ad, err := netlink.NewAttributeDecoder(data)
	if err != nil {
		return nil, err
	}
	for ad.Next() {
		if ad.Type()&^unix.NLA_F_NESTED != unix.NFTA_IMMEDIATE_DATA {
			continue
		}
		inner, err := netlink.NewAttributeDecoder(ad.Bytes())
		if err != nil {
			return nil, err
		}
		for inner.Next() {
			switch inner.Type() &^ unix.NLA_F_NESTED {
			case unix.NFTA_DATA_VALUE:
				return &expr.Immediate{Register: dreg, Data: inner.Bytes()}, nil
			case unix.NFTA_DATA_VERDICT:
				code, _ := attrU32(inner.Bytes(), unix.NFTA_VERDICT_CODE)
				v := &expr.Verdict{Kind: expr.VerdictKind(int32(code))}
				vd, err := netlink.NewAttributeDecoder(inner.Bytes())
				if err != nil {
					return nil, err
				}
				for vd.Next() {
					if vd.Type()&^unix.NLA_F_NESTED == unix.NFTA_VERDICT_CHAIN {
						v.Chain = vd.String()
					}
				}
				return v, nil
			}
		}
	}
	return nil, errors.New("immediate expression without data")
}

// dump sends one dump request and returns the answers.
func (n *nftSession) dump(msgType uint16, fam nftables.TableFamily, attrs []netlink.Attribute) ([]netlink.Message, error) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	return n.request(msgType, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, fam, data)
}

// chains lists the chains of one family, of one table or (table "") all.
func (n *nftSession) chains(fam nftables.TableFamily, table string) ([]*nftChainState, error) {
	var attrs []netlink.Attribute
	if table != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(table + "\x00")})
	}
	msgs, err := n.dump(unix.NFT_MSG_GETCHAIN, fam, attrs)
	if err != nil {
		return nil, err
	}
	var out []*nftChainState
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		c := &nftChainState{family: nftables.TableFamily(m.Data[0])}
		for ad.Next() {
			switch ad.Type() &^ unix.NLA_F_NESTED {
			case unix.NFTA_CHAIN_TABLE:
				c.table = ad.String()
			case unix.NFTA_CHAIN_NAME:
				c.name = ad.String()
			case unix.NFTA_CHAIN_TYPE:
				c.typ = ad.String()
			case unix.NFTA_CHAIN_POLICY:
				c.policy = ad.Uint32()
			case unix.NFTA_CHAIN_HOOK:
				c.hasHook = true
				ad.Nested(func(nd *netlink.AttributeDecoder) error {
					for nd.Next() {
						switch nd.Type() &^ unix.NLA_F_NESTED {
						case unix.NFTA_HOOK_HOOKNUM:
							c.hook = nd.Uint32()
						case unix.NFTA_HOOK_PRIORITY:
							c.prio = int32(nd.Uint32())
						}
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode chain: %w", err)
		}
		if table == "" || c.table == table {
			out = append(out, c)
		}
	}
	return out, nil
}

// rules lists the rules of one family, of one table or (table "") all.
func (n *nftSession) rules(fam nftables.TableFamily, table string) ([]nftRuleState, error) {
	var attrs []netlink.Attribute
	if table != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_TABLE, Data: []byte(table + "\x00")})
	}
	msgs, err := n.dump(unix.NFT_MSG_GETRULE, fam, attrs)
	if err != nil {
		return nil, err
	}
	var out []nftRuleState
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return nil, err
		}
		ad.ByteOrder = binary.BigEndian
		var r nftRuleState
		var tbl string
		for ad.Next() {
			switch ad.Type() &^ unix.NLA_F_NESTED {
			case unix.NFTA_RULE_TABLE:
				tbl = ad.String()
			case unix.NFTA_RULE_CHAIN:
				r.chain = ad.String()
			case unix.NFTA_RULE_HANDLE:
				r.handle = ad.Uint64()
			case unix.NFTA_RULE_USERDATA:
				r.userdata = ad.Bytes()
			case unix.NFTA_RULE_EXPRESSIONS:
				ad.Nested(func(nd *netlink.AttributeDecoder) error {
					for nd.Next() {
						r.exprs = append(r.exprs, parseExpr(nd.Bytes())...)
					}
					return nil
				})
			}
		}
		if err := ad.Err(); err != nil {
			return nil, fmt.Errorf("decode rule: %w", err)
		}
		if table == "" || tbl == table {
			out = append(out, r)
		}
	}
	return out, nil
}

// read returns weir's table, or nil when there is none.
func (n *nftSession) read() (*nftState, error) {
	exists, err := n.tableExists()
	if err != nil || !exists {
		return nil, err
	}
	chains, err := n.chains(nftables.TableFamilyINet, nftTableName)
	if errors.Is(err, unix.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list chains of table inet %s: %w", nftTableName, err)
	}
	rules, err := n.rules(nftables.TableFamilyINet, nftTableName)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return nil, fmt.Errorf("list rules of table inet %s: %w", nftTableName, err)
	}
	st := &nftState{chains: chains}
	for _, r := range rules {
		if c := st.chain(r.chain); c != nil {
			c.rules = append(c.rules, r)
		}
	}
	return st, nil
}

// tableExists asks for weir's table by name.
func (n *nftSession) tableExists() (bool, error) {
	data, _ := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: []byte(nftTableName + "\x00")}})
	// No acknowledgement asked: the answer is the table or an error.
	_, err := n.request(unix.NFT_MSG_GETTABLE, unix.NLM_F_REQUEST, nftables.TableFamilyINet, data)
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up table inet %s: %w", nftTableName, err)
	}
	return true, nil
}

// weirChains reports, per family, whether the iptables-nft tables (nat,
// mangle … in family ip or ip6) hold a WEIR_* chain, from one dump of every
// chain: iptables-nft keeps its rules in nftables, so this answers without
// starting iptables-nft-save. No WEIR_* chain means no weir rule either,
// since every weir rule lives in or jumps to one.
func (n *nftSession) weirChains() (map[family]bool, error) {
	found := map[family]bool{}
	// The dump is read in place: every ADD and DEL asks, and the answer
	// lists weir's own chains (and whatever else the pod holds), which
	// chains would copy and decode only for their names to be dropped.
	err := n.dumpEach(unix.NFT_MSG_GETCHAIN, nftables.TableFamilyUnspecified, func(data []byte) {
		var f family
		switch nftables.TableFamily(data[0]) {
		case nftables.TableFamilyIPv4:
			f = ipv4
		case nftables.TableFamilyIPv6:
			f = ipv6
		default:
			return
		}
		if name, ok := nlAttr(data[nfgenLen:], unix.NFTA_CHAIN_NAME); ok && bytes.HasPrefix(name, []byte(chainPrefix)) {
			found[f] = true
		}
	})
	if err != nil {
		return nil, err
	}
	return found, nil
}

// dumpEach sends a dump request without attributes and calls f with each
// answer's data (nfgenmsg, then attributes), which points into the
// session's read buffer and is valid only during the call.
func (n *nftSession) dumpEach(msgType uint16, fam nftables.TableFamily, f func(data []byte)) error {
	seq := n.nextSeq()
	n.batch = appendNLMsg(n.batch[:0], unix.NFNL_SUBSYS_NFTABLES<<8|msgType, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, byte(fam), 0, nil)
	if _, err := unix.Write(n.fd, n.batch); err != nil {
		return fmt.Errorf("write nftables netlink: %w", err)
	}
	return n.recv(func(m nlMsg) (bool, error) {
		if m.seq != seq {
			return false, nil
		}
		switch m.typ {
		case unix.NLMSG_ERROR:
			return true, errnoOf(m)
		case unix.NLMSG_DONE:
			return true, nil
		}
		if len(m.data) >= nfgenLen {
			f(m.data)
		}
		return false, nil
	})
}

// nlAttr finds the first attribute of type typ (flags ignored) in b and
// returns its payload, without a terminating NUL for a string. Netlink
// attributes and rtnetlink's have the same layout (rtAttr).
func nlAttr(b []byte, typ uint16) ([]byte, bool) {
	p, ok := rtAttr(b, typ)
	return bytes.TrimSuffix(p, []byte{0}), ok
}

func iptFamily(f family) nftables.TableFamily {
	if f == ipv6 {
		return nftables.TableFamilyIPv6
	}
	return nftables.TableFamilyIPv4
}

// foreignIPTablesNFT reports whether iptables-nft holds rules of someone
// else in family f: a rule outside weir's chains that does not jump into
// one, or a base chain whose policy is not accept.
func (n *nftSession) foreignIPTablesNFT(f family) (bool, error) {
	chains, err := n.chains(iptFamily(f), "")
	if err != nil {
		return false, err
	}
	for _, c := range chains {
		if c.hasHook && c.policy != uint32(nftables.ChainPolicyAccept) {
			return true, nil
		}
	}
	rules, err := n.rules(iptFamily(f), "")
	if err != nil {
		return false, err
	}
	for _, r := range rules {
		if strings.HasPrefix(r.chain, chainPrefix) || jumpsToWeir(r) {
			continue
		}
		return true, nil
	}
	return false, nil
}

// jumpsToWeir reports whether a rule's verdict is a jump or goto into a
// WEIR_* chain.
func jumpsToWeir(r nftRuleState) bool {
	for _, e := range r.exprs {
		if e.name != "immediate" {
			continue
		}
		if v, err := decodeImmediate(e.data); err == nil {
			if vd, ok := v.(*expr.Verdict); ok && strings.HasPrefix(vd.Chain, chainPrefix) {
				return true
			}
		}
	}
	return false
}
