package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
)

// BenchmarkConnect measures one Connect + Lease.Done per balancer over a
// 10-endpoint cluster, with a dialer that costs nothing: what the cluster
// adds per connection (pick, counters, timeout context, lease).
func BenchmarkConnect(b *testing.B) {
	conn := new(net.TCPConn)
	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) { return conn, nil }
	var e []Endpoint
	for i := range 10 {
		e = append(e, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), Weight: uint32(1 + i%3)})
	}
	for _, bal := range []string{RoundRobin, Random, LeastRequest, PeakEWMA, RingHash, Maglev} {
		c, err := New(Config{Name: bal, Balancer: bal}, e, Options{Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		ctx := context.Background()
		b.Run(fmt.Sprintf("balancer=%s", bal), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				_, l, err := c.Connect(ctx, uint64(i)*0x9e3779b97f4a7c15, dial)
				if err != nil {
					b.Fatal(err)
				}
				l.Done(nil)
			}
		})
	}
}

// BenchmarkPick measures the balancer pick alone (no dial, no lease).
func BenchmarkPick(b *testing.B) {
	var e []Endpoint
	for i := range 100 {
		e = append(e, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 1, byte(i + 1)}), 80)})
	}
	for _, bal := range []string{RoundRobin, Random, LeastRequest, PeakEWMA, RingHash, Maglev} {
		c, err := New(Config{Name: bal, Balancer: bal}, e, Options{Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		b.Run(fmt.Sprintf("balancer=%s/endpoints=100", bal), func(b *testing.B) {
			b.ReportAllocs()
			var v pickView
			for i := 0; b.Loop(); i++ {
				v.n = 0
				if c.pick(uint64(i)*0x9e3779b97f4a7c15, &v) == nil {
					b.Fatal("no pick")
				}
			}
		})
	}
}
