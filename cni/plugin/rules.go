package plugin

import (
	"time"

	"github.com/weir-mesh/weir/agent/api"
)

// Rules programs, verifies and removes weir's capture in a pod's network
// namespace: the rule code (netlink, nftables, iptables, eBPF) that weir-cni
// leaves out of the binary a container runtime starts at every pod ADD.
// cni/rules implements it with package redirect, and the weir-cni-rules
// helper is built with it; weir-cni runs Funcs(nil) and hands what needs it
// to that helper (delegate.go).
type Rules interface {
	// Apply programs r into the namespace at netns, all or nothing,
	// calling trace (never nil) with the time each step took.
	Apply(netns string, r api.Redirect, trace func(step string, took time.Duration)) error
	// Remove takes every weir rule out of the namespace; nothing there is
	// not an error.
	Remove(netns string) error
	// Verify fails, naming the first missing piece, unless r is in place
	// in full.
	Verify(netns string, r api.Redirect) error
	// Installed reports whether any weir rule is in the namespace.
	Installed(netns string) (bool, error)
}
