// Package route maps a connection's original destination to what the
// engine does with it: balance it over a cluster, pass it through to the
// destination itself, or refuse it.
//
// The agent describes services, CIDR routes and the policy for unknown
// destinations in a Config; Build turns it into an immutable Snapshot,
// reusing every cluster of the previous snapshot whose config and endpoints
// did not change; a Table publishes the current Snapshot to the accept path
// with one atomic pointer. Lookup is a hash-map probe for service addresses,
// then at most two probes (the port, any port) per distinct CIDR prefix
// length in use: it takes no lock, allocates nothing, and does the same
// work with 10 services as with 100 000 (a large table only costs the cache
// misses of a large map).
package route

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
)

// Route is what Lookup decides for one destination.
type Route struct {
	// Cluster, when non-nil, is where the connection goes: call
	// Cluster.Connect.
	Cluster *cluster.Cluster
	// Passthrough, when Cluster is nil, means dial the original
	// destination itself. Cluster nil and Passthrough false means refuse.
	Passthrough bool
	// Service names the service whose address matched; empty for CIDR
	// routes and unknown destinations.
	Service string
	// Protocol is what the service declared; Auto means sniff.
	Protocol Protocol
	// UpstreamProtocol is the service's upstreamProtocol: HTTP2 sends
	// HTTP/1.1 clients' requests upstream over h2c; Auto forwards in the
	// client's protocol.
	UpstreamProtocol Protocol
	// HTTP routes each request of an HTTP connection; nil sends every
	// request to Cluster.
	HTTP *HTTPRouter
	// TLS routes a TLS connection by SNI; nil sends it to Cluster.
	TLS *TLSRouter
	// RateLimit is the service's token bucket for L7 requests; nil: none.
	RateLimit *TokenBucket
	// RPC routes each request of a Dubbo or SOFABolt connection by its
	// attributes; nil sends every request to Cluster.
	RPC *RPCRouter
	// RPCPolicy is the service's per-request timeout and retries for RPC
	// requests no route gives its own (services[].rpc); nil:
	// rpc.DefaultPolicy.
	RPCPolicy *rpc.Policy
}

// Refused reports whether the route says to refuse the connection.
func (r Route) Refused() bool { return r.Cluster == nil && !r.Passthrough }

// Snapshot is an immutable routing table. A nil *Snapshot routes every
// destination to passthrough, like an empty Config.
type Snapshot struct {
	cfg Config // as built, for Dump and the next Build
	// routes holds one route per service, in cfg.Services order, in
	// chunks of routeChunk (one allocation when built), so WithEndpoints
	// copies only the chunks it changes; route(i) is service i's.
	routes  [][]Route
	byName  map[string]int32 // service name -> index
	exact   map[addrKey]int32
	cidr4   cidrIndex
	cidr6   cidrIndex
	unknown Route
	// clusters is every route's cluster in order, made on first use.
	clusters atomic.Pointer[[]*cluster.Cluster]
	// buckets are the rate limits' token buckets, for the next build to
	// carry over.
	buckets map[bucketKey]*TokenBucket
	// eps holds the endpoints WithEndpoints gave services, overriding
	// cfg.Services[i].Endpoints (so a push does not copy every service);
	// nil when none.
	eps map[int32][]cluster.Endpoint
	// l7 lists the services whose routes were compiled (rate limit, HTTP,
	// TLS or RPC routes): their routers hold backend clusters, so
	// WithEndpoints compiles them again.
	l7 []int32
}

// routeChunk is the length of a chunk of Snapshot.routes (a power of two).
const (
	routeShift = 8
	routeChunk = 1 << routeShift
)

// makeRoutes returns n zero routes in chunks backed by one array.
func makeRoutes(n int) [][]Route {
	all := make([]Route, n)
	chunks := make([][]Route, 0, (n+routeChunk-1)/routeChunk)
	for len(all) > 0 {
		k := min(routeChunk, len(all))
		chunks = append(chunks, all[:k:k])
		all = all[k:]
	}
	return chunks
}

