// Package api holds the wire types weir-cni and weir-agent exchange over the
// agent's unix socket. It is a leaf: both binaries import it and it imports
// nothing of weir, so the protocol cannot drift between them.
//
// The protocol is HTTP/1.1 with JSON bodies over a unix socket, so an operator
// can talk to the agent with `curl --unix-socket`. Every call is a POST of one
// request type to its path and answers 200 with the matching response type, or
// a non-200 status with an Error body. Order on the wire for one attachment:
//
//	add    (runtime ADD)     -> AddResponse; the plugin then applies the redirect, unless it
//	                            asked the agent to (PathAdd?apply=1) and the agent did (Applied)
//	check  (runtime CHECK)   -> CheckResponse; the plugin then verifies the rules
//	del    (runtime DEL)     -> DelResponse; the agent removes weir's rules from the attachment's
//	                            namespace, or from the one the DEL names if the guard lets it
//	                            (RulesRemoved), else the plugin does after it
//	gc     (runtime GC)      -> GCResponse; drops attachments the runtime no longer knows
//	status (runtime STATUS)  -> StatusResponse
//
// Version is bumped on any incompatible change; the agent rejects requests of
// another version with 400 so a half-upgraded node fails loudly, not subtly.
package api

// QueryApply is the query PathAdd takes when the plugin asks the agent to
// program the redirect itself before it answers (AddResponse.Applied says it
// did). A query, not a request field: an older agent decodes requests
// strictly and would refuse an unknown field, but ignores a query, answers
// as before, and the plugin then programs the rules itself.
const QueryApply = "apply=1"

// Version is the protocol version both sides must speak.
const Version = "v1"

// DefaultSocket is where the agent listens and weir-cni dials unless told otherwise.
const DefaultSocket = "/run/weir/agent.sock"

// Paths of the calls, relative to the socket's HTTP root.
const (
	PathAdd    = "/v1/cni/add"
	PathCheck  = "/v1/cni/check"
	PathDel    = "/v1/cni/del"
	PathGC     = "/v1/cni/gc"
	PathStatus = "/v1/status"
	// PathHandover is agent to agent: a successor that is ready asks the
	// running agent to stop accepting, drain and exit (takeover).
	PathHandover = "/v1/handover"
	// PathStandbyWatch is agent to agent: a hot standby holds a GET open on
	// the primary's socket and reads StandbyEvent lines from it; the stream
	// ending without a handover event tells it the primary is gone.
	PathStandbyWatch = "/v1/standby/watch"
	// PathStandbyStatus is served on the standby's own socket.
	PathStandbyStatus = "/v1/standby/status"
)

// StandbyEvent is one JSON line of the watch stream. Event is
//   - "hello" first, with the primary's Pid;
//   - "pods" after every change of the primary's pod set, once the state
//     files are written (the standby then re-reads them);
//   - "handover" when the primary hands over to a successor (an upgrade):
//     the standby then watches whoever answers on the socket, it does not
//     promote itself.
//
// A standby ignores events it does not know, so a primary may add some.
type StandbyEvent struct {
	Event      string `json:"event"`
	Pid        int    `json:"pid,omitempty"`
	Generation uint64 `json:"generation,omitempty"`
}

// StandbyStatus is what a standby reports about itself.
type StandbyStatus struct {
	Pid int `json:"pid"`
	// Ready: it mirrors the primary's pods (or, once promoted, it is the
	// primary and this socket is going away).
	Ready bool `json:"ready"`
	// Pods is how many captured pods it holds listeners in.
	Pods int `json:"pods"`
	// PrimaryPid is the primary it watches; 0 while it has none.
	PrimaryPid int `json:"primaryPid"`
}

// Pod names the Kubernetes pod an attachment belongs to, as the runtime passed
// it in CNI_ARGS. Outside Kubernetes the fields may be empty.
type Pod struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	UID       string `json:"uid,omitempty"`
}

// Attachment identifies one CNI attachment the way the runtime does, so that DEL
// and GC, which may arrive without a netns, still name the same thing as ADD.
type Attachment struct {
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
}

// AddRequest asks the agent to decide on a pod and, if it is captured, to open
// its listeners inside the pod's network namespace before any rule points at them.
type AddRequest struct {
	Version    string     `json:"version"`
	Attachment Attachment `json:"attachment"`
	Netns      string     `json:"netns"`
	Pod        Pod        `json:"pod"`
	// IPs are the pod's addresses from the primary plugin's result, in CIDR form.
	IPs []string `json:"ips"`
	// Mode is the conflist's mode, the node default; the agent may override it per pod.
	Mode string `json:"mode"`
}

