package route

import (
	"fmt"
	"maps"
	"net/netip"
	"runtime"
	"testing"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// bigConfig has n services of one address each (10.96.0.0/12 space, or
// fd00::/64 for every fourth) and eps endpoints each, labelled with a zone
// and a version, plus a few CIDR routes.
func bigConfig(n, eps int) Config {
	cfg := Config{Services: make([]Service, n)}
	zones := []string{"a", "b", "c"}
	for i := range n {
		var addr netip.Addr
		if i%4 == 3 {
			addr = netip.AddrFrom16([16]byte{0xfd, 0, 14: byte(i >> 8), 15: byte(i)})
			addr = netip.AddrFrom16([16]byte{0xfd, 11: byte(i >> 24), 12: byte(i >> 16), 13: byte(i >> 8), 14: byte(i), 15: 1})
		} else {
			addr = netip.AddrFrom4([4]byte{10, 96 + byte(i>>16), byte(i >> 8), byte(i)})
		}
		s := Service{Name: fmt.Sprintf("ns-%d/svc-%d", i/100, i), Addresses: []netip.AddrPort{netip.AddrPortFrom(addr, 80)}}
		s.Endpoints = make([]cluster.Endpoint, eps)
		for j := range eps {
			s.Endpoints[j] = cluster.Endpoint{
				Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 128 + byte(i>>16), byte(i >> 8), byte(i)}), uint16(8000+j)),
				Labels: map[string]string{cluster.ZoneLabel: zones[j%3], "version": "v1"},
			}
		}
		cfg.Services[i] = s
	}
	cfg.CIDRs = []CIDRRoute{
		{Prefix: netip.MustParsePrefix("192.168.0.0/16"), Action: Refuse},
		{Prefix: netip.MustParsePrefix("172.16.0.0/12"), Port: 443, Action: Passthrough},
		{Prefix: netip.MustParsePrefix("2001:db8::/32"), Action: Refuse},
	}
	return cfg
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 10_000, 100_000} {
		cfg := bigConfig(n, 1)
		s, err := Build(cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		hits := make([]netip.AddrPort, 1024)
		for i := range hits {
			hits[i] = cfg.Services[(i*7919)%n].Addresses[0]
		}
		misses := make([]netip.AddrPort, 1024)
		for i := range misses {
			misses[i] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), 443)
		}
		b.Run(fmt.Sprintf("services=%d/service", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if s.Lookup(hits[i&1023]).Cluster == nil {
					b.Fatal("miss")
				}
			}
		})
		b.Run(fmt.Sprintf("services=%d/cidr", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if !s.Lookup(misses[i&1023]).Refused() {
					b.Fatal("not refused")
				}
			}
		})
	}
}

// BenchmarkRebuildOneEndpoint measures Build after one endpoint of one
// service changed, with 10k services × 10 endpoints. "shared" is what an
// agent that keeps unchanged services' slices passes (the usual case);
// "copied" gives every service fresh, equal slices (sharing the label
// maps), so every endpoint is compared by value; "fresh" also rebuilds every
// label map, the worst case.
func BenchmarkRebuildOneEndpoint(b *testing.B) {
	const n, eps = 10_000, 10
	for _, mode := range []string{"shared", "copied", "fresh"} {
		b.Run(fmt.Sprintf("services=%d,endpoints=%d/%s", n, eps, mode), func(b *testing.B) {
			base := bigConfig(n, eps)
			prev, err := Build(base, nil)
			if err != nil {
				b.Fatal(err)
			}
			// Prepare the configs outside the timer: two variants of the
			// changed service alternate so every Build sees a change.
			variants := make([]Config, 2)
			for v := range variants {
				cfg := base
				cfg.Services = append([]Service(nil), base.Services...)
				if mode != "shared" {
					for i := range cfg.Services {
						cfg.Services[i].Endpoints = append([]cluster.Endpoint(nil), base.Services[i].Endpoints...)
						cfg.Services[i].Addresses = append([]netip.AddrPort(nil), base.Services[i].Addresses...)
						if mode == "fresh" {
							for j := range cfg.Services[i].Endpoints {
								cfg.Services[i].Endpoints[j].Labels = maps.Clone(cfg.Services[i].Endpoints[j].Labels)
							}
						}
					}
				}
				k := n / 2
				e := append([]cluster.Endpoint(nil), base.Services[k].Endpoints...)
				e[3].Weight = uint32(2 + v)
				cfg.Services[k].Endpoints = e
				variants[v] = cfg
			}
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				next, err := Build(variants[i&1], prev)
				if err != nil {
					b.Fatal(err)
				}
				if next.Cluster("ns-0/svc-0") != prev.Cluster("ns-0/svc-0") {
					b.Fatal("unchanged cluster rebuilt")
				}
				prev = next
			}
		})
	}
}

// BenchmarkRebuildServiceAdded measures Build when the layout changes (one
// service added to 10k × 10): the address indexes are rebuilt, every
// cluster is still reused.
func BenchmarkRebuildServiceAdded(b *testing.B) {
	const n, eps = 10_000, 10
	base := bigConfig(n+1, eps)
	small := base
	small.Services = base.Services[:n]
	prev, err := Build(small, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		cfg := small
		if i&1 == 0 {
			cfg = base
		}
		next, err := Build(cfg, prev)
		if err != nil {
			b.Fatal(err)
		}
		if next.Cluster("ns-0/svc-0") != prev.Cluster("ns-0/svc-0") {
			b.Fatal("unchanged cluster rebuilt")
		}
		prev = next
	}
}

// BenchmarkTableMemory reports the heap a 10k services × 10 endpoints
// snapshot holds, with and without the Config it was built from.
func BenchmarkTableMemory(b *testing.B) {
	const n, eps = 10_000, 10
	for b.Loop() {
		before := heapInUse()
		cfg := bigConfig(n, eps)
		withCfg := heapInUse()
		s, err := Build(cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		after := heapInUse()
		b.ReportMetric(float64(after-before)/(1<<20), "heap-MB")
		b.ReportMetric(float64(after-withCfg)/(1<<20), "snapshot-MB")
		runtime.KeepAlive(s)
		runtime.KeepAlive(cfg)
	}
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}
