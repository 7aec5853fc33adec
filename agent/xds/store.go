package xds

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// Update is the routing the control plane describes, in weir's model:
// one service per cluster (named by ServiceName), listener addresses on
// the services they lead to, and one service per HTTP listener chain
// holding its routes. Treat it as immutable: unchanged services share
// their endpoint slices with the previous Update so route.Build reuses
// their clusters.
type Update struct {
	// Services are the services, except that Endpoints overrides the
	// endpoints of those it names: use AllServices for the full list.
	Services []route.Service
	CIDRs    []route.CIDRRoute
	// Endpoints replaces the endpoints of the services it names. An
	// endpoint push (the most frequent change) delivers the previous
	// Update's Services and CIDRs slices unchanged with every endpoint set
	// changed since those were composed here, so a consumer that built a
	// snapshot from an earlier Update on the same Services applies it with
	// route.Snapshot.WithEndpoints, without copying or visiting every
	// service (see EndpointsOnly). Nil after any other change; it is
	// folded into new Services once it names many services.
	Endpoints map[string][]cluster.Endpoint
}

// AllServices returns Services with Endpoints applied: Services itself
// when Endpoints is empty, else a copy.
func (u Update) AllServices() []route.Service {
	if len(u.Endpoints) == 0 {
		return u.Services
	}
	out := slices.Clone(u.Services)
	for i := range out {
		if e, ok := u.Endpoints[out[i].Name]; ok {
			out[i].Endpoints = e
		}
	}
	return out
}

// EndpointsOnly reports whether u differs from prev at most in endpoints
// (both hold the same Services and CIDRs): a snapshot built from prev
// then routes as u once given u.Endpoints (route.Snapshot.WithEndpoints).
func (u Update) EndpointsOnly(prev *Update) bool {
	return prev != nil && sameSlice(u.Services, prev.Services) && sameSlice(u.CIDRs, prev.CIDRs)
}

