package integration

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/integration/testworld"
)

// An upstream connect that never gets an answer must not leave the pod
// with a conntrack entry that bypasses capture. The agent passes a
// connection to an unknown destination through; when that destination is
// unreachable, its SYN_SENT entry (not NATed, or carrying TPROXY's bypass
// mark) would live two minutes, and an app connect that picked the same
// source port to the same destination would be a "retransmission" to
// conntrack: never captured, it leaves the pod and fails with "network is
// unreachable". That is what TestXDSIstiod's rare failed request was.
func TestUnansweredUpstreamConnectLeavesNoBypass(t *testing.T) {
	for _, w := range []world{
		{"1.1.0", "redirect", "dual", nftables},
		{"1.1.0", "redirect", "dual", legacy},
		{"1.1.0", "tproxy", "dual", nftables},
		{"1.1.0", "tproxy", "dual", legacy},
	} {
		t.Run(w.String(), func(t *testing.T) {
			node := testworld.NewNode(t, w.nodeOptions())
			agent := node.StartAgent(t, map[string]any{
				"capture":        map[string]any{"namespaces": []string{"demo"}},
				"connectTimeout": "1s",
			})
			client := node.MustAddPod(t, "demo", "client")
			for _, fam := range w.families() {
				// No service and no route on the node: the agent passes the
				// connection through and its connect fails (an ICMP error
				// or the timeout).
				dst := netip.MustParseAddrPort("10.96.77.77:80")
				if fam == "v6" {
					dst = netip.MustParseAddrPort("[fd00:96::77]:80")
				}
				before := outbound(t, agent)
				c, err := client.Dial(dst.String(), 5*time.Second)
				if err != nil {
					t.Fatalf("%s: the client's connect to %s was not captured: %v", fam, dst, err)
				}
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if _, err := c.Write([]byte("GET / HTTP/1.0\r\n\r\n")); err != nil {
					t.Logf("%s: write: %v", fam, err)
				}
				// The agent closes the connection once its own connect failed.
				if _, err := io.Copy(io.Discard, c); err != nil && !errors.Is(err, unix.ECONNRESET) {
					t.Fatalf("%s: waiting for the agent to give up on %s: %v", fam, dst, err)
				}
				c.Close()
				if got := outbound(t, agent) - before; got != 1 {
					t.Fatalf("%s: outbound connections rose by %v, want 1", fam, got)
				}
				// The failed dial returned before the connection was closed,
				// and the sweep runs before the dial returns: nothing may be
				// left now.
				stale, err := unansweredTo(client.Path, dst)
				if err != nil {
					t.Fatal(err)
				}
				if len(stale) > 0 {
					// Show what the entry does to the app.
					src := stale[0]
					_, err := dialFrom(client, src, dst)
					t.Fatalf("%s: the agent's failed connect left conntrack entries %v to %s; a connect from %v now gives %v",
						fam, stale, dst, src, err)
				}
			}
		})
	}
}

// unansweredTo lists the source addresses of TCP conntrack entries in the
// namespace at path that go to dst without NAT and never got an answer.
func unansweredTo(path string, dst netip.AddrPort) ([]netip.AddrPort, error) {
	ns, err := vnetns.GetFromPath(path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", path, err)
	}
	defer h.Close()
	fam := netlink.InetFamily(unix.AF_INET)
	if dst.Addr().Is6() {
		fam = unix.AF_INET6
	}
	flows, err := h.ConntrackTableList(netlink.ConntrackTable, fam)
	if err != nil {
		return nil, fmt.Errorf("list conntrack in %s: %w", path, err)
	}
	var out []netip.AddrPort
	for _, f := range flows {
		d, _ := netip.AddrFromSlice(f.Forward.DstIP)
		tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
		if f.Forward.Protocol != unix.IPPROTO_TCP || !ok || tcp.State != 1 ||
			netip.AddrPortFrom(d.Unmap(), f.Forward.DstPort) != dst ||
			!f.Reverse.SrcIP.Equal(f.Forward.DstIP) {
			continue
		}
		s, _ := netip.AddrFromSlice(f.Forward.SrcIP)
		out = append(out, netip.AddrPortFrom(s.Unmap(), f.Forward.SrcPort))
	}
	return out, nil
}

// dialFrom connects from src inside p's namespace.
func dialFrom(p *testworld.Pod, src, dst netip.AddrPort) (net.Conn, error) {
	var c net.Conn
	err := p.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(src)}
		var err error
		c, err = d.Dial("tcp", dst.String())
		return err
	})
	if err == nil {
		c.Close()
	} else if strings.Contains(err.Error(), "unreachable") {
		err = fmt.Errorf("uncaptured: %w", err)
	}
	return c, err
}
