package netns

import (
	"errors"
	"log/slog"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// tcpSynSent is conntrack's TCP state for a connection whose SYN got no
// answer (TCP_CONNTRACK_SYN_SENT).
const tcpSynSent = 1

// unanswered forgets, after a failed dial, what the attempt left in the
// namespace's connection tracking table.
//
// Why: a connect that got no SYN-ACK (it timed out, an ICMP error refused
// it, or the dial was abandoned) leaves a conntrack entry for its 4-tuple
// in SYN_SENT, and that entry lives on for two minutes
// (nf_conntrack_tcp_timeout_syn_sent) after the socket is gone. It holds
// the capture verdict of the agent's socket: not captured (the bypass mark
// kept it out of the nat table under REDIRECT; TPROXY's rules remember it
// in the connection's mark). To conntrack a later SYN with the same tuple
// is a retransmission of that connection, not a new one, so the capture
// rules are never asked again: an app in the pod whose connect happens to
// pick the same source port to the same destination leaves the pod
// uncaptured, and sees "network is unreachable" for a service address no
// router knows. A refused connect (RST) does not need this: conntrack
// closes that entry and treats a new SYN as a new connection.
//
// Entries are matched narrowly: TCP, to the failed destination, not
// NATed, still in SYN_SENT. A captured app connection to that destination
// is NATed (REDIRECT) or answered at once by the agent's listener
// (TPROXY), so it is not one of them.
type unanswered struct {
	mu      sync.Mutex
	pending map[netip.AddrPort]struct{}
	running bool
}

// forgetUnanswered deletes the entries a failed connect to dst left in h.
// Concurrent failures are folded: while one caller sweeps, the others
// only add their destination, and the sweeping caller runs again for them.
// Best effort: an error is logged, never returned, since the dial has
// failed anyway.
func (h *Handle) forgetUnanswered(dst netip.AddrPort) {
	u := &h.unanswered
	u.mu.Lock()
	if u.pending == nil {
		u.pending = map[netip.AddrPort]struct{}{}
	}
	// Keys are unmapped, as conntrack reports IPv4 addresses.
	u.pending[netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())] = struct{}{}
	if u.running {
		u.mu.Unlock()
		return
	}
	u.running = true
	for len(u.pending) > 0 {
		batch := u.pending
		u.pending = map[netip.AddrPort]struct{}{}
		u.mu.Unlock()
		n, err := h.deleteUnanswered(batch)
		if err != nil && !errors.Is(err, ErrClosed) { // closed: the pod is gone
			slog.Default().Warn("forget failed connects in conntrack", "netns", h.path, "deleted", n, "err", err)
		}
		u.mu.Lock()
	}
	u.running = false
	u.mu.Unlock()
}

// deleteUnanswered runs one sweep of h's conntrack table for dsts.
func (h *Handle) deleteUnanswered(dsts map[netip.AddrPort]struct{}) (uint, error) {
	// Held for the socket's making in the namespace, as enter does.
	h.use.RLock()
	if h.closed {
		h.use.RUnlock()
		return 0, ErrClosed
	}
	nh, err := netlink.NewHandleAt(vnetns.NsHandle(h.fd), unix.NETLINK_NETFILTER)
	h.use.RUnlock()
	if err != nil {
		return 0, err
	}
	defer nh.Close()
	var v4, v6 bool
	for d := range dsts {
		if d.Addr().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	f := unansweredFilter(dsts)
	var total uint
	var errs []error
	for _, fam := range []struct {
		want bool
		f    netlink.InetFamily
	}{{v4, unix.AF_INET}, {v6, unix.AF_INET6}} {
		if !fam.want {
			continue
		}
		n, err := nh.ConntrackDeleteFilters(netlink.ConntrackTable, fam.f, f)
		total += n
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// unansweredFilter matches the entries forgetUnanswered deletes.
type unansweredFilter map[netip.AddrPort]struct{}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f unansweredFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_TCP {
		return false
	}
	tcp, ok := flow.ProtoInfo.(*netlink.ProtoInfoTCP)
	if !ok || tcp.State != tcpSynSent {
		return false
	}
	dst, ok := netip.AddrFromSlice(flow.Forward.DstIP)
	if !ok {
		return false
	}
	if _, ok := f[netip.AddrPortFrom(dst.Unmap(), flow.Forward.DstPort)]; !ok {
		return false
	}
	// Not NATed: the reply comes from where the SYN was sent.
	return flow.Reverse.SrcIP.Equal(flow.Forward.DstIP) && flow.Reverse.SrcPort == flow.Forward.DstPort
}

// answeredOrRefused says whether a dial error means the kernel left no
// SYN_SENT entry behind: the peer answered with a reset.
func answeredOrRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED)
}
