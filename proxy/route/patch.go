package route

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// WithEndpoints returns a snapshot that routes as s except that the named
// services have the given endpoints. It is the cheap path for the most
// frequent change a control plane sends (an endpoint set): only the
// clusters whose endpoints differ are rebuilt (carrying their live state
// over, as Build does), and the services with compiled routes are compiled
// again; the address indexes and every other cluster are shared with s,
// and no service is copied. A name s does not hold is an error; on error
// nothing is built and s is untouched. eps is not kept; its slices are.
func (s *Snapshot) WithEndpoints(eps map[string][]cluster.Endpoint) (*Snapshot, error) {
	if s == nil {
		return nil, errors.New("no snapshot to change endpoints in")
	}
	type change struct {
		i   int32
		eps []cluster.Endpoint
	}
	var changes []change
	for name, e := range eps {
		i, ok := s.byName[name]
		if !ok {
			return nil, fmt.Errorf("service %q is not in the snapshot", name)
		}
		if !cluster.EndpointsEqual(e, s.endpointsOf(i)) {
			changes = append(changes, change{i, e})
		}
	}
	if len(changes) == 0 {
		return s, nil
	}
	n := &Snapshot{
		cfg: s.cfg, routes: slices.Clone(s.routes), byName: s.byName,
		exact: s.exact, cidr4: s.cidr4, cidr6: s.cidr6, unknown: s.unknown,
		buckets: map[bucketKey]*TokenBucket{}, eps: maps.Clone(s.eps), l7: s.l7,
	}
	if n.eps == nil {
		n.eps = make(map[int32][]cluster.Endpoint, len(changes))
	}
	// Copy a chunk of routes the first time one of its routes changes.
	copied := map[int32]bool{}
	set := func(i int32) *Route {
		if c := i >> routeShift; !copied[c] {
			n.routes[c] = slices.Clone(n.routes[c])
			copied[c] = true
		}
		return n.route(i)
	}
	var errs []error
	for _, ch := range changes {
		svc := &s.cfg.Services[ch.i]
		ccfg := svc.Cluster
		ccfg.Name = svc.Name
		c, err := cluster.New(ccfg, ch.eps, cluster.Options{
			Prev: s.route(ch.i).Cluster, LocalZone: s.cfg.LocalZone, Clock: s.cfg.Clock, Seed: seedFor(s.cfg.Seed, svc.Name),
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("services[%d] (%s).endpoints: %w", ch.i, svc.Name, err))
			continue
		}
		set(ch.i).Cluster = c
		n.eps[ch.i] = ch.eps
	}
	for _, i := range s.l7 {
		r, e := n.compileRoute(i, &s.cfg.Services[i], s)
		*set(i) = r
		errs = append(errs, e...)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(n.eps) > 64 && len(n.eps) > len(s.cfg.Services)/8 {
		// Many overrides: fold them into a copy of the services, so the
		// next change does not copy a large override map.
		n.cfg.Services = slices.Clone(s.cfg.Services)
		for i, e := range n.eps {
			n.cfg.Services[i].Endpoints = e
		}
		n.eps = nil
	}
	return n, nil
}

// endpointsOf is service i's endpoints as last given.
func (s *Snapshot) endpointsOf(i int32) []cluster.Endpoint {
	if e, ok := s.eps[i]; ok {
		return e
	}
	return s.cfg.Services[i].Endpoints
}
