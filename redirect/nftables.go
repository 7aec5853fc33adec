package redirect

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// BackendNFTables keeps weir's rules in one nftables table of its own,
// `table inet weir`, programmed over netlink: both families in one table,
// written in one transaction, no program started. iptables-save (either
// flavour) shows nothing of it; `nft list ruleset` shows every rule with its
// comment.
//
// The table name and family, the chain names and the comment prefix are an
// upgrade contract like the iptables chain names: a later weir must find
// and delete what an earlier one left.
const (
	nftTableName       = "weir"
	nftChainPrerouting = "prerouting"
	nftChainOutput     = "output"
)

// nftChain is one base chain of weir's table and the rules it holds.
type nftChain struct {
	name  string
	typ   nftables.ChainType
	hook  nftables.ChainHook
	prio  nftables.ChainPriority
	rules []nftRule
}

// header is the chain's declaration as `nft list` prints it.
func (c nftChain) header() string {
	return fmt.Sprintf("type %s hook %s priority %d; policy accept;", c.typ, hookName(uint32(c.hook)), c.prio)
}

func hookName(h uint32) string {
	switch h {
	case unix.NF_INET_PRE_ROUTING:
		return "prerouting"
	case unix.NF_INET_LOCAL_IN:
		return "input"
	case unix.NF_INET_FORWARD:
		return "forward"
	case unix.NF_INET_LOCAL_OUT:
		return "output"
	case unix.NF_INET_POST_ROUTING:
		return "postrouting"
	}
	return strconv.Itoa(int(h))
}

// nftRule is one rule in parts: matches, then statements, then a verdict.
// exprs turns it into the expressions the kernel runs, text into the words
// `nft list ruleset` prints for them, so Verify names a missing rule the
// way an operator sees it.
type nftRule struct {
	// Matches, in this order.
	nfproto *family // meta nfproto (implied by daddr)
	iif     string  // iifname
	oif     string  // oifname
	tcp     bool    // meta l4proto tcp
	dport   uint16  // tcp dport (needs tcp)
	daddr   netip.Prefix
	mark    *markMatch // meta mark & mask == value
	ctmark  *markMatch // ct mark & mask == value
	ctNew   bool       // ct state new
	ctReply bool       // ct direction reply

	// Statements, in this order. nft prints a mark set as
	// `& (^mask|value) | value`, the same function written its own way.
	redirect  uint16 // redirect to :port
	tproxy    *nftTProxy
	setCtMark *markMatch // ct mark set ct mark & ~mask | value
	setMark   *markMatch // meta mark set meta mark & ~mask | value

	verdict string // "", "return", "accept" or "drop"
	comment string // without the "weir: " prefix
}

// nftTProxy hands the packet to a local socket on port; addr (when set)
// is the address to look the socket up on, and fixes the family.
type nftTProxy struct {
	addr netip.Addr
	port uint16
}

// Registers: 1 for matches and for an address, 2 for a port next to it.
const (
	regA = 1
	regB = 2
)

