// Package redirect programs interception into one pod network namespace:
// iptables REDIRECT (and, later, TPROXY and eBPF) for IPv4 and IPv6. The
// plugin calls it at ADD/CHECK/DEL, the agent when it enrols or releases a
// running pod; both get the same rules from the same Spec.
//
// Every rule lives in chains named WEIR_* and carries a comment, so
// `iptables-save` inside a pod explains itself. Chain names are an upgrade
// contract: renaming one strands the rules of running pods.
package redirect

// Mode is the interception technique.
type Mode string

// Modes weir knows. Only ModeRedirect is implemented so far; the others are
// rejected by Validate until they exist.
const (
	ModeRedirect Mode = "redirect"
	ModeTPROXY   Mode = "tproxy"
	ModeEBPF     Mode = "ebpf"
)

// Defaults shared by the agent and the plugin.
const (
	DefaultOutboundPort uint16 = 15001
	DefaultInboundPort  uint16 = 15006
	// DefaultMark is the socket mark on every socket the agent makes; rules
	// let marked packets through so the agent's own traffic is never captured.
	DefaultMark uint32 = 0x5700
	DefaultMask uint32 = 0xff00
)

// Spec is what to program into one netns. The zero value of a port or mark
// means its default.
type Spec struct {
	Mode         Mode
	OutboundPort uint16
	InboundPort  uint16
	Mark         uint32
	Mask         uint32
	// IPv4 and IPv6 select the families to program.
	IPv4, IPv6 bool
	// ExcludeInboundPorts are pod ports whose inbound connections skip the agent.
	ExcludeInboundPorts []uint16
	// IncludeInboundPorts, when not empty, limits inbound capture to these ports.
	IncludeInboundPorts []uint16
	// ExcludeOutboundPorts are destination ports whose outbound connections skip the agent.
	ExcludeOutboundPorts []uint16
	// ExcludeOutboundCIDRs are destinations (CIDR) that skip the agent.
	ExcludeOutboundCIDRs []string
	// Backend is "legacy" or "nft": the iptables flavour the node uses. Empty
	// means detect it in the caller's network namespace.
	Backend string
}
