package redirect

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
)

// Chain names are an upgrade contract: a new weir must find and remove the
// chains an old one left in running pods, so they never change.
const (
	chainPrerouting = "WEIR_PREROUTING"
	chainOutput     = "WEIR_OUTPUT"
)

// ruleSpec is one rule in parts; words renders them in the order
// iptables-save prints them (addresses, interfaces, protocol, then matches in
// a fixed order, then the target), so Verify can compare words for words.
type ruleSpec struct {
	dst      string // CIDR, masked
	in, out  string // interfaces
	proto    string
	dport    uint16
	mark     *markMatch
	ctstate  string
	ctdir    string
	connmark *markMatch
	comment  string
	target   []string
}

type markMatch struct{ value, mask uint32 }

func (m markMatch) String() string {
	if m.mask == 0xffffffff {
		return fmt.Sprintf("0x%x", m.value)
	}
	return fmt.Sprintf("0x%x/0x%x", m.value, m.mask)
}

func (r ruleSpec) words() rule {
	var w rule
	if r.dst != "" {
		w = append(w, "-d", r.dst)
	}
	if r.in != "" {
		w = append(w, "-i", r.in)
	}
	if r.out != "" {
		w = append(w, "-o", r.out)
	}
	if r.proto != "" {
		w = append(w, "-p", r.proto)
	}
	if r.dport != 0 {
		w = append(w, "-m", r.proto, "--dport", strconv.Itoa(int(r.dport)))
	}
	if r.mark != nil {
		w = append(w, "-m", "mark", "--mark", r.mark.String())
	}
	if r.ctstate != "" || r.ctdir != "" {
		w = append(w, "-m", "conntrack")
		if r.ctstate != "" {
			w = append(w, "--ctstate", r.ctstate)
		}
		if r.ctdir != "" {
			w = append(w, "--ctdir", r.ctdir)
		}
	}
	if r.connmark != nil {
		w = append(w, "-m", "connmark", "--mark", r.connmark.String())
	}
	if r.comment != "" {
		w = append(w, "-m", "comment", "--comment", "weir: "+r.comment)
	}
	return append(w, r.target...)
}

// jumpTo is the rule that sends a built-in chain's packets into a weir chain.
func jumpTo(chain, why string) rule {
	return ruleSpec{comment: why, target: []string{"-j", chain}}.words()
}

// rulesFor renders what Apply installs for one family. s must be valid and
// defaulted.
func rulesFor(s Spec, f family) ruleSet {
	switch s.Mode {
	case ModeRedirect:
		return redirectRules(s, f)
	case ModeTPROXY:
		return tproxyRules(s, f)
	}
	return ruleSet{}
}

