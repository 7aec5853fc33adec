package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// routeProtocol tags the policy rules and routes weir adds (the "proto"
// column of `ip rule` and `ip route`), so Remove finds them without knowing
// the spec they came from. Like the chain names it is an upgrade contract.
const routeProtocol = 87

// policy is the routing state ModeTPROXY needs in one family: the fwmark
// rule and the local default route it points to.
type policy struct {
	rules  []netlink.Rule
	routes []netlink.Route
}

func netlinkFamily(f family) int {
	if f == ipv6 {
		return netlink.FAMILY_V6
	}
	return netlink.FAMILY_V4
}

// policyFor is what Apply installs for s in family f: nothing outside
// ModeTPROXY.
func policyFor(s Spec, f family, lo int) policy {
	if s.Mode != ModeTPROXY || !s.wants(f) {
		return policy{}
	}
	mask := s.TPROXYMask
	r := *netlink.NewRule()
	r.Family = netlinkFamily(f)
	r.Priority = int(s.RulePriority)
	r.Mark = s.TPROXYMark
	r.Mask = &mask
	r.Table = int(s.RouteTable)
	r.Protocol = routeProtocol
	dst := &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	if f == ipv6 {
		dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
	}
	rt := netlink.Route{
		Family:    netlinkFamily(f),
		LinkIndex: lo,
		Dst:       dst,
		Table:     int(s.RouteTable),
		Type:      unix.RTN_LOCAL,
		Scope:     unix.RT_SCOPE_HOST,
		Protocol:  routeProtocol,
	}
	return policy{rules: []netlink.Rule{r}, routes: []netlink.Route{rt}}
}

func ruleString(r netlink.Rule) string {
	fam := "ip"
	if r.Family == netlink.FAMILY_V6 {
		fam = "ip -6"
	}
	mask := uint32(0xffffffff)
	if r.Mask != nil {
		mask = *r.Mask
	}
	return fmt.Sprintf("%s rule pref %d fwmark 0x%x/0x%x lookup %d proto %d", fam, r.Priority, r.Mark, mask, r.Table, r.Protocol)
}

func routeString(r netlink.Route) string {
	fam, dst := "ip", "0.0.0.0/0"
	if r.Family == netlink.FAMILY_V6 {
		fam, dst = "ip -6", "::/0"
	}
	if r.Dst != nil {
		dst = r.Dst.String()
	}
	return fmt.Sprintf("%s route local %s dev #%d table %d proto %d", fam, dst, r.LinkIndex, r.Table, r.Protocol)
}

func sameRule(a, b netlink.Rule) bool { return ruleString(a) == ruleString(b) }

func sameRoute(a, b netlink.Route) bool {
	return routeString(a) == routeString(b) && a.Type == b.Type
}

// netlinkState is a netlink handle in the pod netns (opened on first
// use: a REDIRECT pod's ADD and DEL need none), lo's index and, once asked
// for, weir's policy rules and routes as they were then.
type netlinkState struct {
	h        *netlink.Handle
	lo       int
	policies map[family]policy
}

// loopbackIndex is lo's interface index in every network namespace: the
// kernel registers lo first and gives it index 1 (LOOPBACK_IFINDEX), so
// an Apply need not list the links to find it.
const loopbackIndex = 1

// openNetlink prepares netlink work in the calling thread's network
// namespace, so it must run inside the pod netns, as must every use of
// what it returns (the handle's sockets are opened in the namespace of the
// thread that first needs them).
func openNetlink() (*netlinkState, error) {
	return &netlinkState{lo: loopbackIndex}, nil
}

// handle is the netlink handle, opened on first use.
func (n *netlinkState) handle() (*netlink.Handle, error) {
	if n.h == nil {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("open netlink: %w", err)
		}
		n.h = h
	}
	return n.h, nil
}

func (n *netlinkState) close() {
	if n.h != nil {
		n.h.Close()
	}
}

