package cluster

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"
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
				if c.pick(uint64(i)*0x9e3779b97f4a7c15, &v, c.now()) == nil {
					b.Fatal("no pick")
				}
			}
		})
	}
}

// BenchmarkRequest measures one L7 request's hold on the cluster, a pick
// then Done, per balancer over a 10-endpoint cluster: what the cluster adds
// per request (clock, pick, counters, lease). api=pick allocates a lease
// per request; api=into picks into the caller's lease, reading the clock
// itself; api=into-batch passes a clock reading taken once per 16
// requests, as proxy/rpc does once per read of a batch.
func BenchmarkRequest(b *testing.B) {
	var e []Endpoint
	for i := range 10 {
		e = append(e, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80), Weight: uint32(1 + i%3)})
	}
	for _, bal := range []string{RoundRobin, LeastRequest, PeakEWMA, Maglev} {
		c, err := New(Config{Name: bal, Balancer: bal}, e, Options{Seed: 1})
		if err != nil {
			b.Fatal(err)
		}
		for _, api := range []string{"pick", "into", "into-batch"} {
			b.Run(fmt.Sprintf("balancer=%s/api=%s", bal, api), func(b *testing.B) {
				b.ReportAllocs()
				var own Lease
				var now time.Time
				for i := 0; b.Loop(); i++ {
					key := uint64(i) * 0x9e3779b97f4a7c15
					l, err := &own, error(nil)
					switch api {
					case "pick":
						l, err = c.Pick(key, nil)
					case "into":
						err = c.PickInto(l, key, nil, time.Time{})
					default:
						if i%16 == 0 {
							now = time.Now()
						}
						err = c.PickInto(l, key, nil, now)
					}
					if err != nil {
						b.Fatal(err)
					}
					l.Done(nil)
				}
			})
		}
	}
}