// sameSlice reports whether a and b are the same slice (not merely equal).
func sameSlice[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// store holds the accepted resources of every type, converted. Only the
// client's goroutine touches it.
type store struct {
	listeners map[string]*listenerEntry
	routes    map[string]*routeEntry
	clusters  map[string]*clusterEntry
	endpoints map[string][]cluster.Endpoint

	// onDemand: clusters are subscribed on demand, so a listener naming
	// a cluster not held is expected, not a problem; demand is the
	// destination index built for Await, rebuilt when dirtyIndex
	// (listeners or route configurations changed).
	onDemand   bool
	dirtyIndex bool
	demand     map[netip.AddrPort][]string
	pinned     map[string]bool
	demandGen  uint64 // counts index rebuilds

	// clusterNames is the sorted cluster names, nil when the set changed.
	clusterNames []string

	// What changed since the last compose: dirtyAll for listeners, routes
	// and clusters (a full compose), dirtyEDS for endpoint sets only (the
	// last Update's services with those endpoints in Update.Endpoints).
	dirtyAll bool
	dirtyEDS map[string]bool
	// last is the last fully composed Update (its Services the base of
	// later endpoint pushes) and its problems; index maps an EDS name to
	// the positions of the services it feeds in last.Services; sinceLast
	// names the endpoint sets changed since last was composed.
	last         *Update
	lastProblems []string
	index        map[string][]int
	sinceLast    map[string]bool
}

func newStore() *store {
	return &store{
		listeners: map[string]*listenerEntry{},
		routes:    map[string]*routeEntry{},
		clusters:  map[string]*clusterEntry{},
		endpoints: map[string][]cluster.Endpoint{},
		dirtyEDS:  map[string]bool{},
		sinceLast: map[string]bool{},
	}
}

// routeNames is the RDS subscription the listeners imply.
func (s *store) routeNames() map[string]bool {
	out := map[string]bool{}
	for _, l := range s.listeners {
		for _, c := range l.chains {
			if c.rds != "" {
				out[c.rds] = true
			}
		}
	}
	return out
}

// endpointNames is the EDS subscription the clusters imply.
func (s *store) endpointNames() map[string]bool {
	out := make(map[string]bool, len(s.clusters))
	for _, c := range s.clusters {
		if c.eds != "" {
			out[c.eds] = true
		}
	}
	return out
}

// ServiceName is the weir service name of an xDS cluster. Istio's
// outbound cluster names ("outbound|80||web.shop.svc.cluster.local")
// become the Kubernetes source's names ("shop/web:80"), so with both
// sources on, xDS replaces the Kubernetes service of the same name; other
// names are kept as they are.
func ServiceName(xdsCluster string) string {
	parts := strings.Split(xdsCluster, "|")
	if len(parts) != 4 || parts[0] != "outbound" || parts[2] != "" {
		return xdsCluster
	}
	host := strings.SplitN(parts[3], ".", 4)
	if len(host) < 3 || host[2] != "svc" {
		return xdsCluster
	}
	return host[1] + "/" + host[0] + ":" + parts[1]
}

// listenerService names the service holding an HTTP chain's routes.
func listenerService(listener string, chain, chains int) string {
	if chains > 1 {
		return fmt.Sprintf("listener:%s#%d", listener, chain)
	}
	return "listener:" + listener
}

// compose builds the Update from every accepted resource. Listeners claim
// destinations in name order; a destination claimed twice, a chain whose
// cluster is unknown and HTTP backends naming unknown clusters are left
// out and reported in problems (the control plane may send them later).
func (s *store) compose() (Update, []string) {
	if !s.dirtyAll && s.last != nil {
		// Only endpoint sets changed (the usual push): the last services
		// stay as they are, and Update.Endpoints carries every set changed
		// since they were composed, so a push costs what it changes.
		for eds := range s.dirtyEDS {
			s.sinceLast[eds] = true
		}
		clear(s.dirtyEDS)
		eps := make(map[string][]cluster.Endpoint, len(s.sinceLast))
		for eds := range s.sinceLast {
			for _, i := range s.index[eds] {
				eps[s.last.Services[i].Name] = s.endpoints[eds]
			}
		}
		if len(eps) <= foldEndpoints(len(s.last.Services)) {
			return Update{Services: s.last.Services, CIDRs: s.last.CIDRs, Endpoints: eps}, s.lastProblems
		}
		// Many sets changed: fold them into new services, so the next
		// push does not carry a large map.
		services := slices.Clone(s.last.Services)
		for eds := range s.sinceLast {
			for _, i := range s.index[eds] {
				services[i].Endpoints = s.endpoints[eds]
			}
		}
		clear(s.sinceLast)
		s.last = &Update{Services: services, CIDRs: s.last.CIDRs}
		return *s.last, s.lastProblems
	}
	u, problems := s.composeAll()
	s.dirtyAll = false
	clear(s.dirtyEDS)
	clear(s.sinceLast)
	s.last, s.lastProblems = &u, problems
	return u, problems
}

// foldEndpoints is how many services Update.Endpoints may name before an
// endpoint push composes new services instead: an eighth of them, at least
// 64 (a copy of every service then costs less than the map it replaces,
// spread over the pushes that grew it).
func foldEndpoints(services int) int { return max(64, services/8) }

// composeAll builds the Update from scratch.
func (s *store) composeAll() (Update, []string) {
	var problems []string
	s.index = make(map[string][]int, len(s.clusters))
	if s.clusterNames == nil {
		s.clusterNames = make([]string, 0, len(s.clusters))
		for name := range s.clusters {
			s.clusterNames = append(s.clusterNames, name)
		}
		slices.Sort(s.clusterNames)
	}
	listenerNames := make([]string, 0, len(s.listeners))
	for name := range s.listeners {
		listenerNames = append(listenerNames, name)
	}
	slices.Sort(listenerNames)
	if s.onDemand && (s.dirtyIndex || s.demand == nil) {
		s.demand, s.pinned = s.demandIndex(listenerNames)
		s.demandGen++
		s.dirtyIndex = false
	}

	type dest struct {
		addrs []netip.AddrPort
		proto route.Protocol
	}
	byCluster := map[string]*dest{}
	var httpSvcs []route.Service
	var cidrs []route.CIDRRoute
	claimed := map[netip.AddrPort]string{}
	claimedCIDR := map[string]string{}
	claim := func(l string, c *chainEntry, svc string, passthrough bool) []netip.AddrPort {
		var mine []netip.AddrPort
		for _, a := range c.addrs {
			if o, dup := claimed[a]; dup {
				problems = append(problems, fmt.Sprintf("listener %s: %s already belongs to listener %s", l, a, o))
				continue
			}
			claimed[a] = l
			if passthrough {
				cidrs = append(cidrs, route.CIDRRoute{Prefix: netip.PrefixFrom(a.Addr(), a.Addr().BitLen()), Port: a.Port(), Action: route.Passthrough})
				continue
			}
			mine = append(mine, a)
		}
		for _, r := range c.cidrs {
			k := fmt.Sprintf("%s:%d", r.Prefix, r.Port)
			if o, dup := claimedCIDR[k]; dup {
				problems = append(problems, fmt.Sprintf("listener %s: %s already belongs to listener %s", l, k, o))
				continue
			}
			claimedCIDR[k] = l
			if passthrough {
				r.Action = route.Passthrough
			} else {
				r.Service = svc
			}
			cidrs = append(cidrs, r)
		}
		return mine
	}
	for _, ln := range listenerNames {
		le := s.listeners[ln]
		for ci := range le.chains {
			c := &le.chains[ci]
			if c.cluster != "" {
				ce := s.clusters[c.cluster]
				if ce == nil && s.onDemand {
					continue
				}
				if ce == nil {
					problems = append(problems, fmt.Sprintf("listener %s: cluster %q is not known (yet)", ln, c.cluster))
					continue
				}
				d := byCluster[c.cluster]
				if d == nil {
					d = &dest{proto: c.protocol}
					byCluster[c.cluster] = d
				}
				d.addrs = append(d.addrs, claim(ln, c, ServiceName(c.cluster), ce.passthrough)...)
				continue
			}
			re := c.inline
			if c.rds != "" {
				if re = s.routes[c.rds]; re == nil {
					problems = append(problems, fmt.Sprintf("listener %s: route configuration %q is not known (yet)", ln, c.rds))
					continue
				}
			}
			name := listenerService(ln, ci, len(le.chains))
			addrs := claim(ln, c, name, false)
			routes, p := s.resolveBackends(re.routes, name)
			problems = append(problems, p...)
			httpSvcs = append(httpSvcs, route.Service{Name: name, Addresses: addrs, Protocol: c.protocol, HTTPRoutes: routes})
		}
	}

	services := make([]route.Service, 0, len(s.clusterNames)+len(httpSvcs))
	seen := make(map[string]string, len(s.clusterNames))
	for _, cn := range s.clusterNames {
		ce := s.clusters[cn]
		if ce.passthrough {
			continue
		}
		svc := route.Service{Name: ServiceName(cn), Cluster: ce.cfg, Endpoints: ce.static}
		if ce.eds != "" {
			svc.Endpoints = s.endpoints[ce.eds]
		}
		if d := byCluster[cn]; d != nil {
			svc.Addresses, svc.Protocol = d.addrs, d.proto
		}
		if o, dup := seen[svc.Name]; dup {
			problems = append(problems, fmt.Sprintf("cluster %s: service name %s already taken by cluster %s", cn, svc.Name, o))
			continue
		}
		seen[svc.Name] = cn
		if ce.eds != "" {
			s.index[ce.eds] = append(s.index[ce.eds], len(services))
		}
		services = append(services, svc)
	}
	services = append(services, httpSvcs...)
	return Update{Services: services, CIDRs: cidrs}, problems
}

// resolveBackends renames HTTP backends from xDS cluster names to service
// names and drops those naming no usable cluster.
func (s *store) resolveBackends(in []route.HTTPRoute, svc string) ([]route.HTTPRoute, []string) {
	var problems []string
	out := make([]route.HTTPRoute, len(in))
	for i, r := range in {
		r.Rules = slices.Clone(r.Rules)
		for j := range r.Rules {
			rule := &r.Rules[j]
			var keep []route.BackendRef
			for _, b := range rule.Backends {
				ce := s.clusters[b.Service]
				switch {
				case ce == nil && s.onDemand:
					// Fetched when a connection to the listener asks.
				case ce == nil:
					problems = append(problems, fmt.Sprintf("service %s: route %s: cluster %q is not known (yet); its share answers 500", svc, r.Name, b.Service))
				case ce.passthrough:
					problems = append(problems, fmt.Sprintf("service %s: route %s: cluster %q passes connections through, which HTTP routes cannot; its share answers 500", svc, r.Name, b.Service))
				default:
					b.Service = ServiceName(b.Service)
					keep = append(keep, b)
				}
			}
			rule.Backends = keep
		}
		out[i] = r
	}
	return out, problems
}

// Snapshot builds the routing of u for a consumer that routes by xDS
// alone. prev is the consumer's current snapshot and from the Update it
// was built from (nil: none): when u changes only endpoints since from,
// only the clusters whose endpoints changed are rebuilt
// (route.Snapshot.WithEndpoints); otherwise route.Build composes the
// whole routing, reusing what prev holds unchanged.
func (u Update) Snapshot(prev *route.Snapshot, from *Update) (*route.Snapshot, error) {
	if prev != nil && u.EndpointsOnly(from) {
		if s, err := prev.WithEndpoints(u.Endpoints); err == nil {
			return s, nil
		}
		// The full build below names the problem.
	}
	return route.Build(route.Config{Services: u.AllServices(), CIDRs: u.CIDRs}, prev)
}
