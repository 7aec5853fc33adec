// Package redirect programs interception into one pod network namespace:
// REDIRECT or TPROXY (eBPF later) for IPv4 and IPv6, in one of three
// backends: iptables (legacy or nft flavour) or native nftables. The plugin
// calls it at ADD/CHECK/DEL, the agent when it enrols or releases a running
// pod; both get the same rules from the same Spec.
//
// In iptables every rule lives in chains named WEIR_* and carries a
// comment, so `iptables-save` inside a pod explains itself. In nftables
// every rule lives in `table inet weir` (both families in one table) and
// carries a comment, so `nft list ruleset` does; the table is written in
// one netlink transaction and no program is started. Chain and table names
// are an upgrade contract: renaming one strands the rules of running pods.
// Apply empties every backend it does not use, and Remove, Verify and
// Installed look at all three, so a pod moves between backends cleanly.
//
// Apply, Remove, Verify and Installed take a path to a network namespace
// (/var/run/netns/…, /proc/<pid>/ns/net, or /proc/self/fd/N for a netns fd
// the caller holds) and do their work on a thread switched into it. Rules
// are read with iptables-save and written with one iptables-restore
// --noflush per family, so each family changes in one step; IPv4 and IPv6
// are applied both or neither. Writers of the same namespace (the plugin and
// the agent) serialise on a per-namespace lock, so a repeated or concurrent
// Apply never stacks jumps. Backends a namespace does not use are checked
// without starting a program (the kernel lists the legacy tables that
// exist, and iptables-nft's chains are visible over netlink), so the
// nftables backend starts none at all.
//
// ModeRedirect uses nat REDIRECT (the agent reads SO_ORIGINAL_DST).
// ModeTPROXY uses mangle TPROXY plus a fwmark policy rule and a local
// default route (netlink, tagged proto 87), rewrites no address, and needs
// IP_TRANSPARENT listeners bound to the wildcard address; rules.go explains
// every rule of both.
package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
)

// Mode is the interception technique.
type Mode string

// Modes weir knows. ModeEBPF programs no rule at all: it enrols the netns in
// the eBPF capture the agent loaded (ebpf.go).
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

	// DefaultTPROXYMark is the packet mark (under DefaultTPROXYMask) that
	// ModeTPROXY puts on packets it must deliver to the agent on this host;
	// the policy rule sends marked packets to DefaultRouteTable. It shares
	// the bypass mark's byte with a different value, so one byte of the mark
	// is weir's and Istio's 1337 (0x539) is left alone.
	DefaultTPROXYMark uint32 = 0x5800
	DefaultTPROXYMask uint32 = 0xff00
	// DefaultRouteTable holds ModeTPROXY's `local default dev lo` route (Istio
	// uses 133).
	DefaultRouteTable uint32 = 157
	// DefaultRulePriority is the preference of ModeTPROXY's fwmark policy
	// rule: early, well before the main table's 32766.
	DefaultRulePriority uint32 = 157
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
	// Backend is where the rules go: "legacy" or "nft" (an iptables
	// flavour), or "nftables" (weir's own nftables table, over netlink).
	// Empty means the iptables flavour the caller's network namespace uses
	// (DetectBackend); ChooseBackend picks among all three.
	Backend string

	// TPROXYMark and TPROXYMask (ModeTPROXY only) mark packets the policy
	// rule routes to the local stack. They must differ from Mark/Mask in the
	// bits both masks cover, so neither mark can pass for the other.
	TPROXYMark uint32
	TPROXYMask uint32
	// RouteTable (ModeTPROXY only) is the routing table holding
	// `local default dev lo`; RulePriority is the preference of the
	// `fwmark TPROXYMark/TPROXYMask lookup RouteTable` rule, below the main
	// table's 32766.
	RouteTable   uint32
	RulePriority uint32

	// PinPath (ModeEBPF only) is the bpffs directory where the agent pinned
	// the capture programs and maps; empty means capture.DefaultPinPath.
	PinPath string
}

// Backends weir's rules can live in: the two iptables flavours, each
// driven through its restore program, and native nftables (nftables.go).
const (
	BackendLegacy   = "legacy"
	BackendNFT      = "nft"
	BackendNFTables = "nftables"
)