// redirectRules is ModeRedirect: nat REDIRECT of inbound TCP to InboundPort
// and of outbound TCP to OutboundPort, everything else left alone.
//
// nat only sees the first packet of a connection; conntrack carries the
// decision for the rest, so no state match is needed. Replies to inbound
// connections never pass nat OUTPUT as new connections, so the outbound chain
// cannot catch them.
func redirectRules(s Spec, f family) ruleSet {
	redirectTo := func(port uint16) []string {
		return []string{"-j", "REDIRECT", "--to-ports", strconv.Itoa(int(port))}
	}
	ret := []string{"-j", "RETURN"}

	var pre []rule
	pre = append(pre, ruleSpec{in: "lo", comment: "traffic arriving on loopback is never captured", target: ret}.words())
	for _, p := range dedupe(s.ExcludeInboundPorts) {
		pre = append(pre, ruleSpec{proto: "tcp", dport: p, comment: fmt.Sprintf("inbound port %d excluded", p), target: ret}.words())
	}
	if include := dedupe(s.IncludeInboundPorts); len(include) > 0 {
		for _, p := range include {
			pre = append(pre, ruleSpec{proto: "tcp", dport: p, comment: fmt.Sprintf("inbound port %d to the agent", p), target: redirectTo(s.InboundPort)}.words())
		}
	} else {
		pre = append(pre, ruleSpec{proto: "tcp", comment: "inbound TCP to the agent", target: redirectTo(s.InboundPort)}.words())
	}

	var out []rule
	out = append(out, ruleSpec{mark: &markMatch{s.Mark, s.Mask}, comment: "agent sockets carry the bypass mark", target: ret}.words())
	out = append(out, ruleSpec{out: "lo", comment: "loopback inside the pod is left alone", target: ret}.words())
	for _, p := range dedupe(s.ExcludeOutboundPorts) {
		out = append(out, ruleSpec{proto: "tcp", dport: p, comment: fmt.Sprintf("outbound port %d excluded", p), target: ret}.words())
	}
	for _, c := range cidrsFor(s.ExcludeOutboundCIDRs, f) {
		out = append(out, ruleSpec{dst: c, comment: "outbound to " + c + " excluded", target: ret}.words())
	}
	out = append(out, ruleSpec{proto: "tcp", comment: "outbound TCP to the agent", target: redirectTo(s.OutboundPort)}.words())

	return ruleSet{"nat": &tableRules{
		chains: []chainRules{{name: chainPrerouting, rules: pre}, {name: chainOutput, rules: out}},
		jumps: []jumpRule{
			{chain: "PREROUTING", rule: jumpTo(chainPrerouting, "capture inbound")},
			{chain: "OUTPUT", rule: jumpTo(chainOutput, "capture outbound")},
		},
	}}
}

