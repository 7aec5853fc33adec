package netns

import (
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestUnansweredFilter(t *testing.T) {
	dst := netip.MustParseAddrPort("10.96.0.10:80")
	dst6 := netip.MustParseAddrPort("[fd00:96::10]:80")
	f := unansweredFilter{dst: {}, dst6: {}}
	flow := func(to netip.AddrPort, replyFrom netip.AddrPort, proto uint8, state uint8) *netlink.ConntrackFlow {
		return &netlink.ConntrackFlow{
			Forward: netlink.IPTuple{Protocol: proto, SrcIP: net.ParseIP("10.22.0.2"), SrcPort: 40000,
				DstIP: to.Addr().AsSlice(), DstPort: to.Port()},
			Reverse: netlink.IPTuple{Protocol: proto, SrcIP: replyFrom.Addr().AsSlice(), SrcPort: replyFrom.Port(),
				DstIP: net.ParseIP("10.22.0.2"), DstPort: 40000},
			ProtoInfo: &netlink.ProtoInfoTCP{State: state},
		}
	}
	redirected := netip.MustParseAddrPort("127.0.0.1:15001")
	for _, c := range []struct {
		name string
		flow *netlink.ConntrackFlow
		want bool
	}{
		{"unanswered, not NATed", flow(dst, dst, unix.IPPROTO_TCP, tcpSynSent), true},
		{"unanswered v6", flow(dst6, dst6, unix.IPPROTO_TCP, tcpSynSent), true},
		{"captured (NATed)", flow(dst, redirected, unix.IPPROTO_TCP, tcpSynSent), false},
		{"answered", flow(dst, dst, unix.IPPROTO_TCP, 3 /* ESTABLISHED */), false},
		{"another destination", flow(netip.MustParseAddrPort("10.96.0.11:80"), netip.MustParseAddrPort("10.96.0.11:80"), unix.IPPROTO_TCP, tcpSynSent), false},
		{"another port", flow(netip.MustParseAddrPort("10.96.0.10:81"), netip.MustParseAddrPort("10.96.0.10:81"), unix.IPPROTO_TCP, tcpSynSent), false},
		{"udp", flow(dst, dst, unix.IPPROTO_UDP, tcpSynSent), false},
	} {
		if got := f.MatchConntrackFlow(c.flow); got != c.want {
			t.Errorf("%s: match = %v, want %v", c.name, got, c.want)
		}
	}
}
