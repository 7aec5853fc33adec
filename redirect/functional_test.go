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
func listen(t *testing.T, n ns.NetNS, f family, addr, name string, o sockOpts) *greeter {
	t.Helper()
	network := "tcp4"
	if f == ipv6 {
		network = "tcp6"
	}
	lc := net.ListenConfig{Control: o.control}
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

// sockOpts are the socket options the agent sets: IP_TRANSPARENT (TPROXY
// listeners, connections from a foreign source address) and SO_MARK.
type sockOpts struct {
	transparent bool
	mark        uint32
	// from binds a dial to this local address (with transparent, any
	// address, like the agent's transparently-sourced connections).
	from net.IP
}

func (o sockOpts) control(network, _ string, c syscall.RawConn) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		if o.transparent {
			if strings.HasSuffix(network, "6") {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_IP, unix.IP_TRANSPARENT, 1)
			}
		}
		if serr == nil && o.mark != 0 {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(o.mark))
		}
	})
	if err != nil {
		return err
	}
	return serr
}

// dial connects from inside n to addr with the options o and returns the
// greeting of whoever answered.
func dial(t *testing.T, n ns.NetNS, addr string, o sockOpts) string {
	t.Helper()
	d := net.Dialer{Timeout: ioTimeout, Control: o.control}
	if o.from != nil {
		d.LocalAddr = &net.TCPAddr{IP: o.from}
	}
	var c net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = d.Dial("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s from %s (%+v): %v", addr, n.Path(), o, err)
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
	for _, backend := range allBackends {
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
					out := listen(t, w.pod, f, hostPort(loop, 15001), "agent-outbound", sockOpts{})
					in := listen(t, w.pod, f, hostPort(any, 15006), "agent-inbound", sockOpts{})
					listen(t, w.pod, f, hostPort(any, 22), "app-22", sockOpts{})
					listen(t, w.pod, f, hostPort(any, 8080), "app-8080", sockOpts{})
					listen(t, w.peer, f, hostPort(any, 80), "upstream-80", sockOpts{})
					listen(t, w.peer, f, hostPort(any, 81), "upstream-81", sockOpts{})

					if got := dial(t, w.pod, hostPort(w.peerIP[f], 80), sockOpts{}); got != "agent-outbound" {
						t.Errorf("outbound to peer:80 reached %q, want the agent", got)
					}
					if local, _ := out.last(); local != hostPort(loop, 15001) {
						t.Errorf("outbound listener saw local address %s", local)
					}
					if got := dial(t, w.pod, hostPort(w.peerIP[f], 80), sockOpts{mark: DefaultMark}); got != "upstream-80" {
						t.Errorf("marked outbound reached %q, want the real upstream", got)
					}
					if got := dial(t, w.pod, hostPort(w.peerIP[f], 81), sockOpts{}); got != "upstream-81" {
						t.Errorf("excluded outbound port reached %q", got)
					}
					if got := dial(t, w.pod, hostPort(loop, 8080), sockOpts{}); got != "app-8080" {
						t.Errorf("loopback connect reached %q", got)
					}
					if got := dial(t, w.pod, hostPort(w.podIP[f], 8080), sockOpts{}); got != "app-8080" {
						t.Errorf("connect to own pod IP reached %q", got)
					}
					if got := dial(t, w.peer, hostPort(w.podIP[f], 8080), sockOpts{}); got != "agent-inbound" {
						t.Errorf("inbound to pod:8080 reached %q, want the agent", got)
					}
					if _, remote := in.last(); hostOf(remote) != w.peerIP[f] {
						t.Errorf("inbound agent saw remote %s, want the peer", remote)
					}
					if got := dial(t, w.peer, hostPort(w.podIP[f], 22), sockOpts{}); got != "app-22" {
						t.Errorf("excluded inbound port reached %q", got)
					}
				})
			}
			// After Remove nothing is captured any more.
			if err := Remove(w.pod.Path()); err != nil {
				t.Fatal(err)
			}
			listen(t, w.peer, ipv4, hostPort("0.0.0.0", 82), "upstream-82", sockOpts{})
			if got := dial(t, w.pod, hostPort(w.peerIP[ipv4], 82), sockOpts{}); got != "upstream-82" {
				t.Errorf("after Remove outbound reached %q", got)
			}
		})
	}
}