func (r nftRule) exprs() []expr.Any {
	var e []expr.Any
	cmp := func(op expr.CmpOp, data []byte) *expr.Cmp {
		return &expr.Cmp{Op: op, Register: regA, Data: data}
	}
	nfproto := r.nfproto
	if r.daddr.IsValid() {
		f := familyOf(r.daddr.Addr())
		nfproto = &f
	}
	if nfproto != nil {
		e = append(e, &expr.Meta{Key: expr.MetaKeyNFPROTO, Register: regA}, cmp(expr.CmpOpEq, []byte{nfprotoOf(*nfproto)}))
	}
	if r.iif != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: regA}, cmp(expr.CmpOpEq, ifname(r.iif)))
	}
	if r.oif != "" {
		e = append(e, &expr.Meta{Key: expr.MetaKeyOIFNAME, Register: regA}, cmp(expr.CmpOpEq, ifname(r.oif)))
	}
	if r.tcp {
		e = append(e, &expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regA}, cmp(expr.CmpOpEq, []byte{unix.IPPROTO_TCP}))
	}
	if r.dport != 0 {
		e = append(e,
			&expr.Payload{DestRegister: regA, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			cmp(expr.CmpOpEq, binaryutil.BigEndian.PutUint16(r.dport)))
	}
	if r.daddr.IsValid() {
		p := r.daddr.Masked()
		offset, size := uint32(16), uint32(4) // IPv4 destination
		if p.Addr().Is6() {
			offset, size = 24, 16
		}
		e = append(e, &expr.Payload{DestRegister: regA, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: size})
		if p.Bits() < int(size*8) {
			e = append(e, &expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: size,
				Mask: prefixMask(p.Bits(), int(size)), Xor: make([]byte, size)})
		}
		e = append(e, cmp(expr.CmpOpEq, p.Addr().AsSlice()))
	}
	if r.mark != nil {
		e = append(e, &expr.Meta{Key: expr.MetaKeyMARK, Register: regA})
		e = append(e, markTest(*r.mark)...)
	}
	if r.ctmark != nil {
		e = append(e, &expr.Ct{Key: expr.CtKeyMARK, Register: regA})
		e = append(e, markTest(*r.ctmark)...)
	}
	if r.ctNew {
		e = append(e,
			&expr.Ct{Key: expr.CtKeySTATE, Register: regA},
			&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
				Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: make([]byte, 4)},
			cmp(expr.CmpOpNeq, make([]byte, 4)))
	}
	if r.ctReply {
		e = append(e, &expr.Ct{Key: expr.CtKeyDIRECTION, Register: regA}, cmp(expr.CmpOpEq, []byte{1 /* IP_CT_DIR_REPLY */}))
	}
	if r.redirect != 0 {
		// The kernel records a port as a range of one and flags it so;
		// saying so here makes the rule read back as written.
		e = append(e,
			&expr.Immediate{Register: regA, Data: binaryutil.BigEndian.PutUint16(r.redirect)},
			&expr.Redir{RegisterProtoMin: regA, RegisterProtoMax: regA, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED})
	}
	if t := r.tproxy; t != nil {
		if t.addr.IsValid() {
			e = append(e,
				&expr.Immediate{Register: regA, Data: t.addr.AsSlice()},
				&expr.Immediate{Register: regB, Data: binaryutil.BigEndian.PutUint16(t.port)},
				&expr.TProxy{Family: nfprotoOf(familyOf(t.addr)), TableFamily: unix.NFPROTO_INET, RegAddr: regA, RegPort: regB})
		} else {
			e = append(e,
				&expr.Immediate{Register: regA, Data: binaryutil.BigEndian.PutUint16(t.port)},
				&expr.TProxy{Family: unix.NFPROTO_UNSPEC, TableFamily: unix.NFPROTO_INET, RegPort: regA})
		}
	}
	if m := r.setCtMark; m != nil {
		e = append(e, &expr.Ct{Key: expr.CtKeyMARK, Register: regA})
		e = append(e, markSet(*m))
		e = append(e, &expr.Ct{Key: expr.CtKeyMARK, Register: regA, SourceRegister: true})
	}
	if m := r.setMark; m != nil {
		e = append(e, &expr.Meta{Key: expr.MetaKeyMARK, Register: regA})
		e = append(e, markSet(*m))
		e = append(e, &expr.Meta{Key: expr.MetaKeyMARK, Register: regA, SourceRegister: true})
	}
	switch r.verdict {
	case "return":
		e = append(e, &expr.Verdict{Kind: expr.VerdictReturn})
	case "accept":
		e = append(e, &expr.Verdict{Kind: expr.VerdictAccept})
	case "drop":
		e = append(e, &expr.Verdict{Kind: expr.VerdictDrop})
	}
	return e
}

