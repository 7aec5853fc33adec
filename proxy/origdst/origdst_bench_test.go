package origdst

import (
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// require stops a benchmark lacking a prerequisite: a failure when CI=true
// (a skip proves nothing there), a skip elsewhere.
func require(b *testing.B, ok bool, what string) {
	b.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		b.Fatalf("missing prerequisite (CI=true, so this fails instead of skipping): %s", what)
	}
	b.Skipf("missing prerequisite: %s", what)
}

// redirectedConn builds a fresh netns holding an iptables nat OUTPUT
// REDIRECT from 127.0.0.2:80 to a listener on 127.0.0.1, connects through it
// and returns the accepted (redirected) side. Everything is torn down at
// cleanup; nothing touches the caller's namespace.
func redirectedConn(b *testing.B) *net.TCPConn {
	b.Helper()
	require(b, os.Geteuid() == 0, "root (network namespaces, iptables)")
	for _, tool := range []string{"ip", "iptables"} {
		_, err := exec.LookPath(tool)
		require(b, err == nil, "program "+tool+" on PATH")
	}
	netns, err := testutils.NewNS()
	if err != nil {
		b.Fatalf("create netns: %v", err)
	}
	b.Cleanup(func() {
		netns.Close()
		testutils.UnmountNS(netns)
	})
	name := filepath.Base(netns.Path())
	run := func(args ...string) {
		b.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", name}, args...)...).CombinedOutput(); err != nil {
			b.Fatalf("in netns %s: %v: %v\n%s", name, args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")

	var ln net.Listener
	if err := netns.Do(func(ns.NetNS) error {
		ln, err = net.Listen("tcp4", "127.0.0.1:0")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	run("iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", "127.0.0.2", "--dport", "80",
		"-j", "REDIRECT", "--to-ports", strconv.Itoa(port))

	var client net.Conn
	if err := netns.Do(func(ns.NetNS) error {
		client, err = net.Dial("tcp4", "127.0.0.2:80")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { client.Close() })
	c, err := ln.(*net.TCPListener).AcceptTCP()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// BenchmarkRedirected is the SO_ORIGINAL_DST lookup done once per captured
// connection under REDIRECT.
func BenchmarkRedirected(b *testing.B) {
	c := redirectedConn(b)
	want := netip.MustParseAddrPort("127.0.0.2:80")
	if got, err := Redirected(c); err != nil || got != want {
		b.Fatalf("Redirected = %v, %v; want %v", got, err, want)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Redirected(c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkLocal is the TPROXY counterpart: the accepted socket's own
// address. It needs no rule, only a connection.
func BenchmarkLocal(b *testing.B) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	c, err := ln.(*net.TCPListener).AcceptTCP()
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Local(c); err != nil {
			b.Fatal(err)
		}
	}
}