// TestTPROXYCapturesTraffic sends real connections through TPROXY mode with
// IP_TRANSPARENT listeners, the way the agent will hold them:
//   - outbound TCP reaches the agent with its original destination as the
//     accepted socket's local address (no NAT); marked sockets and excluded
//     ports go to the real destination; loopback is left alone;
//   - inbound TCP reaches the agent, again with the original destination;
//     excluded ports reach the app;
//   - the agent can connect to the app from the inbound peer's address
//     (transparent source) and the app's replies come back to it;
//   - all with src_valid_mark=1 and rp_filter=1 in the pod, which break
//     naive TPROXY set-ups.
func TestTPROXYCapturesTraffic(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			w := newWorld(t)
			for _, kv := range []string{
				"net.ipv4.conf.all.src_valid_mark=1", "net.ipv4.conf.eth0.src_valid_mark=1",
				"net.ipv4.conf.all.rp_filter=1", "net.ipv4.conf.eth0.rp_filter=1",
			} {
				inNS(t, w.pod, "sysctl", "-q", "-w", kv)
			}
			s := Spec{
				Mode: ModeTPROXY, IPv4: true, IPv6: true, Backend: backend,
				ExcludeInboundPorts:  []uint16{22},
				ExcludeOutboundPorts: []uint16{81},
			}
			if err := Apply(w.pod.Path(), s); err != nil {
				t.Fatal(err)
			}
			agent := sockOpts{transparent: true, mark: DefaultMark}
			for _, f := range []family{ipv4, ipv6} {
				t.Run(f.String(), func(t *testing.T) {
					loop, any := "127.0.0.1", "0.0.0.0"
					if f == ipv6 {
						loop, any = "::1", "::"
					}
					// The outbound listener carries the agent's mark like
					// every agent socket; the inbound one does not, so
					// both reply paths are exercised.
					out := listen(t, w.pod, f, hostPort(loop, 15001), "agent-outbound", agent)
					in := listen(t, w.pod, f, hostPort(any, 15006), "agent-inbound", sockOpts{transparent: true})
					listen(t, w.pod, f, hostPort(any, 22), "app-22", sockOpts{})
					app := listen(t, w.pod, f, hostPort(any, 8080), "app-8080", sockOpts{})
					up := listen(t, w.peer, f, hostPort(any, 80), "upstream-80", sockOpts{})
					listen(t, w.peer, f, hostPort(any, 81), "upstream-81", sockOpts{})

					for i := 0; i < 3; i++ {
						if got := dial(t, w.pod, hostPort(w.peerIP[f], 80), sockOpts{}); got != "agent-outbound" {
							t.Fatalf("outbound to peer:80 reached %q, want the agent", got)
						}
					}
					if local, remote := out.last(); local != hostPort(w.peerIP[f], 80) || hostOf(remote) != w.podIP[f] {
						t.Errorf("outbound agent socket is %s <- %s; want the original destination %s from the pod", local, remote, hostPort(w.peerIP[f], 80))
					}
					if local, _ := up.last(); local != "" {
						t.Errorf("upstream saw a captured connection (%s)", local)
					}
					if got := dial(t, w.pod, hostPort(w.peerIP[f], 80), sockOpts{mark: DefaultMark}); got != "upstream-80" {
						t.Errorf("marked outbound reached %q, want the real upstream", got)
					}
					if got := dial(t, w.pod, hostPort(w.peerIP[f], 81), sockOpts{}); got != "upstream-81" {
						t.Errorf("excluded outbound port reached %q", got)
					}
					if got := dial(t, w.pod, hostPort(loop, 8080), sockOpts{}); got != "app-8080" {
						t.Errorf("loopback connect reached %q", got)
					}
					if got := dial(t, w.pod, hostPort(w.podIP[f], 8080), sockOpts{}); got != "app-8080" {
						t.Errorf("connect to own pod IP reached %q", got)
					}
					if got := dial(t, w.peer, hostPort(w.podIP[f], 8080), sockOpts{}); got != "agent-inbound" {
						t.Errorf("inbound to pod:8080 reached %q, want the agent", got)
					}
					if local, remote := in.last(); local != hostPort(w.podIP[f], 8080) || hostOf(remote) != w.peerIP[f] {
						t.Errorf("inbound agent socket is %s <- %s; want %s from the peer", local, remote, hostPort(w.podIP[f], 8080))
					}
					if got := dial(t, w.peer, hostPort(w.podIP[f], 22), sockOpts{}); got != "app-22" {
						t.Errorf("excluded inbound port reached %q", got)
					}
					// The agent forwards to the app, marked; first from its
					// own address, then transparently from the peer's.
					if got := dial(t, w.pod, hostPort(w.podIP[f], 8080), sockOpts{mark: DefaultMark}); got != "app-8080" {
						t.Errorf("agent to app reached %q", got)
					}
					spoof := sockOpts{transparent: true, mark: DefaultMark, from: net.ParseIP(w.peerIP[f])}
					if got := dial(t, w.pod, hostPort(w.podIP[f], 8080), spoof); got != "app-8080" {
						t.Errorf("transparent agent to app reached %q", got)
					}
					if _, remote := app.last(); hostOf(remote) != w.peerIP[f] {
						t.Errorf("app saw the agent's connection from %s, want the peer's address %s", remote, w.peerIP[f])
					}
				})
			}
			if err := Remove(w.pod.Path()); err != nil {
				t.Fatal(err)
			}
			listen(t, w.peer, ipv4, hostPort("0.0.0.0", 82), "upstream-82", sockOpts{})
			if got := dial(t, w.pod, hostPort(w.peerIP[ipv4], 82), sockOpts{}); got != "upstream-82" {
				t.Errorf("after Remove outbound reached %q", got)
			}
		})
	}
}