// markTest is `& mask == value` on a mark loaded into regA. Marks sit in
// registers in host byte order.
func markTest(m markMatch) []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(m.mask), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: regA, Data: binaryutil.NativeEndian.PutUint32(m.value)},
	}
}

// markSet turns the mark in regA into (mark & ~mask) | value, what
// iptables' MARK --set-xmark and CONNMARK do for a value inside its mask.
func markSet(m markMatch) expr.Any {
	return &expr.Bitwise{SourceRegister: regA, DestRegister: regA, Len: 4,
		Mask: binaryutil.NativeEndian.PutUint32(^m.mask), Xor: binaryutil.NativeEndian.PutUint32(m.value)}
}

// userData is the rule's comment as nft stores it, so `nft list` prints it.
func (r nftRule) userData() []byte {
	return userdata.AppendString(nil, userdata.TypeComment, "weir: "+r.comment)
}

// text renders the rule the way `nft list ruleset` prints it.
func (r nftRule) text() string {
	var w []string
	if r.nfproto != nil && !r.daddr.IsValid() {
		w = append(w, "meta nfproto "+nfprotoName(*r.nfproto))
	}
	if r.iif != "" {
		w = append(w, fmt.Sprintf("iifname %q", r.iif))
	}
	if r.oif != "" {
		w = append(w, fmt.Sprintf("oifname %q", r.oif))
	}
	switch {
	case r.dport != 0:
		w = append(w, "tcp dport "+strconv.Itoa(int(r.dport)))
	case r.tcp:
		w = append(w, "meta l4proto tcp")
	}
	if r.daddr.IsValid() {
		p := r.daddr.Masked()
		fam, s := "ip", p.String()
		if p.Addr().Is6() {
			fam = "ip6"
		}
		if p.IsSingleIP() {
			s = p.Addr().String()
		}
		w = append(w, fam+" daddr "+s)
	}
	if r.mark != nil {
		w = append(w, fmt.Sprintf("meta mark & 0x%08x == 0x%08x", r.mark.mask, r.mark.value))
	}
	if r.ctmark != nil {
		w = append(w, fmt.Sprintf("ct mark & 0x%08x == 0x%08x", r.ctmark.mask, r.ctmark.value))
	}
	if r.ctNew {
		w = append(w, "ct state new")
	}
	if r.ctReply {
		w = append(w, "ct direction reply")
	}
	if r.redirect != 0 {
		w = append(w, fmt.Sprintf("redirect to :%d", r.redirect))
	}
	if t := r.tproxy; t != nil {
		switch {
		case !t.addr.IsValid():
			w = append(w, fmt.Sprintf("tproxy to :%d", t.port))
		case t.addr.Is4():
			w = append(w, fmt.Sprintf("tproxy ip to %s:%d", t.addr, t.port))
		default:
			w = append(w, fmt.Sprintf("tproxy ip6 to [%s]:%d", t.addr, t.port))
		}
	}
	if m := r.setCtMark; m != nil {
		w = append(w, fmt.Sprintf("ct mark set ct mark & 0x%08x | 0x%08x", ^m.mask|m.value, m.value))
	}
	if m := r.setMark; m != nil {
		w = append(w, fmt.Sprintf("meta mark set meta mark & 0x%08x | 0x%08x", ^m.mask|m.value, m.value))
	}
	if r.verdict != "" {
		w = append(w, r.verdict)
	}
	w = append(w, fmt.Sprintf("comment %q", "weir: "+r.comment))
	return strings.Join(w, " ")
}

func familyOf(a netip.Addr) family {
	if a.Is4() {
		return ipv4
	}
	return ipv6
}

func nfprotoOf(f family) byte {
	if f == ipv6 {
		return unix.NFPROTO_IPV6
	}
	return unix.NFPROTO_IPV4
}

