package redirect

import (
	"bufio"
	"fmt"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ioTimeout bounds every dial and read in the functional tests, so a
// connection that goes nowhere fails the test instead of hanging it. It is
// a liveness bound, not a speed assertion.
const ioTimeout = 5 * time.Second

// world is a pod netns joined by a veth pair to a peer netns, both created
// for the test:
//
//	pod  eth0 10.255.255.2/24 fd00:255::2/64  <->  peer eth0 10.255.255.1/24 fd00:255::1/64
type world struct {
	pod, peer ns.NetNS
	podIP     map[family]string
	peerIP    map[family]string
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := &world{
		pod: newNS(t), peer: newNS(t),
		podIP:  map[family]string{ipv4: "10.255.255.2", ipv6: "fd00:255::2"},
		peerIP: map[family]string{ipv4: "10.255.255.1", ipv6: "fd00:255::1"},
	}
	hp, hq := nsHandle(t, w.pod), nsHandle(t, w.peer)
	if err := hp.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "peer0"}); err != nil {
		t.Fatalf("add veth: %v", err)
	}
	peerEnd, err := hp.LinkByName("peer0")
	if err != nil {
		t.Fatal(err)
	}
	if err := hp.LinkSetNsFd(peerEnd, int(w.peer.Fd())); err != nil {
		t.Fatalf("move veth end to peer netns: %v", err)
	}
	for _, side := range []struct {
		h    *netlink.Handle
		name string
		ips  map[family]string
	}{{hp, "eth0", w.podIP}, {hq, "peer0", w.peerIP}} {
		l, err := side.h.LinkByName(side.name)
		if err != nil {
			t.Fatal(err)
		}
		addAddr(t, side.h, l, side.ips[ipv4]+"/24")
		addAddr(t, side.h, l, side.ips[ipv6]+"/64")
		if err := side.h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	return w
}

// listen opens a TCP listener inside n that greets every connection with
// name and closes it. transparent sets IP_TRANSPARENT, as a TPROXY
// listener needs. It returns the address each accepted connection saw as
// its local one, in order.
func listen(t *testing.T, n ns.NetNS, f family, addr, name string, transparent bool) *greeter {
	t.Helper()
	network := "tcp4"
	if f == ipv6 {
		network = "tcp6"
	}
	lc := net.ListenConfig{}
	if transparent {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				if f == ipv6 {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
				} else {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
				}
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	var l net.Listener
	err := n.Do(func(ns.NetNS) error {
		var err error
		l, err = lc.Listen(t.Context(), network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, n.Path(), err)
	}
	g := &greeter{l: l}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.locals = append(g.locals, c.LocalAddr().String())
			g.remotes = append(g.remotes, c.RemoteAddr().String())
			g.mu.Unlock()
			c.SetDeadline(time.Now().Add(ioTimeout))
			fmt.Fprintln(c, name)
			c.Close()
		}
	}()
	return g
}

type greeter struct {
	l       net.Listener
	mu      sync.Mutex
	locals  []string
	remotes []string
}

func (g *greeter) last() (local, remote string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.locals) == 0 {
		return "", ""
	}
	return g.locals[len(g.locals)-1], g.remotes[len(g.remotes)-1]
}

// dial connects from inside n to addr (with SO_MARK mark when not 0) and
// returns the greeting of whoever answered.
func dial(t *testing.T, n ns.NetNS, addr string, mark uint32) string {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout}
	if mark != 0 {
		d.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s (mark %#x): %v", addr, n.Path(), mark, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(ioTimeout))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting from %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

func hostOf(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

// TestRedirectCapturesTraffic sends real connections through the rules:
// outbound TCP lands on the agent's 15001, marked sockets and excluded ports
// reach the real destination, inbound TCP lands on 15006 except excluded
// ports, and loopback is left alone. Both families, both backends.
func TestRedirectCapturesTraffic(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			w := newWorld(t)
			s := Spec{
				IPv4: true, IPv6: true, Backend: backend,
				ExcludeInboundPorts:  []uint16{22},
				ExcludeOutboundPorts: []uint16{81},
			}
			if err := Apply(w.pod.Path(), s); err != nil {
				t.Fatal(err)
			}
			for _, f := range []family{ipv4, ipv6} {
				t.Run(f.String(), func(t *testing.T) {
					loop, any := "127.0.0.1", "0.0.0.0"
					if f == ipv6 {
						loop, any = "::1", "::"
					}
					out := listen(t, w.pod, f, hostPort(loop, 15001), "agent-outbound", false)
					in := listen(t, w.pod, f, hostPort(any, 15006), "agent-inbound", false)
					listen(t, w.pod, f, hostPort(any, 22), "app-22", false)
					listen(t, w.pod, f, hostPort(any, 8080), "app-8080", false)
					listen(t, w.peer, f, hostPort(any, 80), "upstream-80", false)
					listen(t, w.peer, f, hostPort(any, 81), "upstream-81", false)

					if got := dial(t, w.pod, hostPort(w.peerIP[f], 80), 0); got != "agent-outbound" {
						t.Errorf("outbound to peer:80 reached %q, want the agent", got)
					}
					if local, _ := out.last(); local != hostPort(loop, 15001) {
						t.Errorf("outbound listener saw local address %s", local)
					}
					if got := dial(t, w.pod, hostPort(w.peerIP[f], 80), DefaultMark); got != "upstream-80" {
						t.Errorf("marked outbound reached %q, want the real upstream", got)
					}
					if got := dial(t, w.pod, hostPort(w.peerIP[f], 81), 0); got != "upstream-81" {
						t.Errorf("excluded outbound port reached %q", got)
					}
					if got := dial(t, w.pod, hostPort(loop, 8080), 0); got != "app-8080" {
						t.Errorf("loopback connect reached %q", got)
					}
					if got := dial(t, w.pod, hostPort(w.podIP[f], 8080), 0); got != "app-8080" {
						t.Errorf("connect to own pod IP reached %q", got)
					}
					if got := dial(t, w.peer, hostPort(w.podIP[f], 8080), 0); got != "agent-inbound" {
						t.Errorf("inbound to pod:8080 reached %q, want the agent", got)
					}
					if _, remote := in.last(); hostOf(remote) != w.peerIP[f] {
						t.Errorf("inbound agent saw remote %s, want the peer", remote)
					}
					if got := dial(t, w.peer, hostPort(w.podIP[f], 22), 0); got != "app-22" {
						t.Errorf("excluded inbound port reached %q", got)
					}
				})
			}
			// After Remove nothing is captured any more.
			if err := Remove(w.pod.Path()); err != nil {
				t.Fatal(err)
			}
			listen(t, w.peer, ipv4, hostPort("0.0.0.0", 82), "upstream-82", false)
			if got := dial(t, w.pod, hostPort(w.peerIP[ipv4], 82), 0); got != "upstream-82" {
				t.Errorf("after Remove outbound reached %q", got)
			}
		})
	}
}
