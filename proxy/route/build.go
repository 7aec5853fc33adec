package route

import (
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
)

// What to do with destinations no route matches (Config.Unknown) and with
// CIDR routes that name no service (CIDRRoute.Action).
const (
	Passthrough = "passthrough"
	Refuse      = "refuse"
)

// Config is the agent's whole routing intent. Build keeps references to
// its slices and maps: treat a Config as immutable once built (build the
// next one anew, sharing the unchanged parts, which makes rebuilds cheaper).
type Config struct {
	Services []Service `json:"services,omitempty"`
	// CIDRs route destination prefixes (optionally one port) that are not
	// service addresses.
	CIDRs []CIDRRoute `json:"cidrs,omitempty"`
	// Unknown is what happens to destinations nothing matches:
	// "passthrough" (default) or "refuse".
	Unknown string `json:"unknown,omitempty"`
	// LocalZone is the node's zone, for clusters with locality enabled.
	LocalZone string `json:"localZone,omitempty"`

	// Clock replaces time.Now in the clusters built (tests).
	Clock func() time.Time `json:"-"`
	// Seed makes the balancers deterministic (tests); 0 seeds randomly.
	Seed uint64 `json:"-"`
}

// Service is a virtual service: the addresses clients dial and the cluster
// of endpoints behind them.
type Service struct {
	// Name is unique in a Config and names the cluster in metrics.
	Name string `json:"name"`
	// Addresses are the virtual ip:port pairs (IPv4 or IPv6) clients dial.
	Addresses []netip.AddrPort `json:"addresses,omitempty"`
	// Cluster holds balancing and resilience settings; its Name may be
	// left empty (it is the service's name).
	Cluster   cluster.Config     `json:"cluster,omitzero"`
	Endpoints []cluster.Endpoint `json:"endpoints,omitempty"`
	// Protocol is what the service speaks; Auto (the zero value) sniffs
	// each connection.
	Protocol Protocol `json:"protocol,omitempty"`
	// UpstreamProtocol is what the service's endpoints (and the clusters
	// its httpRoutes send to) speak to the agent when it is not what the
	// client speaks: Auto (the zero value) forwards each request in the
	// client's protocol; HTTP2 sends HTTP/1.1 clients' requests over
	// HTTP/2 with prior knowledge (h2c), for endpoints that serve only
	// HTTP/2. Allowed with protocol auto, http, http2 and grpc.
	UpstreamProtocol Protocol `json:"upstreamProtocol,omitempty"`
	// HTTPRoutes route HTTP requests to this service's addresses by host,
	// path, method, headers and query; none sends every request to the
	// service's own cluster, balanced per request.
	HTTPRoutes []HTTPRoute `json:"httpRoutes,omitempty"`
	// TLSRoutes route TLS connections by SNI; none sends them to the
	// service's own cluster.
	TLSRoutes []TLSRoute `json:"tlsRoutes,omitempty"`
	// RateLimit caps the L7 requests (HTTP/1.1, HTTP/2, gRPC) to this
	// service's addresses on this node, before any route rule's limit;
	// nil: none.
	RateLimit *LocalRateLimit `json:"rateLimit,omitempty"`
	// RPCRoutes route the requests of a dubbo or bolt service by their
	// attributes; none sends every request to the service's own cluster.
	RPCRoutes []RPCRoute `json:"rpcRoutes,omitempty"`
	// RPC is the per-request timeout and retries of the requests of an
	// RPC service (protocol dubbo, bolt, rocketmq, redis, or a sniffed
	// Dubbo connection) that no rpcRoute gives its own; nil: no timeout
	// beyond the agent's stalled-connection bound, and only requests
	// never sent are retried.
	RPC *RPCPolicy `json:"rpc,omitempty"`
	// Kernel marks a service the capture balances in the kernel (eBPF
	// capture's connect program): the agent programs its addresses and up
	// endpoints there. Its cluster is still built, for health checks and
	// for connections that reach the agent all the same (pods in another
	// capture mode). Build itself ignores it.
	Kernel bool `json:"kernel,omitempty"`
}

