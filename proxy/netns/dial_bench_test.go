package netns

import (
	"context"
	"net"
	"net/netip"
	"testing"
)

// BenchmarkDial is an upstream connect as the engine makes it: socket
// created inside the pod namespace with the bypass mark, connect, close.
func BenchmarkDial(b *testing.B) {
	h := newNetns(b)
	addr := closingListener(b, h)
	opts := SocketOptions{Mark: 0x539}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := h.Dial(ctx, addr, netip.Addr{}, opts)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkDialSameNetns is the floor BenchmarkDial compares with: the same
// connect and close made by a plain net.Dialer in the caller's namespace.
func BenchmarkDialSameNetns(b *testing.B) {
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	addr := ln.Addr().String()
	d := net.Dialer{KeepAlive: -1}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		c, err := d.DialContext(ctx, "tcp4", addr)
		if err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// closingListener listens in h and closes every connection it accepts,
// until the benchmark ends.
func closingListener(b *testing.B, h *Handle) netip.AddrPort {
	ln, err := h.Listen(netip.MustParseAddrPort("127.0.0.1:0"), SocketOptions{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort()
}
