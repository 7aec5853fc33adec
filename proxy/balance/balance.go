// Package balance holds the algorithms that pick an upstream endpoint for a
// new connection: round robin, random, least request and peak-EWMA with two
// random choices, ring hash and Maglev.
//
// Each balancer is a small type with one method,
//
//	Pick(key uint64, hs Hosts) int
//
// which returns the index of the chosen host, or None when Hosts allows no
// host at all. A balancer knows nothing of health, ejection or retries: the
// caller (package cluster) expresses all of that through Hosts.Allowed, so
// the same balancer serves a healthy cluster, a degraded one and a retry that
// must avoid the endpoints it already tried.
//
// Balancers are built once per snapshot from the endpoints' addresses and
// weights (Target) and are safe for concurrent Pick calls without locks.
// Their zero values are usable and behave as the unweighted form of the
// algorithm (ring hash and Maglev fall back to a modulo hash).
package balance

import (
	"math/bits"
	"net/netip"
	"sync/atomic"
)

// None is what Pick returns when no host is allowed.
const None = -1

// Target is one endpoint as a balancer's constructor sees it. A Weight of 0
// counts as 1.
type Target struct {
	Addr   netip.AddrPort
	Weight uint32
}

func (t Target) weight() uint64 {
	if t.Weight == 0 {
		return 1
	}
	return uint64(t.Weight)
}

// Hosts is the view of one group of endpoints a balancer picks from, valid
// for one Pick. Indexes run from 0 to Len()-1 in the order of the Targets the
// balancer was built with.
type Hosts interface {
	// Len is the number of hosts; it equals the number of Targets the
	// balancer was built from.
	Len() int
	// Allowed reports whether host i may be picked for this connection.
	Allowed(i int) bool
	// Active is the number of connections in flight to host i (connecting
	// or established); load-aware balancers prefer the smaller.
	Active(i int) int64
	// RTT returns host i's latency estimate, or nil when the caller keeps
	// none (then every host costs the default RTT).
	RTT(i int) *RTT
	// Now is the caller's clock in nanoseconds, used to decay estimates.
	Now() int64
}

// uniform reports whether all targets have the same effective weight.
func uniform(ts []Target) bool {
	for _, t := range ts {
		if t.weight() != ts[0].weight() {
			return false
		}
	}
	return true
}

// Rand is a lock-free, goroutine-safe pseudo-random source: splitmix64 over
// an atomic counter. It exists so balancers can take an injected seed and be
// deterministic in tests without a mutex around math/rand. The zero value is
// usable and is seeded with 0.
type Rand struct {
	state atomic.Uint64
}

// NewRand returns a source seeded with seed.
func NewRand(seed uint64) *Rand {
	r := &Rand{}
	r.state.Store(seed)
	return r
}

// Uint64 returns the next pseudo-random number.
func (r *Rand) Uint64() uint64 {
	return mix64(r.state.Add(0x9e3779b97f4a7c15))
}

// IntN returns a number in [0, n); n must be > 0.
func (r *Rand) IntN(n int) int {
	hi, _ := bits.Mul64(r.Uint64(), uint64(n))
	return int(hi)
}

// mix64 is the splitmix64 finaliser: a cheap bijection that spreads every
// input bit over the output.
func mix64(z uint64) uint64 {
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// hashAddr hashes an endpoint address with a salt (FNV-1a over the 16-byte
// form and the port, then mixed), so rings and tables are the same on every
// node and across restarts.
func hashAddr(a netip.AddrPort, salt uint64) uint64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	b := a.Addr().Unmap().As16()
	for _, c := range b {
		h ^= uint64(c)
		h *= prime
	}
	h ^= uint64(a.Port())
	h *= prime
	h ^= salt
	h *= prime
	return mix64(h)
}

// HashAddr returns the affinity key of a client address for the hash
// balancers (ring hash, Maglev): equal addresses give equal keys on every
// node. The port is left out on purpose: affinity is per client host.
func HashAddr(a netip.Addr) uint64 {
	return hashAddr(netip.AddrPortFrom(a, 0), 0)
}