// tproxyRules is ModeTPROXY: no address is rewritten, so the agent reads
// the original destination from its accepted socket's local address. It
// lives in mangle and needs the policy routes of routes.go. The agent's
// listeners must be IP_TRANSPARENT and bound to the wildcard address (or,
// for outbound, loopback).
//
// Outbound. Routing, not NAT, brings the pod's connections to the agent:
// WEIR_OUTPUT marks every packet of an outbound TCP flow with TPROXYMark;
// the mark change makes the kernel route the packet again, and the policy
// rule `fwmark TPROXYMark lookup RouteTable` finds `local default dev lo`,
// so the packet loops back through lo. There WEIR_PREROUTING's first rule
// hands a NEW flow's packet to the listener on OutboundPort (TPROXY --on-ip
// loopback); later packets keep the route they got in OUTPUT and find the
// accepted socket by their four-tuple.
//
// Inbound. On any interface but lo, a NEW TCP flow is handed to the
// listener on InboundPort. Its destination is the pod's own address, which
// the local table already delivers, so the rule sets no mark: with no mark
// on an input packet, net.ipv4.conf.*.src_valid_mark=1 (which makes the
// reverse-path check consult the mark and would find the local route) cannot
// drop it. Only NEW flows match, so replies to the agent's own upstream
// connections, arriving on eth0, are never diverted.
//
// The agent's own sockets carry Mark. WEIR_OUTPUT saves that mark into the
// connection mark and lets the packet through untouched. Packets the app
// sends on such a connection (its replies to an agent connection, which may
// come from a transparently chosen source address such as the inbound
// peer's) get TPROXYMark from the connection mark and so return to the agent
// over lo instead of leaving on eth0. Other replies (to inbound connections
// on excluded ports) are never marked: only the original direction of a
// flow is captured.
func tproxyRules(s Spec, f family) ruleSet {
	loopback, anyAddr := "127.0.0.1", "0.0.0.0"
	if f == ipv6 {
		loopback, anyAddr = "::1", "::"
	}
	bypass := &markMatch{s.Mark, s.Mask}
	route := markMatch{s.TPROXYMark, s.TPROXYMask}
	setRoute := []string{"-j", "MARK", "--set-xmark", fmt.Sprintf("0x%x/0x%x", route.value, route.mask)}
	ret := []string{"-j", "RETURN"}
	tproxy := func(port uint16, onIP string, mark markMatch) []string {
		return []string{"-j", "TPROXY", "--on-port", strconv.Itoa(int(port)), "--on-ip", onIP,
			"--tproxy-mark", fmt.Sprintf("0x%x/0x%x", mark.value, mark.mask)}
	}

	var pre []rule
	pre = append(pre, ruleSpec{in: "lo", proto: "tcp", mark: &route, ctstate: "NEW",
		comment: "outbound TCP looped back by WEIR_OUTPUT goes to the agent", target: tproxy(s.OutboundPort, loopback, route)}.words())
	pre = append(pre, ruleSpec{in: "lo", comment: "other loopback traffic, agent connections included, is left alone", target: ret}.words())
	for _, p := range dedupe(s.ExcludeInboundPorts) {
		pre = append(pre, ruleSpec{proto: "tcp", dport: p, comment: fmt.Sprintf("inbound port %d excluded", p), target: ret}.words())
	}
	noMark := markMatch{0, 0}
	if include := dedupe(s.IncludeInboundPorts); len(include) > 0 {
		for _, p := range include {
			pre = append(pre, ruleSpec{proto: "tcp", dport: p, ctstate: "NEW",
				comment: fmt.Sprintf("new inbound connections to port %d go to the agent", p), target: tproxy(s.InboundPort, anyAddr, noMark)}.words())
		}
	} else {
		pre = append(pre, ruleSpec{proto: "tcp", ctstate: "NEW",
			comment: "new inbound TCP connections go to the agent", target: tproxy(s.InboundPort, anyAddr, noMark)}.words())
	}

	var out []rule
	out = append(out, ruleSpec{mark: bypass, comment: "remember connections the agent opened",
		target: []string{"-j", "CONNMARK", "--save-mark", "--nfmask", fmt.Sprintf("0x%x", s.Mask), "--ctmask", fmt.Sprintf("0x%x", s.Mask)}}.words())
	out = append(out, ruleSpec{mark: bypass, comment: "agent sockets carry the bypass mark", target: ret}.words())
	out = append(out, ruleSpec{connmark: bypass, comment: "the app side of an agent connection goes back to the agent over lo", target: setRoute}.words())
	out = append(out, ruleSpec{connmark: bypass, comment: "nothing else applies to agent connections", target: ret}.words())
	out = append(out, ruleSpec{out: "lo", comment: "loopback inside the pod is left alone", target: ret}.words())
	out = append(out, ruleSpec{ctdir: "REPLY", comment: "replies to uncaptured inbound connections leave normally", target: ret}.words())
	for _, p := range dedupe(s.ExcludeOutboundPorts) {
		out = append(out, ruleSpec{proto: "tcp", dport: p, comment: fmt.Sprintf("outbound port %d excluded", p), target: ret}.words())
	}
	for _, c := range cidrsFor(s.ExcludeOutboundCIDRs, f) {
		out = append(out, ruleSpec{dst: c, comment: "outbound to " + c + " excluded", target: ret}.words())
	}
	out = append(out, ruleSpec{proto: "tcp", comment: "outbound TCP is routed over lo to the agent", target: setRoute}.words())

	return ruleSet{"mangle": &tableRules{
		chains: []chainRules{{name: chainPrerouting, rules: pre}, {name: chainOutput, rules: out}},
		jumps: []jumpRule{
			{chain: "PREROUTING", rule: jumpTo(chainPrerouting, "capture inbound")},
			{chain: "OUTPUT", rule: jumpTo(chainOutput, "capture outbound")},
		},
	}}
}

// cidrsFor returns the CIDRs of family f, masked and printed as
// iptables-save prints them (always with a prefix length). Invalid entries
// are skipped: Validate has rejected them before.
func cidrsFor(cidrs []string, f family) []string {
	var out []string
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil || p.Addr().Is4() != (f == ipv4) {
			continue
		}
		m := p.Masked().String()
		if !slices.Contains(out, m) {
			out = append(out, m)
		}
	}
	return out
}

func dedupe(ports []uint16) []uint16 {
	var out []uint16
	for _, p := range ports {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}