// CIDRRoute sends destinations inside Prefix to a service's cluster, or
// passes them through or refuses them.
type CIDRRoute struct {
	// Prefix is a masked prefix such as 10.20.0.0/16 or fd00::/64.
	Prefix netip.Prefix `json:"prefix"`
	// Port restricts the route to one destination port; 0 matches any.
	Port uint16 `json:"port,omitempty"`
	// Service names the service whose cluster takes the connections.
	Service string `json:"service,omitempty"`
	// Action, when Service is empty: "passthrough" (default) or "refuse".
	Action string `json:"action,omitempty"`
}

// Build validates cfg and builds a snapshot. prev, when not nil, is the
// snapshot being replaced: every service whose cluster config, endpoints
// (and, with locality, the local zone) are unchanged keeps prev's Cluster
// as is, a changed one is rebuilt carrying its live state (counters,
// ejections) over, and the address indexes are reused when no address,
// CIDR route or service order changed. On error nothing is built and prev
// is untouched; the error lists every problem, each naming its field.
func Build(cfg Config, prev *Snapshot) (*Snapshot, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }

	var unknown Route
	switch cfg.Unknown {
	case "", Passthrough:
		unknown = Route{Passthrough: true}
	case Refuse:
	default:
		bad("unknown %q is not one of passthrough, refuse", cfg.Unknown)
	}

	s := &Snapshot{
		buckets: map[bucketKey]*TokenBucket{},
		cfg:     cfg,
		routes:  makeRoutes(len(cfg.Services)),
		unknown: unknown,
	}
	// Same services in the same order with the same addresses and CIDR
	// routes (the usual case: endpoints changed): the indexes of prev serve
	// as they are, and prev's cluster for service i is prev.route(i)'s.
	same := prev != nil && sameLayout(cfg, prev.cfg)
	if same {
		s.byName, s.exact, s.cidr4, s.cidr6 = prev.byName, prev.exact, prev.cidr4, prev.cidr6
	} else {
		s.byName = make(map[string]int32, len(cfg.Services))
	}
	for i := range cfg.Services {
		svc := &cfg.Services[i]
		where := func() string { return fmt.Sprintf("services[%d] (%s)", i, svc.Name) }
		if !same {
			if svc.Name == "" {
				bad("services[%d].name is missing", i)
				continue
			}
			if j, dup := s.byName[svc.Name]; dup {
				bad("%s.name repeats services[%d]", where(), j)
				continue
			}
			s.byName[svc.Name] = int32(i)
		}
		if same {
			// Compare with the previous config side by side: two
			// contiguous arrays, no visit to the cluster objects.
			ps := &prev.cfg.Services[i]
			if cfg.LocalZone == prev.cfg.LocalZone && svc.Cluster.Equal(&ps.Cluster) && cluster.EndpointsEqual(svc.Endpoints, prev.endpointsOf(int32(i))) {
				s.route(int32(i)).Cluster = prev.route(int32(i)).Cluster
				continue
			}
		}
		ccfg := svc.Cluster
		if ccfg.Name != "" && ccfg.Name != svc.Name {
			bad("%s.cluster.name %q must be empty or the service name", where(), ccfg.Name)
			continue
		}
		ccfg.Name = svc.Name
		var pc *cluster.Cluster
		switch {
		case same:
			pc = prev.route(int32(i)).Cluster
		case prev != nil:
			pc = prev.Cluster(svc.Name)
		}
		c := pc
		if !pc.Matches(ccfg, svc.Endpoints, cfg.LocalZone) {
			var err error
			c, err = cluster.New(ccfg, svc.Endpoints, cluster.Options{
				Prev: pc, LocalZone: cfg.LocalZone, Clock: cfg.Clock, Seed: seedFor(cfg.Seed, svc.Name),
			})
			if err != nil {
				errs = append(errs, fmt.Errorf("%s.cluster: %w", where(), err))
				continue
			}
		}
		s.route(int32(i)).Cluster = c
	}
	if !same {
		errs = append(errs, s.index(cfg)...)
	}
	errs = append(errs, s.compileL7(cfg, prev)...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return s, nil
}

