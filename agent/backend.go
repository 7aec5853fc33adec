package agent

import (
	"fmt"
	"log/slog"

	"github.com/weir-mesh/weir/redirect"
)

// chooseBackend resolves capture.backend once, at start, and logs one line
// saying what it chose and why. It returns whether the choice was the
// agent's (auto), which lets a pod's own netns overrule it (backendFor).
func chooseBackend(configured string, log *slog.Logger) (backend string, auto bool, err error) {
	if configured != "auto" {
		log.Info("capture backend chosen", "backend", configured, "why", "capture.backend is set")
		return configured, false, nil
	}
	b, why, err := redirect.ChooseBackend()
	if err != nil {
		return "", false, fmt.Errorf("choose a capture backend (set capture.backend to force one): %w", err)
	}
	if b == redirect.BackendNFTables {
		why += "; a pod whose netns holds iptables rules of other software is captured in their iptables flavour"
	}
	log.Info("capture backend chosen", "backend", b, "why", "auto: "+why)
	return b, true, nil
}

// backendFor is the backend a pod's rules go to: the node's, except that
// when auto chose native nftables, a pod whose netns already holds
// iptables rules of other software (an init container's, a sidecar's) is
// captured in their flavour, where the order of weir's rules and theirs is
// defined. Looking costs no program start unless legacy tables exist there.
func (a *Agent) backendFor(p *pod) string {
	if !a.autoBackend || a.backend != redirect.BackendNFTables {
		return a.backend
	}
	flavour, err := redirect.ForeignIPTables(p.netnsPath)
	if err != nil {
		a.log.Warn("cannot tell whether the pod uses iptables; capturing with nftables", "pod", p.meta.Namespace+"/"+p.meta.Name, "err", err)
		return a.backend
	}
	if flavour != "" {
		a.log.Debug("pod netns holds other iptables rules; capturing in the same flavour", "pod", p.meta.Namespace+"/"+p.meta.Name, "backend", flavour)
		return flavour
	}
	return a.backend
}

// rulesOnlyChange reports whether moving a captured pod from spec a to b
// changes rules only (backend, exclusions, marks, routes) and not its
// listeners (mode, ports, families): then Apply swaps the rules in place,
// the new ones in before the old ones go, and no connection is refused or
// escapes capture on the way.
func rulesOnlyChange(a, b redirect.Spec) bool {
	return a.Mode == b.Mode && a.OutboundPort == b.OutboundPort && a.InboundPort == b.InboundPort &&
		a.IPv4 == b.IPv4 && a.IPv6 == b.IPv6
}