// current lists weir's rules and routes of family f (those tagged with
// routeProtocol), in any table, as they were at the first call: both
// families come from one dump of rules and one of routes, and an operation
// reads them before it changes anything.
func (n *netlinkState) current(f family) (policy, error) {
	if n.policies != nil {
		return n.policies[f], nil
	}
	all := map[family]policy{}
	tagged, err := anyTagged()
	if err != nil {
		return policy{}, err
	}
	if !tagged {
		n.policies = all
		return policy{}, nil
	}
	h, err := n.handle()
	if err != nil {
		return policy{}, err
	}
	rules, err := h.RuleList(netlink.FAMILY_ALL)
	if err != nil {
		return policy{}, fmt.Errorf("list policy rules: %w", err)
	}
	for _, r := range rules {
		if r.Protocol != routeProtocol {
			continue
		}
		if fam, ok := familyOfNetlink(r.Family); ok {
			p := all[fam]
			p.rules = append(p.rules, r)
			all[fam] = p
		}
	}
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{Table: unix.RT_TABLE_UNSPEC, Protocol: routeProtocol},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return policy{}, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if fam, ok := familyOfNetlink(r.Family); ok {
			p := all[fam]
			p.routes = append(p.routes, r)
			all[fam] = p
		}
	}
	n.policies = all
	return all[f], nil
}

func familyOfNetlink(f int) (family, bool) {
	switch f {
	case netlink.FAMILY_V4:
		return ipv4, true
	case netlink.FAMILY_V6:
		return ipv6, true
	}
	return 0, false
}

// add installs what want has and have lacks: routes first, then the rule
// that points at them. Each addition pushes its removal onto undo.
func (n *netlinkState) add(undo *undoStack, have, want policy) error {
	if want.empty() {
		return nil
	}
	h, err := n.handle()
	if err != nil {
		return err
	}
	for _, r := range want.routes {
		if containsFunc(have.routes, r, sameRoute) {
			continue
		}
		r := r
		if err := h.RouteAdd(&r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add %s: table %d already holds such a route that weir did not add; pick another route table: %w", routeString(r), r.Table, err)
			}
			return fmt.Errorf("add %s: %w", routeString(r), err)
		}
		undo.push(func() error { return ignoreGone(h.RouteDel(&r)) })
	}
	for _, r := range want.rules {
		if containsFunc(have.rules, r, sameRule) {
			continue
		}
		r := r
		if err := h.RuleAdd(&r); err != nil {
			if errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add %s: an equal policy rule that weir did not add exists: %w", ruleString(r), err)
			}
			return fmt.Errorf("add %s: %w", ruleString(r), err)
		}
		undo.push(func() error { return ignoreGone(h.RuleDel(&r)) })
	}
	return nil
}

// prune deletes what have holds and want lacks: the rule first, so nothing
// points at a route while it goes. Each deletion pushes its re-addition
// onto undo (nil undo: no way back, as in Remove).
func (n *netlinkState) prune(undo *undoStack, have, want policy) error {
	if have.empty() {
		return nil
	}
	h, err := n.handle()
	if err != nil {
		return err
	}
	for _, r := range have.rules {
		if containsFunc(want.rules, r, sameRule) {
			continue
		}
		r := r
		if err := ignoreGone(h.RuleDel(&r)); err != nil {
			return fmt.Errorf("delete %s: %w", ruleString(r), err)
		}
		if undo != nil {
			undo.push(func() error { return h.RuleAdd(&r) })
		}
	}
	for _, r := range have.routes {
		if containsFunc(want.routes, r, sameRoute) {
			continue
		}
		r := r
		if err := ignoreGone(h.RouteDel(&r)); err != nil {
			return fmt.Errorf("delete %s: %w", routeString(r), err)
		}
		if undo != nil {
			undo.push(func() error { return h.RouteAdd(&r) })
		}
	}
	return nil
}

