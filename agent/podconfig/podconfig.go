// Package podconfig is the one model of per-pod capture overrides, and the one
// place they are validated, whether they come from the agent's static config
// or from a pod's weir.dev/* annotations.
package podconfig

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/weir-mesh/weir/redirect"
)

// Annotation keys a pod may carry. Values are comma-separated lists.
const (
	AnnotationMode                 = "weir.dev/mode"
	AnnotationExcludeInboundPorts  = "weir.dev/exclude-inbound-ports"
	AnnotationIncludeInboundPorts  = "weir.dev/include-inbound-ports"
	AnnotationExcludeOutboundPorts = "weir.dev/exclude-outbound-ports"
	AnnotationExcludeOutboundCIDRs = "weir.dev/exclude-outbound-cidrs"
)

// Overrides change a pod's capture from the node's defaults. The zero value
// changes nothing.
type Overrides struct {
	// Mode replaces the node's interception mode (redirect, tproxy, ebpf).
	Mode string `json:"mode,omitempty"`
	// ExcludeInboundPorts skip the agent for connections to these pod ports.
	ExcludeInboundPorts []uint16 `json:"excludeInboundPorts,omitempty"`
	// IncludeInboundPorts, when set, limit inbound capture to these ports.
	IncludeInboundPorts []uint16 `json:"includeInboundPorts,omitempty"`
	// ExcludeOutboundPorts skip the agent for these destination ports.
	ExcludeOutboundPorts []uint16 `json:"excludeOutboundPorts,omitempty"`
	// ExcludeOutboundCIDRs skip the agent for these destinations.
	ExcludeOutboundCIDRs []string `json:"excludeOutboundCIDRs,omitempty"`
}

// IsZero reports whether o changes nothing.
func (o Overrides) IsZero() bool {
	return o.Mode == "" && len(o.ExcludeInboundPorts) == 0 && len(o.IncludeInboundPorts) == 0 &&
		len(o.ExcludeOutboundPorts) == 0 && len(o.ExcludeOutboundCIDRs) == 0
}

// FromAnnotations reads the weir.dev/* annotations of a pod. An error names
// the annotation and the bad value; a pod with a bad annotation must not be
// half-captured (the caller decides what to do with it).
func FromAnnotations(a map[string]string) (Overrides, error) {
	var o Overrides
	var err error
	if v, ok := a[AnnotationMode]; ok {
		o.Mode = strings.TrimSpace(v)
	}
	for _, f := range []struct {
		key string
		dst *[]uint16
	}{
		{AnnotationExcludeInboundPorts, &o.ExcludeInboundPorts},
		{AnnotationIncludeInboundPorts, &o.IncludeInboundPorts},
		{AnnotationExcludeOutboundPorts, &o.ExcludeOutboundPorts},
	} {
		if v, ok := a[f.key]; ok {
			if *f.dst, err = parsePorts(v); err != nil {
				return Overrides{}, fmt.Errorf("annotation %s=%q: %w", f.key, v, err)
			}
		}
	}
	if v, ok := a[AnnotationExcludeOutboundCIDRs]; ok {
		for _, s := range splitList(v) {
			o.ExcludeOutboundCIDRs = append(o.ExcludeOutboundCIDRs, s)
		}
	}
	if err := o.Validate(); err != nil {
		return Overrides{}, fmt.Errorf("annotations: %w", err)
	}
	return o, nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

func parsePorts(v string) ([]uint16, error) {
	var out []uint16
	for _, s := range splitList(v) {
		n, err := strconv.ParseUint(s, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a port (1-65535)", s)
		}
		out = append(out, uint16(n))
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out, nil
}

// Validate checks the overrides on their own, naming the field.
func (o Overrides) Validate() error {
	switch redirect.Mode(o.Mode) {
	case "", redirect.ModeRedirect, redirect.ModeTPROXY, redirect.ModeEBPF:
	default:
		return fmt.Errorf("mode: want redirect, tproxy or ebpf, got %q", o.Mode)
	}
	if len(o.IncludeInboundPorts) > 0 && len(o.ExcludeInboundPorts) > 0 {
		return fmt.Errorf("includeInboundPorts and excludeInboundPorts: set one or the other")
	}
	for _, c := range o.ExcludeOutboundCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			return fmt.Errorf("excludeOutboundCIDRs: %q is not a CIDR", c)
		}
	}
	for name, ps := range map[string][]uint16{"excludeInboundPorts": o.ExcludeInboundPorts, "includeInboundPorts": o.IncludeInboundPorts, "excludeOutboundPorts": o.ExcludeOutboundPorts} {
		for _, p := range ps {
			if p == 0 {
				return fmt.Errorf("%s: port 0", name)
			}
		}
	}
	return nil
}

// Apply returns spec with the overrides laid over it. Lists replace the
// node's lists rather than adding to them, so a pod can also narrow them.
func (o Overrides) Apply(spec redirect.Spec) redirect.Spec {
	if o.Mode != "" {
		spec.Mode = redirect.Mode(o.Mode)
	}
	if o.ExcludeInboundPorts != nil {
		spec.ExcludeInboundPorts = o.ExcludeInboundPorts
		spec.IncludeInboundPorts = nil
	}
	if o.IncludeInboundPorts != nil {
		spec.IncludeInboundPorts = o.IncludeInboundPorts
		spec.ExcludeInboundPorts = nil
	}
	if o.ExcludeOutboundPorts != nil {
		spec.ExcludeOutboundPorts = o.ExcludeOutboundPorts
	}
	if o.ExcludeOutboundCIDRs != nil {
		spec.ExcludeOutboundCIDRs = o.ExcludeOutboundCIDRs
	}
	return spec
}
