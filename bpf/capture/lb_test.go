package capture

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// TestKernelServices: with a service address in the kernel's table, an
// enrolled pod's connects to it go straight to its endpoints (in turn, or
// at random), never to the agent's listener, and the app sees the address
// it dialled as its peer; an address not in the table still goes to the
// agent; a service with no endpoint refuses connects; a second Load (an
// agent restart) finds the table and changes it in place; an empty table
// leaves no entry behind.
func TestKernelServices(t *testing.T) {
	b := newTestBed(t)
	pod := newNetns(t)
	pod.run(t, "ip", "addr", "add", "10.9.0.2/32", "dev", "lo")
	pod.run(t, "ip", "addr", "add", "10.1.2.3/32", "dev", "lo")
	pod.run(t, "ip", "addr", "add", "10.1.2.4/32", "dev", "lo")
	serve := func(addr, name string, n *atomic.Int64) *net.TCPListener {
		ln := listenIn(t, pod, addr)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				if n != nil {
					n.Add(1)
				}
				fmt.Fprintln(c, name)
				c.Close()
			}
		}()
		return ln
	}
	var agentConns atomic.Int64
	agentLn := serve("127.0.0.1:15001", "agent", &agentConns)
	serve("10.1.2.3:81", "a", nil)
	serve("10.1.2.4:82", "b", nil)
	cookie, err := NetnsCookieOf(fdOf(t, agentLn))
	if err != nil {
		t.Fatal(err)
	}
	p, err := Open(b.pin)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	nsf, err := os.Open(pod.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	// The service address is also an outbound exclusion: balancing wins
	// (an excluded virtual address would lead nowhere).
	spec := Pod{OutboundPort: 15001, IPv4: true, Addrs: []netip.Addr{netip.MustParseAddr("10.9.0.2")},
		ExcludeOutboundCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.20/32")}}
	if err := p.Enrol(int(nsf.Fd()), cookie, spec); err != nil {
		t.Fatal(err)
	}

	vip := netip.MustParseAddrPort("10.96.0.20:80")
	a, bb := netip.MustParseAddrPort("10.1.2.3:81"), netip.MustParseAddrPort("10.1.2.4:82")
	if err := b.objs.SetKernelServices([]KernelService{{Addr: vip, Slots: []netip.AddrPort{a, bb}}}); err != nil {
		t.Fatal(err)
	}
	spread := func(what string, n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			got := b.dial(t, pod, vip.String())
			if got["peer"] != vip.String() {
				t.Fatalf("%s: dial %d: %v; want the app's peer to be the service address %s", what, i, got, vip)
			}
			seen[got["got"]]++
		}
		return seen
	}
	if seen := spread("round robin", 10); seen["a"] != 5 || seen["b"] != 5 {
		t.Fatalf("round robin over two endpoints, 10 connects: %v; want 5 each", seen)
	}
	// connect6: the same address dialled from an IPv6 socket (v4-mapped)
	// goes to the same endpoints, and getpeername6 restores it.
	for i := 0; i < 2; i++ {
		cmd, sc := b.helperProc(t, pod, "dial6", "[::ffff:"+vip.Addr().String()+"]:80")
		got := map[string]string{}
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), "=")
			got[k] = v
		}
		cmd.Wait()
		if (got["got"] != "a" && got["got"] != "b") || got["peer"] != "[::ffff:"+vip.Addr().String()+"]:80" {
			t.Fatalf("v4-mapped dial from an IPv6 socket: %v; want an endpoint and the service address as the peer", got)
		}
	}
	if n := agentConns.Load(); n != 0 {
		t.Fatalf("the agent's listener took %d connections to a kernel-balanced service", n)
	}
	if got := b.dial(t, pod, "10.96.0.21:80"); got["got"] != "agent" {
		t.Fatalf("an address not in the table: %v; want the agent", got)
	}

	if err := b.objs.SetKernelServices([]KernelService{{Addr: vip, Random: true, Slots: []netip.AddrPort{a, bb}}}); err != nil {
		t.Fatal(err)
	}
	if seen := spread("random", 24); seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 24 {
		t.Fatalf("random over two endpoints, 24 connects: %v; want both and nothing else", seen)
	}

	if err := b.objs.SetKernelServices([]KernelService{{Addr: vip}}); err != nil {
		t.Fatal(err)
	}
	if got := b.dial(t, pod, vip.String()); !strings.Contains(got["error"], "refused") {
		t.Fatalf("a service with no endpoint: %v; want connection refused", got)
	}

	// A restarted agent finds the table and changes it in place.
	if err := b.objs.SetKernelServices([]KernelService{{Addr: vip, Slots: []netip.AddrPort{a, a, bb}}}); err != nil {
		t.Fatal(err)
	}
	again, err := Load(Options{PinPath: b.pin, Cgroup: b.cgroup})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	have, err := again.KernelServices()
	if err != nil || len(have) != 1 || fmt.Sprint(have[vip].Slots) != fmt.Sprint([]netip.AddrPort{a, a, bb}) {
		t.Fatalf("table after a reload: %v, %v; want %s over [%s %s %s]", have, err, vip, a, a, bb)
	}
	if err := again.SetKernelServices([]KernelService{{Addr: vip, Slots: []netip.AddrPort{bb}}}); err != nil {
		t.Fatal(err)
	}
	if seen := spread("one endpoint left", 4); seen["b"] != 4 {
		t.Fatalf("after the table shrank to b alone: %v", seen)
	}
	if n := countEntries(t, again.objs.LbBackends); n != 1 {
		t.Fatalf("lb_backends holds %d slots after shrinking to one", n)
	}
	st, err := again.KernelLBStats()
	if err != nil || st["connect_balanced"] < 40 || st["connect_no_endpoint"] != 1 {
		t.Fatalf("kernel balancing counters %v (%v); want at least 40 balanced, 1 refused", st, err)
	}

	if err := again.SetKernelServices(nil); err != nil {
		t.Fatal(err)
	}
	if n, m := countEntries(t, again.objs.LbServices), countEntries(t, again.objs.LbBackends); n != 0 || m != 0 {
		t.Fatalf("an empty table left %d services and %d slots", n, m)
	}
	// Out of the table, the address is capture's again: excluded, so
	// direct, where nothing routes it.
	if got := b.dial(t, pod, vip.String()); !strings.Contains(got["error"], "unreachable") {
		t.Fatalf("the excluded address once out of the table: %v; want a direct connect (network unreachable)", got)
	}
}

func countEntries(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	k := make([]byte, m.KeySize())
	v := make([]byte, m.ValueSize())
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// dial6 is the "dial6" helper: connect an AF_INET6 socket to addr, print
// peer= (getpeername) and got= (what the server sent).
func dial6(addr string) int {
	ap := netip.MustParseAddrPort(addr)
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		fmt.Printf("error=%v\n", err)
		return 0
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}); err != nil {
		fmt.Printf("error=%v\n", err)
		return 0
	}
	if sa, err := unix.Getpeername(fd); err == nil {
		if s6, ok := sa.(*unix.SockaddrInet6); ok {
			fmt.Printf("peer=%s\n", netip.AddrPortFrom(netip.AddrFrom16(s6.Addr), uint16(s6.Port)))
		}
	}
	unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &unix.Timeval{Sec: 3})
	b := make([]byte, 64)
	n, _ := unix.Read(fd, b)
	fmt.Printf("got=%s\n", strings.TrimSpace(string(b[:max(n, 0)])))
	return 0
}