// index builds the address and CIDR indexes.
func (s *Snapshot) index(cfg Config) []error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	n := 0
	for _, svc := range cfg.Services {
		n += len(svc.Addresses)
	}
	s.exact = make(map[addrKey]int32, n)
	for i := range cfg.Services {
		svc := &cfg.Services[i]
		for j, a := range svc.Addresses {
			where := func() string { return fmt.Sprintf("services[%d] (%s).addresses[%d]", i, svc.Name, j) }
			switch {
			case !a.IsValid():
				bad("%s is missing", where())
				continue
			case a.Port() == 0:
				bad("%s %s has no port", where(), a)
				continue
			case a.Addr().Zone() != "":
				bad("%s %s must not carry an IPv6 zone", where(), a)
				continue
			}
			k := keyOf(a.Addr(), a.Port())
			if o, dup := s.exact[k]; dup {
				bad("%s %s is already an address of service %s", where(), a, cfg.Services[o].Name)
				continue
			}
			s.exact[k] = int32(i)
		}
	}
	s.cidr4 = cidrIndex{m: map[cidrKey]int32{}, offset: 96}
	s.cidr6 = cidrIndex{m: map[cidrKey]int32{}}
	for i, r := range cfg.CIDRs {
		where := fmt.Sprintf("cidrs[%d]", i)
		if !r.Prefix.IsValid() {
			bad("%s.prefix is missing or invalid", where)
			continue
		}
		p := r.Prefix
		if p.Addr().Zone() != "" {
			bad("%s.prefix %s must not carry an IPv6 zone", where, p)
			continue
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				bad("%s.prefix %s mixes IPv4-mapped and IPv6 space", where, p)
				continue
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		if p.Masked() != p {
			bad("%s.prefix %s has host bits set (did you mean %s?)", where, r.Prefix, p.Masked())
			continue
		}
		var t int32
		switch {
		case r.Service != "":
			if r.Action != "" {
				bad("%s sets both service and action", where)
				continue
			}
			j, ok := s.byName[r.Service]
			if !ok {
				bad("%s.service %q is not a service", where, r.Service)
				continue
			}
			t = j
		case r.Action == "" || r.Action == Passthrough:
			t = toPassthrough
		case r.Action == Refuse:
			t = toRefuse
		default:
			bad("%s.action %q is not one of passthrough, refuse", where, r.Action)
			continue
		}
		idx := &s.cidr6
		if p.Addr().Is4() {
			idx = &s.cidr4
		}
		ak := keyOf(p.Addr(), 0)
		k := cidrKey{hi: ak.hi, lo: ak.lo, bits: uint8(p.Bits()), port: r.Port}
		if _, dup := idx.m[k]; dup {
			bad("%s repeats prefix %s port %d", where, p, r.Port)
			continue
		}
		idx.m[k] = t
		if !slices.Contains(idx.bits, uint8(p.Bits())) {
			idx.bits = append(idx.bits, uint8(p.Bits()))
		}
	}
	for _, idx := range []*cidrIndex{&s.cidr4, &s.cidr6} {
		slices.Sort(idx.bits)
		slices.Reverse(idx.bits)
	}
	return errs
}

// sameLayout reports whether the address and CIDR indexes built for b
// serve a: same services in the same order with the same addresses, same
// CIDR routes.
func sameLayout(a, b Config) bool {
	if len(a.Services) != len(b.Services) || !slices.Equal(a.CIDRs, b.CIDRs) {
		return false
	}
	for i := range a.Services {
		sa, sb := &a.Services[i], &b.Services[i]
		if sa.Name != sb.Name || !slices.Equal(sa.Addresses, sb.Addresses) {
			return false
		}
	}
	return true
}

// seedFor derives a per-cluster seed so tests are deterministic and
// clusters do not move in lockstep.
func seedFor(seed uint64, name string) uint64 {
	if seed == 0 {
		return 0
	}
	h := fnv.New64a()
	h.Write([]byte(name))
	return seed ^ h.Sum64() | 1
}

