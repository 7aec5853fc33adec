package agent

import (
	"fmt"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// buildRoutes turns the static services into a route snapshot, reusing what
// prev already derived for unchanged services.
func buildRoutes(cfg Config, prev *route.Snapshot) (*route.Snapshot, error) {
	rc := route.Config{Unknown: cfg.UnknownDestinations}
	for _, s := range cfg.Services {
		addrs, err := s.addrs()
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", s.Name, err)
		}
		eps, err := s.endpoints()
		if err != nil {
			return nil, fmt.Errorf("service %s: %w", s.Name, err)
		}
		svc := route.Service{Name: s.Name, Addresses: addrs, Cluster: cluster.Config{Name: s.Name}}
		for _, ep := range eps {
			svc.Endpoints = append(svc.Endpoints, cluster.Endpoint{Addr: ep})
		}
		rc.Services = append(rc.Services, svc)
	}
	snap, err := route.Build(rc, prev)
	if err != nil {
		return nil, fmt.Errorf("build routes: %w", err)
	}
	return snap, nil
}
