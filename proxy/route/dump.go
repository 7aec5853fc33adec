package route

import (
	"net/netip"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// Dump is the JSON view of a snapshot for the admin /config_dump endpoint:
// the routing config with every cluster's effective settings and live
// state.
type Dump struct {
	Unknown   string        `json:"unknown"`
	LocalZone string        `json:"localZone,omitempty"`
	Services  []ServiceDump `json:"services"`
	CIDRs     []CIDRRoute   `json:"cidrs,omitempty"`
}

// ServiceDump is one service in a Dump.
type ServiceDump struct {
	Name      string           `json:"name"`
	Addresses []netip.AddrPort `json:"addresses,omitempty"`
	Cluster   cluster.Dump     `json:"cluster"`
}

// Dump returns the snapshot's JSON view (a Dump value).
func (s *Snapshot) Dump() any {
	d := Dump{Unknown: Passthrough, Services: []ServiceDump{}}
	if s == nil {
		return d
	}
	if s.unknown.Refused() {
		d.Unknown = Refuse
	}
	d.LocalZone = s.cfg.LocalZone
	d.CIDRs = s.cfg.CIDRs
	d.Services = make([]ServiceDump, len(s.cfg.Services))
	for i, svc := range s.cfg.Services {
		d.Services[i] = ServiceDump{Name: svc.Name, Addresses: svc.Addresses, Cluster: s.route(int32(i)).Cluster.Dump()}
	}
	return d
}