// route is service i's route.
func (s *Snapshot) route(i int32) *Route { return &s.routes[i>>routeShift][i&(routeChunk-1)] }

// cidrIndex finds the longest matching prefix with one map probe per
// distinct prefix length in use (at most 33 for IPv4, 129 for IPv6).
type cidrIndex struct {
	bits   []uint8 // distinct prefix lengths, longest first
	offset int     // 96 for IPv4 (held in 16-byte form), 0 for IPv6
	m      map[cidrKey]int32
}

// mask keeps the first n bits of the 128-bit address hi:lo.
func mask(hi, lo uint64, n int) (uint64, uint64) {
	switch {
	case n <= 0:
		return 0, 0
	case n < 64:
		return hi &^ (^uint64(0) >> n), 0
	case n == 64:
		return hi, 0
	case n < 128:
		return hi, lo &^ (^uint64(0) >> (n - 64))
	}
	return hi, lo
}

// addrKey is an address (IPv4 in its IPv4-mapped 16-byte form) and a port,
// as plain integers: cheaper to hash than netip.AddrPort.
type addrKey struct {
	hi, lo uint64
	port   uint16
}

func keyOf(a netip.Addr, port uint16) addrKey {
	b := a.As16()
	return addrKey{binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:]), port}
}

// cidrKey is a masked prefix (as in addrKey), its length and a port (0:
// any port).
type cidrKey struct {
	hi, lo uint64
	bits   uint8
	port   uint16
}

// Route targets in index maps: a service index (>= 0) or one of these.
const (
	toPassthrough int32 = -1
	toRefuse      int32 = -2
)

// Lookup returns the route for an original destination: the service that
// owns the exact address and port; else the longest CIDR route whose prefix
// holds the address, a route for the port winning over an any-port route of
// the same length; else the Unknown policy. IPv4-mapped IPv6 destinations
// match their IPv4 form.
func (s *Snapshot) Lookup(dst netip.AddrPort) Route {
	if s == nil {
		return Route{Passthrough: true}
	}
	a := dst.Addr()
	port := dst.Port()
	k := keyOf(a, port)
	if i, ok := s.exact[k]; ok {
		return *s.route(i)
	}
	idx := &s.cidr6
	if a.Is4() || a.Is4In6() {
		idx = &s.cidr4
	}
	for _, bits := range idx.bits {
		ck := cidrKey{bits: bits, port: port}
		ck.hi, ck.lo = mask(k.hi, k.lo, idx.offset+int(bits))
		if t, ok := idx.m[ck]; ok {
			return s.target(t)
		}
		ck.port = 0
		if t, ok := idx.m[ck]; ok {
			return s.target(t)
		}
	}
	return s.unknown
}

func (s *Snapshot) target(t int32) Route {
	switch t {
	case toPassthrough:
		return Route{Passthrough: true}
	case toRefuse:
		return Route{}
	}
	return *s.route(t)
}

// Cluster returns the cluster of the named service, or nil.
func (s *Snapshot) Cluster(service string) *cluster.Cluster {
	if s == nil {
		return nil
	}
	if i, ok := s.byName[service]; ok {
		return s.route(i).Cluster
	}
	return nil
}

// Clusters returns every cluster in service order; do not modify the slice.
func (s *Snapshot) Clusters() []*cluster.Cluster {
	if s == nil {
		return nil
	}
	if p := s.clusters.Load(); p != nil {
		return *p
	}
	out := make([]*cluster.Cluster, 0, len(s.cfg.Services))
	for _, chunk := range s.routes {
		for i := range chunk {
			out = append(out, chunk[i].Cluster)
		}
	}
	s.clusters.Store(&out)
	return out
}

// Table holds the current snapshot. The zero value holds none (Load
// returns nil, which routes everything to passthrough). Readers call Load
// once per connection; the agent calls Store after each Build.
type Table struct {
	p atomic.Pointer[Snapshot]
}

// Load returns the current snapshot.
func (t *Table) Load() *Snapshot { return t.p.Load() }

// Store publishes s; connections routed earlier keep the clusters they got.
func (t *Table) Store(s *Snapshot) { t.p.Store(s) }