// compileL7 sets each service route's protocol and compiles its HTTP and
// TLS routes, whose backends may name any service of the snapshot. Routes
// are few next to services, so they are compiled on every build.
func (s *Snapshot) compileL7(cfg Config, prev *Snapshot) []error {
	var errs []error
	for i := range cfg.Services {
		svc := &cfg.Services[i]
		r := s.route(int32(i))
		if r.Cluster == nil {
			continue
		}
		if _, err := ParseProtocol(string(svc.Protocol)); err != nil {
			errs = append(errs, fmt.Errorf("services[%d] (%s): %w", i, svc.Name, err))
			continue
		}
		if err := checkUpstreamProtocol(svc.Protocol, svc.UpstreamProtocol); err != nil {
			errs = append(errs, fmt.Errorf("services[%d] (%s): %w", i, svc.Name, err))
			continue
		}
		if svc.RateLimit == nil && len(svc.HTTPRoutes) == 0 && len(svc.TLSRoutes) == 0 && len(svc.RPCRoutes) == 0 && svc.RPC == nil {
			// Most services: no message to prepare for errors that cannot
			// happen (this runs for every service on every build).
			*r = Route{Cluster: r.Cluster, Protocol: svc.Protocol, UpstreamProtocol: svc.UpstreamProtocol, Service: svc.Name}
			continue
		}
		s.l7 = append(s.l7, int32(i))
		var e []error
		*r, e = s.compileRoute(int32(i), svc, prev)
		errs = append(errs, e...)
	}
	return errs
}

// compileRoute compiles service i's route with its rate limit and its
// HTTP, TLS and RPC routes, whose backends may name any service of s
// (every route's cluster must be set).
func (s *Snapshot) compileRoute(i int32, svc *Service, prev *Snapshot) (Route, []error) {
	var errs []error
	clusterOf := func(name string) *cluster.Cluster {
		if j, ok := s.byName[name]; ok {
			return s.route(j).Cluster
		}
		return nil
	}
	r := Route{Cluster: s.route(i).Cluster, Protocol: svc.Protocol, UpstreamProtocol: svc.UpstreamProtocol, Service: svc.Name}
	lim := &limits{service: svc.Name, next: s.buckets}
	if prev != nil {
		lim.prev = prev.buckets
	}
	if svc.RateLimit != nil {
		bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
		r.RateLimit = lim.bucket(bucketKey{rule: -1, rl: *svc.RateLimit}, bad, fmt.Sprintf("services[%d] (%s).rateLimit", i, svc.Name))
	}
	where := fmt.Sprintf("services[%d] (%s)", i, svc.Name)
	if len(svc.HTTPRoutes) > 0 {
		if svc.Protocol == TCP || svc.Protocol == TLS {
			errs = append(errs, fmt.Errorf("%s has httpRoutes but protocol %s", where, svc.Protocol))
		}
		h, err := compileHTTP(svc.HTTPRoutes, clusterOf, lim, where)
		if err != nil {
			errs = append(errs, err)
		}
		r.HTTP = h
	}
	if len(svc.TLSRoutes) > 0 {
		if svc.Protocol != Auto && svc.Protocol != TLS {
			errs = append(errs, fmt.Errorf("%s has tlsRoutes but protocol %s", where, svc.Protocol))
		}
		t, err := compileTLS(svc.TLSRoutes, clusterOf, where)
		if err != nil {
			errs = append(errs, err)
		}
		r.TLS = t
	}
	if svc.RPC != nil {
		if !svc.Protocol.RPC() && svc.Protocol != Redis && svc.Protocol != Auto {
			errs = append(errs, fmt.Errorf("%s has rpc but protocol %q (rpc needs dubbo, bolt, rocketmq, redis or auto)", where, svc.Protocol))
		}
		bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
		r.RPCPolicy = compileRPCPolicy(svc.RPC, rpc.DefaultPolicy, bad, where+".rpc")
	}
	if len(svc.RPCRoutes) > 0 {
		if !svc.Protocol.RPC() {
			errs = append(errs, fmt.Errorf("%s has rpcRoutes but protocol %q (rpcRoutes need dubbo, bolt or rocketmq)", where, svc.Protocol))
		}
		t, err := compileRPC(svc.RPCRoutes, r.RPCPolicy, clusterOf, where)
		if err != nil {
			errs = append(errs, err)
		}
		r.RPC = t
	}
	return r, errs
}