// AddResponse carries the agent's decision. Redirect is nil when Captured is false.
type AddResponse struct {
	Captured bool      `json:"captured"`
	Reason   string    `json:"reason,omitempty"`
	Redirect *Redirect `json:"redirect,omitempty"`
	// Timings says where the agent spent this ADD: microseconds per phase
	// (the agent's docs name them), its total, and the CPU time the agent
	// used meanwhile ("cpu"). For diagnosis only; weir-cni logs it. An
	// older plugin ignores it.
	Timings map[string]int64 `json:"timings,omitempty"`
	// Applied: the agent programmed Redirect in the pod's namespace (it
	// was asked to with QueryApply), so the plugin has nothing left to do.
	Applied bool `json:"applied,omitempty"`
	// ApplyError, when set, says why the agent could not program the
	// redirect it was asked to: nothing of it is left in the namespace and
	// the agent released the pod's listeners; the ADD fails.
	ApplyError string `json:"applyError,omitempty"`
}

// Redirect is the interception the plugin must program inside the pod netns.
// Field meanings and defaults are those of redirect.Spec, which it converts to.
type Redirect struct {
	Mode                 string   `json:"mode"`
	OutboundPort         uint16   `json:"outboundPort"`
	InboundPort          uint16   `json:"inboundPort"`
	Mark                 uint32   `json:"mark"`
	Mask                 uint32   `json:"mask"`
	IPv4                 bool     `json:"ipv4"`
	IPv6                 bool     `json:"ipv6"`
	ExcludeInboundPorts  []uint16 `json:"excludeInboundPorts,omitempty"`
	IncludeInboundPorts  []uint16 `json:"includeInboundPorts,omitempty"`
	ExcludeOutboundPorts []uint16 `json:"excludeOutboundPorts,omitempty"`
	ExcludeOutboundCIDRs []string `json:"excludeOutboundCIDRs,omitempty"`
	Backend              string   `json:"backend,omitempty"`
	// TPROXY mode only: the mark that routes packets to the local stack, and
	// the policy routing table and rule preference that do it.
	TPROXYMark   uint32 `json:"tproxyMark,omitempty"`
	TPROXYMask   uint32 `json:"tproxyMask,omitempty"`
	RouteTable   uint32 `json:"routeTable,omitempty"`
	RulePriority uint32 `json:"rulePriority,omitempty"`
	// PinPath (mode ebpf) is where the agent pinned its eBPF capture.
	PinPath string `json:"pinPath,omitempty"`
}

// CheckRequest asks whether the agent still serves an attachment.
type CheckRequest struct {
	Version    string     `json:"version"`
	Attachment Attachment `json:"attachment"`
	Netns      string     `json:"netns"`
	Pod        Pod        `json:"pod"`
}

// CheckResponse tells the plugin what it must find in the netns. Listening is
// false when the agent has no listener for a captured pod: CHECK then fails.
type CheckResponse struct {
	Captured  bool      `json:"captured"`
	Listening bool      `json:"listening"`
	Redirect  *Redirect `json:"redirect,omitempty"`
}

// DelRequest tells the agent an attachment is gone: it removes the rules, then
// closes the listeners.
type DelRequest struct {
	Version    string     `json:"version"`
	Attachment Attachment `json:"attachment"`
	Netns      string     `json:"netns"`
	Pod        Pod        `json:"pod"`
}

// DelResponse reports whether the agent knew the attachment (for logs), and
// whether it took the attachment's rules out of the namespace the DEL names
// itself (RulesRemoved): then the plugin need not enter it. An agent that
// does not say so (an older one) leaves that to the plugin.
//
// Refused, when set, says why the namespace the DEL names must not be
// entered: it is the node's, no network namespace, or the capture of another
// attachment (a DEL for an unknown container naming a live pod's namespace
// would strip that pod's rules).
type DelResponse struct {
	Known        bool   `json:"known"`
	RulesRemoved bool   `json:"rulesRemoved,omitempty"`
	Refused      string `json:"refused,omitempty"`
}

// GCRequest lists every attachment the runtime still knows; the agent releases
// the others (CNI 1.1 GC, cni.dev/valid-attachments).
type GCRequest struct {
	Version string       `json:"version"`
	Valid   []Attachment `json:"valid"`
}

// GCResponse counts what the agent released.
type GCResponse struct {
	Released int `json:"released"`
}

// StatusResponse is the agent's readiness as the plugin's STATUS reports it.
type StatusResponse struct {
	Ready bool   `json:"ready"`
	Pods  int    `json:"pods"`
	Error string `json:"error,omitempty"`
}

// Error is the body of every non-200 answer.
type Error struct {
	Error string `json:"error"`
}
