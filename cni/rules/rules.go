// Package rules is weir-cni's rule code: package redirect behind
// plugin.Rules. The weir-cni-rules helper links it; weir-cni, which a
// container runtime starts at every pod ADD, does not (the agent programs
// the rules of an ADD, docs/design.md "Who programs the rules").
package rules

import (
	"time"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/cni/plugin"
	"github.com/weir-mesh/weir/redirect"
)

// Redirect is plugin.Rules over package redirect. Its zero value is ready.
type Redirect struct{}

var _ plugin.Rules = Redirect{}

// Apply programs r in the namespace at netns, all or nothing.
func (Redirect) Apply(netns string, r api.Redirect, trace func(string, time.Duration)) error {
	return redirect.Apply(netns, fromWire(r), redirect.WithTrace(trace))
}

// Remove takes every weir rule out of the namespace at netns.
func (Redirect) Remove(netns string) error { return redirect.Remove(netns) }

// Verify checks r is in place in full, rule by rule.
func (Redirect) Verify(netns string, r api.Redirect) error {
	return redirect.Verify(netns, fromWire(r))
}

// Installed reports whether any weir rule is in the namespace at netns.
func (Redirect) Installed(netns string) (bool, error) { return redirect.Installed(netns) }

func fromWire(r api.Redirect) redirect.Spec {
	return redirect.Spec{
		Mode:                 redirect.Mode(r.Mode),
		OutboundPort:         r.OutboundPort,
		InboundPort:          r.InboundPort,
		Mark:                 r.Mark,
		Mask:                 r.Mask,
		IPv4:                 r.IPv4,
		IPv6:                 r.IPv6,
		ExcludeInboundPorts:  r.ExcludeInboundPorts,
		IncludeInboundPorts:  r.IncludeInboundPorts,
		ExcludeOutboundPorts: r.ExcludeOutboundPorts,
		ExcludeOutboundCIDRs: r.ExcludeOutboundCIDRs,
		Backend:              r.Backend,
		TPROXYMark:           r.TPROXYMark,
		TPROXYMask:           r.TPROXYMask,
		RouteTable:           r.RouteTable,
		RulePriority:         r.RulePriority,
		PinPath:              r.PinPath,
	}
}