// problems names what want holds and have lacks, and what have holds
// beyond want.
func (p policy) problems(want policy) []string {
	var out []string
	for _, r := range want.rules {
		if !containsFunc(p.rules, r, sameRule) {
			out = append(out, fmt.Sprintf("missing policy rule %q", ruleString(r)))
		}
	}
	for _, r := range want.routes {
		if !containsFunc(p.routes, r, sameRoute) {
			out = append(out, fmt.Sprintf("missing route %q", routeString(r)))
		}
	}
	for _, r := range p.rules {
		if !containsFunc(want.rules, r, sameRule) {
			out = append(out, fmt.Sprintf("unexpected policy rule %q", ruleString(r)))
		}
	}
	for _, r := range p.routes {
		if !containsFunc(want.routes, r, sameRoute) {
			out = append(out, fmt.Sprintf("unexpected route %q", routeString(r)))
		}
	}
	return out
}

func (p policy) empty() bool { return len(p.rules) == 0 && len(p.routes) == 0 }

func containsFunc[T any](list []T, v T, eq func(a, b T) bool) bool {
	for _, x := range list {
		if eq(x, v) {
			return true
		}
	}
	return false
}

// ignoreGone turns "no such rule/route" into success, for teardown.
func ignoreGone(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}

// fibRuleHdrLen is the size of struct fib_rule_hdr, which starts every
// RTM_NEWRULE message before its attributes; rtMsgLen of struct rtmsg,
// which starts every RTM_NEWROUTE message, with rtm_protocol at
// rtmProtocolOff.
const (
	fibRuleHdrLen  = 12
	rtMsgLen       = 12
	rtmProtocolOff = 5
)

// anyTagged reports whether the calling thread's namespace holds a policy
// rule or a route tagged with routeProtocol, in either family. It reads
// the rule and route dumps in place, into pooled buffers: most namespaces
// hold none (every pod outside TPROXY, every pod's first ADD), and then
// the parsed lists of vishvananda's RuleList and RouteListFiltered (with
// the handle they need, about 7 kB of garbage per ADD and per DEL for a
// fresh namespace, measured by BenchmarkAddHandler) are not needed at all.
// When one is there, current lists them with the library as before, so
// what it finds does not change.
func anyTagged() (bool, error) {
	fd, err := openRouteDump("list policy rules and routes")
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	bufs := getNLBuffers()
	defer putNLBuffers(bufs)
	found, err := dumpTagged(fd, bufs, 1, unix.RTM_GETRULE, fibRuleHdrLen, func(data []byte) bool {
		return ruleProtocol(data) == routeProtocol
	})
	if err != nil || found {
		return found, err
	}
	return dumpTagged(fd, bufs, 2, unix.RTM_GETROUTE, rtMsgLen, func(data []byte) bool {
		return len(data) > rtmProtocolOff && data[rtmProtocolOff] == routeProtocol
	})
}

// openRouteDump opens an rtnetlink socket in the calling thread's
// namespace for a dump, with the receive timeout the nftables sessions
// use; what names the dump in errors.
func openRouteDump(what string) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return -1, fmt.Errorf("%s: open netlink: %w", what, err)
	}
	tv := unix.Timeval{Sec: nftRecvTimeout}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s: set receive timeout: %w", what, err)
	}
	return fd, nil
}

// ifAddrMsgLen is the size of struct ifaddrmsg, which starts every
// RTM_NEWADDR message: family, prefix length, flags, scope, then the
// interface index at ifaIndexOff.
const (
	ifAddrMsgLen = 8
	ifaIndexOff  = 4
)

