package agent

import (
	"fmt"

	"github.com/weir-mesh/weir/proxy/route"
)

// buildRoutes turns the static services into a route snapshot, reusing what
// prev already derived for unchanged services.
func buildRoutes(cfg Config, prev *route.Snapshot) (*route.Snapshot, error) {
	rc, err := staticRoutes(cfg)
	if err != nil {
		return nil, err
	}
	snap, err := route.Build(rc, prev)
	if err != nil {
		return nil, fmt.Errorf("build routes: %w", err)
	}
	return snap, nil
}

// staticRoutes is the routing the config file's services describe.
func staticRoutes(cfg Config) (route.Config, error) {
	rc := route.Config{Unknown: cfg.UnknownDestinations, LocalZone: cfg.Zone}
	for _, s := range cfg.Services {
		addrs, err := s.addrs()
		if err != nil {
			return route.Config{}, fmt.Errorf("service %s: %w", s.Name, err)
		}
		eps, err := s.endpoints()
		if err != nil {
			return route.Config{}, fmt.Errorf("service %s: %w", s.Name, err)
		}
		cc := s.Cluster
		cc.Name = s.Name
		proto, err := route.ParseProtocol(s.Protocol)
		if err != nil {
			return route.Config{}, fmt.Errorf("service %s: %w", s.Name, err)
		}
		upProto, err := route.ParseUpstreamProtocol(s.UpstreamProtocol)
		if err != nil {
			return route.Config{}, fmt.Errorf("service %s: %w", s.Name, err)
		}
		rc.Services = append(rc.Services, route.Service{
			Name: s.Name, Addresses: addrs, Cluster: cc, Endpoints: eps,
			Protocol: proto, UpstreamProtocol: upProto, HTTPRoutes: s.HTTPRoutes, TLSRoutes: s.TLSRoutes, RateLimit: s.RateLimit,
			RPCRoutes: s.RPCRoutes,
			RPC:       s.RPC,
			Kernel:    s.Dataplane == DataplaneKernel,
		})
	}
	return rc, nil
}