func nfprotoName(f family) string {
	if f == ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

// ifname is an interface name as meta iifname/oifname load it: IFNAMSIZ
// bytes, zero padded.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func prefixMask(bits, size int) []byte {
	m := make([]byte, size)
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// nftChainsFor is weir's table for s: the same capture, exclusions and
// guarantees as the iptables rule sets of rulesFor, for every family s
// selects, in one table. s must be valid and defaulted.
func nftChainsFor(s Spec) []nftChain {
	if s.Mode == ModeTPROXY {
		return nftTPROXY(s)
	}
	return nftRedirect(s)
}

// familyGuards let a family the spec does not capture through untouched,
// as the iptables backend does by programming nothing for it.
func familyGuards(s Spec) []nftRule {
	var out []nftRule
	for _, f := range []family{ipv4, ipv6} {
		if !s.wants(f) {
			f := f
			out = append(out, nftRule{nfproto: &f, verdict: "return", comment: f.String() + " is not captured in this pod"})
		}
	}
	return out
}

// excludedCIDRs are the outbound exclusions of the families s captures.
func excludedCIDRs(s Spec) []nftRule {
	var out []nftRule
	for _, f := range []family{ipv4, ipv6} {
		if !s.wants(f) {
			continue
		}
		for _, c := range cidrsFor(s.ExcludeOutboundCIDRs, f) {
			out = append(out, nftRule{daddr: netip.MustParsePrefix(c), verdict: "return", comment: "outbound to " + c + " excluded"})
		}
	}
	return out
}

// nftRedirect is ModeRedirect (see redirectRules): nat chains redirect
// inbound TCP to InboundPort and outbound TCP to OutboundPort.
func nftRedirect(s Spec) []nftChain {
	pre := familyGuards(s)
	pre = append(pre, nftRule{iif: "lo", verdict: "return", comment: "traffic arriving on loopback is never captured"})
	for _, p := range dedupe(s.ExcludeInboundPorts) {
		pre = append(pre, nftRule{tcp: true, dport: p, verdict: "return", comment: fmt.Sprintf("inbound port %d excluded", p)})
	}
	if include := dedupe(s.IncludeInboundPorts); len(include) > 0 {
		for _, p := range include {
			pre = append(pre, nftRule{tcp: true, dport: p, redirect: s.InboundPort, comment: fmt.Sprintf("inbound port %d to the agent", p)})
		}
	} else {
		pre = append(pre, nftRule{tcp: true, redirect: s.InboundPort, comment: "inbound TCP to the agent"})
	}

	out := familyGuards(s)
	out = append(out, nftRule{mark: &markMatch{s.Mark, s.Mask}, verdict: "return", comment: "agent sockets carry the bypass mark"})
	out = append(out, nftRule{oif: "lo", verdict: "return", comment: "loopback inside the pod is left alone"})
	for _, p := range dedupe(s.ExcludeOutboundPorts) {
		out = append(out, nftRule{tcp: true, dport: p, verdict: "return", comment: fmt.Sprintf("outbound port %d excluded", p)})
	}
	out = append(out, excludedCIDRs(s)...)
	out = append(out, nftRule{tcp: true, redirect: s.OutboundPort, comment: "outbound TCP to the agent"})

	return []nftChain{
		{name: nftChainPrerouting, typ: nftables.ChainTypeNAT, hook: unix.NF_INET_PRE_ROUTING, prio: nftables.ChainPriority(-100), rules: pre},
		{name: nftChainOutput, typ: nftables.ChainTypeNAT, hook: unix.NF_INET_LOCAL_OUT, prio: nftables.ChainPriority(-100), rules: out},
	}
}

// nftTPROXY is ModeTPROXY (see tproxyRules for why each rule is there). The
// prerouting chain is a filter chain at mangle priority; the output chain is
// a route chain there, so a packet whose mark changes is routed again, as
// iptables' mangle OUTPUT does. Where iptables' TPROXY target drops a packet
// it finds no socket for, nft's tproxy statement only stops matching, so a
// drop rule follows each tproxy rule: a pod whose agent is not listening
// fails closed in both backends.
func nftTPROXY(s Spec) []nftChain {
	bypass := markMatch{s.Mark, s.Mask}
	route := markMatch{s.TPROXYMark, s.TPROXYMask}

	pre := familyGuards(s)
	for _, f := range []family{ipv4, ipv6} {
		if !s.wants(f) {
			continue
		}
		f := f
		loop := netip.MustParseAddr("127.0.0.1")
		if f == ipv6 {
			loop = netip.IPv6Loopback()
		}
		pre = append(pre, nftRule{nfproto: &f, iif: "lo", tcp: true, mark: &route, ctNew: true,
			tproxy: &nftTProxy{addr: loop, port: s.OutboundPort}, setMark: &route, verdict: "accept",
			comment: "outbound TCP looped back by the output chain goes to the agent"})
	}
	pre = append(pre, nftRule{iif: "lo", tcp: true, mark: &route, ctNew: true, verdict: "drop",
		comment: "looped-back outbound TCP the agent does not take is dropped, never delivered around it"})
	pre = append(pre, nftRule{iif: "lo", verdict: "return", comment: "other loopback traffic, agent connections included, is left alone"})
	for _, p := range dedupe(s.ExcludeInboundPorts) {
		pre = append(pre, nftRule{tcp: true, dport: p, verdict: "return", comment: fmt.Sprintf("inbound port %d excluded", p)})
	}
	if include := dedupe(s.IncludeInboundPorts); len(include) > 0 {
		for _, p := range include {
			pre = append(pre,
				nftRule{tcp: true, dport: p, ctNew: true, tproxy: &nftTProxy{port: s.InboundPort}, verdict: "accept",
					comment: fmt.Sprintf("new inbound connections to port %d go to the agent", p)},
				nftRule{tcp: true, dport: p, ctNew: true, verdict: "drop",
					comment: fmt.Sprintf("new inbound connections to port %d the agent does not take are dropped", p)})
		}
	} else {
		pre = append(pre,
			nftRule{tcp: true, ctNew: true, tproxy: &nftTProxy{port: s.InboundPort}, verdict: "accept",
				comment: "new inbound TCP connections go to the agent"},
			nftRule{tcp: true, ctNew: true, verdict: "drop",
				comment: "new inbound TCP connections the agent does not take are dropped"})
	}

	out := familyGuards(s)
	out = append(out, nftRule{mark: &bypass, setCtMark: &bypass, verdict: "return",
		comment: "agent sockets carry the bypass mark; remember their connections"})
	out = append(out, nftRule{ctmark: &bypass, setMark: &route, verdict: "return",
		comment: "the app side of an agent connection goes back to the agent over lo"})
	out = append(out, nftRule{oif: "lo", verdict: "return", comment: "loopback inside the pod is left alone"})
	out = append(out, nftRule{ctReply: true, verdict: "return", comment: "replies to uncaptured inbound connections leave normally"})
	for _, p := range dedupe(s.ExcludeOutboundPorts) {
		out = append(out, nftRule{tcp: true, dport: p, verdict: "return", comment: fmt.Sprintf("outbound port %d excluded", p)})
	}
	out = append(out, excludedCIDRs(s)...)
	out = append(out, nftRule{tcp: true, setMark: &route, comment: "outbound TCP is routed over lo to the agent"})

	return []nftChain{
		{name: nftChainPrerouting, typ: nftables.ChainTypeFilter, hook: unix.NF_INET_PRE_ROUTING, prio: nftables.ChainPriority(-150), rules: pre},
		{name: nftChainOutput, typ: nftables.ChainTypeRoute, hook: unix.NF_INET_LOCAL_OUT, prio: nftables.ChainPriority(-150), rules: out},
	}
}