// anySuspectAddr reports whether the calling thread's namespace holds an
// address checkFamilies must look at: not on lo (index lo), neither
// loopback nor link-local, in a family s does not capture. It reads the
// address dump in place; the address is IFA_LOCAL when given, else
// IFA_ADDRESS, as vishvananda's AddrList takes it.
func anySuspectAddr(lo int, s Spec) (bool, error) {
	fd, err := openRouteDump("list addresses")
	if err != nil {
		return false, err
	}
	defer unix.Close(fd)
	bufs := getNLBuffers()
	defer putNLBuffers(bufs)
	return dumpTagged(fd, bufs, 1, unix.RTM_GETADDR, ifAddrMsgLen, func(data []byte) bool {
		if len(data) < ifAddrMsgLen || int(binary.NativeEndian.Uint32(data[ifaIndexOff:])) == lo {
			return false
		}
		local, _ := rtAttr(data[ifAddrMsgLen:], unix.IFA_LOCAL)
		ip := net.IP(local)
		if ip == nil {
			addr, _ := rtAttr(data[ifAddrMsgLen:], unix.IFA_ADDRESS)
			ip = net.IP(addr)
		}
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return true // not understood: let AddrList decide
		}
		if ip.IsLoopback() || ip.IsLinkLocalUnicast() {
			return false
		}
		v4 := ip.To4() != nil
		return !(v4 && s.IPv4 || !v4 && s.IPv6)
	})
}

// rtAttr finds the first attribute of type typ (flags ignored) in b and returns its
// payload.
func rtAttr(b []byte, typ uint16) ([]byte, bool) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return nil, false
		}
		if binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == typ {
			return b[unix.SizeofRtAttr:l], true
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return nil, false
}

// dumpTagged sends one rtnetlink dump request of type typ for both
// families (a zeroed header of hdrLen bytes) and reports whether tagged
// holds for the data of any answer.
func dumpTagged(fd int, bufs *nftBuffers, seq uint32, typ uint16, hdrLen int, tagged func(data []byte) bool) (bool, error) {
	what := "policy rules"
	switch typ {
	case unix.RTM_GETROUTE:
		what = "routes"
	case unix.RTM_GETADDR:
		what = "addresses"
	}
	req := bufs.batch[:0]
	req = binary.NativeEndian.AppendUint32(req, uint32(nlMsgHdrLen+hdrLen))
	req = binary.NativeEndian.AppendUint16(req, typ)
	req = binary.NativeEndian.AppendUint16(req, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	req = binary.NativeEndian.AppendUint32(req, seq)
	req = binary.NativeEndian.AppendUint32(req, 0)
	for range hdrLen {
		req = append(req, 0)
	}
	bufs.batch = req
	if _, err := unix.Write(fd, req); err != nil {
		return false, fmt.Errorf("list %s: write netlink: %w", what, err)
	}
	found := false
	for {
		got, err := unix.Read(fd, bufs.in)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			return false, fmt.Errorf("list %s: no answer from the kernel within 10s", what)
		}
		if err != nil {
			return false, fmt.Errorf("list %s: read netlink: %w", what, err)
		}
		done, err := eachNLMsg(bufs.in[:got], func(m nlMsg) (bool, error) {
			if m.seq != seq {
				return false, nil
			}
			switch m.typ {
			case unix.NLMSG_ERROR:
				if err := errnoOf(m); err != nil {
					return true, fmt.Errorf("list %s: %w", what, err)
				}
				return true, nil
			case unix.NLMSG_DONE:
				return true, nil
			}
			if !found && tagged(m.data) {
				found = true
			}
			return false, nil
		})
		if err != nil {
			return false, err
		}
		if done {
			return found, nil
		}
	}
}

// ruleProtocol is the FRA_PROTOCOL attribute of one RTM_NEWRULE message's
// data (fib_rule_hdr, then attributes), or 0 (RTPROT_UNSPEC) without one.
func ruleProtocol(data []byte) uint8 {
	if len(data) < fibRuleHdrLen {
		return 0
	}
	for b := data[fibRuleHdrLen:]; len(b) >= unix.SizeofRtAttr; {
		l := int(binary.NativeEndian.Uint16(b))
		if l < unix.SizeofRtAttr || l > len(b) {
			return 0
		}
		if binary.NativeEndian.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER) == unix.FRA_PROTOCOL && l > unix.SizeofRtAttr {
			return b[unix.SizeofRtAttr]
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return 0
}