// WithDefaults returns a copy of s with every zero port, mark and mask
// replaced by its default and an empty Mode read as ModeRedirect. The lists
// are copied, so the result shares no memory with s.
func (s Spec) WithDefaults() Spec {
	if s.Mode == "" {
		s.Mode = ModeRedirect
	}
	if s.OutboundPort == 0 {
		s.OutboundPort = DefaultOutboundPort
	}
	if s.InboundPort == 0 {
		s.InboundPort = DefaultInboundPort
	}
	if s.Mark == 0 {
		s.Mark = DefaultMark
	}
	if s.Mask == 0 {
		s.Mask = DefaultMask
	}
	if s.TPROXYMark == 0 {
		s.TPROXYMark = DefaultTPROXYMark
	}
	if s.TPROXYMask == 0 {
		s.TPROXYMask = DefaultTPROXYMask
	}
	if s.RouteTable == 0 {
		s.RouteTable = DefaultRouteTable
	}
	if s.RulePriority == 0 {
		s.RulePriority = DefaultRulePriority
	}
	s.ExcludeInboundPorts = slices.Clone(s.ExcludeInboundPorts)
	s.IncludeInboundPorts = slices.Clone(s.IncludeInboundPorts)
	s.ExcludeOutboundPorts = slices.Clone(s.ExcludeOutboundPorts)
	s.ExcludeOutboundCIDRs = slices.Clone(s.ExcludeOutboundCIDRs)
	return s
}

// Validate reports the first thing wrong with s, exactly as given: call it on
// s.WithDefaults() when zero values should mean defaults (Apply and Verify
// do). A spec that passes can be rendered into rules for every family it
// selects.
func (s Spec) Validate() error {
	switch s.Mode {
	case ModeRedirect, ModeTPROXY, ModeEBPF:
	case "":
		return errors.New("mode is empty (WithDefaults sets it)")
	default:
		return fmt.Errorf("unknown mode %q (want %q, %q or %q)", s.Mode, ModeRedirect, ModeTPROXY, ModeEBPF)
	}
	if s.OutboundPort == 0 {
		return errors.New("outbound port is 0")
	}
	if s.InboundPort == 0 {
		return errors.New("inbound port is 0")
	}
	if s.OutboundPort == s.InboundPort {
		return fmt.Errorf("outbound and inbound ports are both %d: the agent needs one listener for each direction", s.OutboundPort)
	}
	if err := validateMark("mark", s.Mark, s.Mask); err != nil {
		return err
	}
	if s.Mode == ModeTPROXY {
		if err := s.validateTPROXY(); err != nil {
			return err
		}
	}
	if !s.IPv4 && !s.IPv6 {
		return errors.New("no IP family selected (IPv4 and IPv6 are both false)")
	}
	if len(s.IncludeInboundPorts) > 0 && len(s.ExcludeInboundPorts) > 0 {
		return errors.New("includeInboundPorts and excludeInboundPorts are both set: use one")
	}
	for _, l := range []struct {
		name  string
		ports []uint16
	}{
		{"excludeInboundPorts", s.ExcludeInboundPorts},
		{"includeInboundPorts", s.IncludeInboundPorts},
		{"excludeOutboundPorts", s.ExcludeOutboundPorts},
	} {
		if slices.Contains(l.ports, 0) {
			return fmt.Errorf("%s holds port 0", l.name)
		}
	}
	for _, c := range s.ExcludeOutboundCIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			return fmt.Errorf("excludeOutboundCIDRs: %w", err)
		}
	}
	switch s.Backend {
	case "", BackendLegacy, BackendNFT, BackendNFTables:
	default:
		return fmt.Errorf("unknown backend %q (want %q, %q, %q or empty to detect)", s.Backend, BackendLegacy, BackendNFT, BackendNFTables)
	}
	return nil
}

// validateMark checks a mark/mask pair as the kernel's mark match reads it:
// a mark with bits outside its mask could never match.
func validateMark(what string, mark, mask uint32) error {
	if mask == 0 {
		return fmt.Errorf("%s mask is 0", what)
	}
	if mark == 0 {
		return fmt.Errorf("%s is 0: a zero mark cannot tell marked packets from unmarked ones", what)
	}
	if mark&^mask != 0 {
		return fmt.Errorf("%s %#x has bits outside its mask %#x", what, mark, mask)
	}
	return nil
}

// validateTPROXY checks the fields only ModeTPROXY reads.
func (s Spec) validateTPROXY() error {
	if err := validateMark("tproxy mark", s.TPROXYMark, s.TPROXYMask); err != nil {
		return err
	}
	// A packet carrying one mark must not match the other's test.
	if s.TPROXYMark&s.Mask == s.Mark || s.Mark&s.TPROXYMask == s.TPROXYMark {
		return fmt.Errorf("tproxy mark %#x/%#x and bypass mark %#x/%#x cannot be told apart", s.TPROXYMark, s.TPROXYMask, s.Mark, s.Mask)
	}
	switch s.RouteTable {
	case 0, unix.RT_TABLE_COMPAT, unix.RT_TABLE_DEFAULT, unix.RT_TABLE_MAIN, unix.RT_TABLE_LOCAL:
		return fmt.Errorf("route table %d is reserved", s.RouteTable)
	}
	if s.RulePriority == 0 || s.RulePriority >= 32766 {
		return fmt.Errorf("rule priority %d must be between 1 and 32765, before the main table", s.RulePriority)
	}
	return nil
}
