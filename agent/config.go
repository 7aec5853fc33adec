// Package agent is weir's node daemon: it serves weir-cni over a unix socket,
// decides which pods are captured, holds each captured pod's network namespace
// and the capture listeners inside it, feeds the proxy engine its routes, and
// serves metrics and health on the admin address.
package agent

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/agent/podconfig"
	"github.com/weir-mesh/weir/proxy"
	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/http/h2"
	"github.com/weir-mesh/weir/proxy/route"
	"github.com/weir-mesh/weir/redirect"
)

// Config is the agent's configuration file. Every field has a default that
// works; Load rejects unknown keys and bad values, naming the key.
type Config struct {
	// Socket is the unix socket weir-cni talks to (root-only).
	Socket string `json:"socket"`
	// Admin is the address of /metrics, /healthz, /readyz and /config_dump.
	Admin string `json:"admin"`
	// ProbeSocket, when set, is a unix socket serving /healthz and /readyz
	// for this process alone, for `weir-agent --probe` as an exec probe.
	// During a takeover two agents share the admin address (SO_REUSEPORT),
	// so an HTTP probe there reaches either one: a new agent's pod could be
	// declared ready by its predecessor's answer. The DaemonSet points it
	// into a per-pod emptyDir. Empty (the default): no probe socket.
	ProbeSocket string `json:"probeSocket,omitempty"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"logLevel"`
	// ConnectTimeout bounds upstream connects that go through no cluster.
	ConnectTimeout Duration `json:"connectTimeout"`
	// DrainTimeout bounds how long SIGTERM waits for open connections.
	DrainTimeout Duration `json:"drainTimeout"`
	// SweepInterval is how often the agent drops pods whose netns is gone
	// when no DEL arrived.
	SweepInterval Duration `json:"sweepInterval"`
	// Capture says which pods are captured and how.
	Capture Capture `json:"capture"`
	// Services are the virtual addresses the agent balances (static mode).
	Services []Service `json:"services"`
	// UnknownDestinations is passthrough (default) or refuse: what happens
	// to outbound connections that match no service.
	UnknownDestinations string `json:"unknownDestinations"`
	// Zone is this node's topology zone, for clusters with locality
	// preference (endpoints labelled zone=<this> first).
	Zone string `json:"zone"`
	// StateDir holds the agent's state across restarts and the enablement
	// file weir-cni reads; default: the socket's directory. It must be on
	// tmpfs (such as /run): after a reboot no pod netns survives.
	StateDir string `json:"stateDir"`
	// ReconcileInterval is how often every pod is checked against the
	// policy and its rules verified (repairing damage).
	ReconcileInterval Duration `json:"reconcileInterval"`
	// NetnsDirs are searched for the network namespace of a pod the agent
	// never saw an ADD for (then /proc).
	NetnsDirs []string `json:"netnsDirs"`
	// Kubernetes turns on the cluster sources.
	Kubernetes Kubernetes `json:"kubernetes"`
	// Sniffing configures protocol detection.
	Sniffing Sniffing `json:"sniffing"`
	// XDS takes services from an xDS control plane (agent/xds.go).
	XDS XDS `json:"xds"`
	// AccessLog writes one JSON line per L7 request.
	AccessLog AccessLog `json:"accessLog"`
	// HTTP2 tunes the HTTP/2 and gRPC half of the L7 proxy.
	HTTP2 HTTP2 `json:"http2"`
	// Tracing propagates W3C trace context with a span per L7 request and
	// exports sampled spans over OTLP/gRPC.
	Tracing Tracing `json:"tracing"`
	// Standby runs this process as the hot standby of the agent on Socket
	// (agent/standby.go); `standby: true` is short for enabled.
	Standby Standby `json:"standby"`
	// Runtime tunes the Go runtime under the agent.
	Runtime Runtime `json:"runtime"`
}

// Runtime tunes the Go runtime the agent runs on.
type Runtime struct {
	// Procs sets GOMAXPROCS, the number of threads running Go code at once.
	// "max" (the default) keeps the runtime's default: every CPU the
	// cgroup allows, followed as the limit changes. "auto" moves it with
	// the load between MinProcs and that default (agent/procs): fewer Ps
	// cost less per request while the agent is lightly loaded, and
	// goroutines waiting for a P raise it at once. A number fixes it.
	Procs Procs `json:"procs"`
	// MinProcs is auto's floor (default 1; at most the runtime's default).
	MinProcs int `json:"minProcs"`
	// Loops is how many event loops relay L4 connections (proxy/evloop):
	// "auto" (the default) is one per P the agent runs with, "off" (or
	// 0) relays each connection on goroutines, a number fixes it. A busy
	// loop is a thread that keeps its P, and GOMAXPROCS grows by one for
	// each busy loop; a quiet loop gives its P back (it parks), and under
	// procs: max GOMAXPROCS is then the runtime's default again, following
	// the cgroup's limit. auto is off under procs: auto (the controller
	// would move the Ps the loops hold), and a number is refused there; off
	// with capture.ebpf.splice.
	// Changed by a restart (docs/benchmarks.md, "L4 cost, seventh pass").
	Loops Loops `json:"loops"`
}

// Loops is runtime.loops: auto, off or a number. YAML reads a bare off as
// false, so false means off too.
type Loops string

// The named values of runtime.loops: LoopsAuto (the default) and loopsOff.
const (
	loopsOff  Loops = "off"
	LoopsAuto Loops = "auto"
)

// UnmarshalJSON takes a number and false as well as a string.
func (l *Loops) UnmarshalJSON(b []byte) error {
	if string(b) == "false" {
		*l = loopsOff
		return nil
	}
	var p Procs
	if err := p.UnmarshalJSON(b); err != nil {
		return err
	}
	*l = Loops(p)
	return nil
}

// LoopCount is how many event loops runtime.loops asks for, given the
// runtime's default P count and whether eBPF splice is on.
func (r Runtime) LoopCount(procs int, splice bool) int {
	switch r.Loops {
	case loopsOff, "":
		return 0
	case LoopsAuto:
		if r.Procs == ProcsAuto || splice {
			return 0
		}
		return max(1, procs)
	}
	n, _ := Procs(r.Loops).Fixed()
	return n
}

// Procs is runtime.procs: auto, max or a positive number (`procs: 2` and
// `procs: "2"` both work).
type Procs string

// The named values of runtime.procs.
const (
	ProcsAuto Procs = "auto"
	ProcsMax  Procs = "max"
)

// UnmarshalJSON takes a number as well as a string.
func (p *Procs) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*p = Procs(s)
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return badValue(b, *p)
	}
	*p = Procs(n.String())
	return nil
}

// Fixed is the number a numeric runtime.procs names.
func (p Procs) Fixed() (int, bool) {
	n, err := strconv.Atoi(string(p))
	return n, err == nil
}

func (r Runtime) validate() error {
	switch r.Procs {
	case ProcsAuto, ProcsMax:
	default:
		if n, ok := r.Procs.Fixed(); !ok || n < 1 || n > 4096 {
			return fmt.Errorf("runtime.procs: want auto, max or a number from 1 to 4096, got %q", string(r.Procs))
		}
	}
	switch r.Loops {
	case LoopsAuto, loopsOff, "":
	default:
		n, ok := Procs(r.Loops).Fixed()
		if !ok || n < 0 || n > 256 {
			return fmt.Errorf("runtime.loops: want auto, off or a number from 0 to 256, got %q", string(r.Loops))
		}
		if n > 0 && r.Procs == ProcsAuto {
			// The controller sets GOMAXPROCS from its own count and would
			// take back the Ps busy loops hold.
			return fmt.Errorf("runtime.loops: %d loops need runtime.procs max or a number, not auto (auto's controller would take the Ps busy loops hold); use loops: auto, which is off under procs: auto", n)
		}
	}
	if r.MinProcs < 1 || r.MinProcs > 4096 {
		return fmt.Errorf("runtime.minProcs: want 1 to 4096, got %d", r.MinProcs)
	}
	return nil
}

// HTTP2 tunes the HTTP/2 (h2c) and gRPC proxy.
type HTTP2 struct {
	// Engine is "frames" (default): weir's frame-level proxy, or "xnet":
	// x/net/http2's server and transport, the first implementation, kept
	// as a fallback while the frame engine is new (it costs several times
	// the CPU per request).
	Engine string `json:"engine"`
}

// Tracing configures the agent's spans. Off by default: then traceparent
// goes upstream exactly as the client sent it.
type Tracing struct {
	Enabled bool `json:"enabled"`
	// Endpoint is the OTLP/gRPC collector, host:port (plaintext).
	Endpoint string `json:"endpoint"`
	// SampleRatio is the share (0..1) of new traces sampled; a request
	// carrying a traceparent follows its sampled flag.
	SampleRatio float64 `json:"sampleRatio"`
	// BatchTimeout is the longest a finished span waits to be exported.
	BatchTimeout Duration `json:"batchTimeout"`
}

// Standby configures the hot standby: a second agent process that holds
// listeners in every captured pod behind the primary's, so the kernel hands
// it new connections the moment the primary dies, and that then takes the
// primary's place. The primary and its standby may share one config file:
// the standby is started with --standby.
type Standby struct {
	// Enabled makes this process the standby of the agent on socket.
	Enabled bool `json:"enabled"`
	// Respawn, once this standby has been promoted, starts a new standby
	// (this binary with the same arguments), so a second crash is covered
	// too. Leave it off where a supervisor restarts the standby (the
	// DaemonSet's second container).
	Respawn bool `json:"respawn"`
	// Socket is the standby's own unix socket (status; it also keeps two
	// standbys of one agent from running); default: agent-standby.sock
	// beside socket.
	Socket string `json:"socket"`
	// Admin is the standby's admin address until it is promoted (then it
	// serves on admin); default: admin's port + 1.
	Admin string `json:"admin"`
}

// UnmarshalJSON takes `standby: true|false` as well as the object.
func (s *Standby) UnmarshalJSON(b []byte) error {
	if t := bytes.TrimSpace(b); bytes.Equal(t, []byte("true")) || bytes.Equal(t, []byte("false")) {
		*s = Standby{Enabled: t[0] == 't'}
		return nil
	}
	type plain Standby
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p plain
	if err := dec.Decode(&p); err != nil {
		return fmt.Errorf("standby: want true, false or {enabled, respawn, socket, admin}: %w", err)
	}
	*s = Standby(p)
	return nil
}

func (s Standby) validate(c Config) error {
	if !filepath.IsAbs(s.Socket) {
		return fmt.Errorf("standby.socket: must be an absolute path, got %q", s.Socket)
	}
	if s.Socket == c.Socket {
		return fmt.Errorf("standby.socket: must differ from socket (%s): the standby takes that path only when promoted", c.Socket)
	}
	ap, err := netip.ParseAddrPort(s.Admin)
	if err != nil {
		return fmt.Errorf("standby.admin: want ip:port, got %q: %w", s.Admin, err)
	}
	if admin, _ := netip.ParseAddrPort(c.Admin); ap == admin {
		return fmt.Errorf("standby.admin: must differ from admin (%s), or health probes could reach either process", c.Admin)
	}
	return nil
}

// withStandbyDefaults derives the standby's socket and admin address from
// the primary's, so both run side by side with one config file.
func (c *Config) withStandbyDefaults() {
	if c.Standby.Socket == "" {
		c.Standby.Socket = filepath.Join(filepath.Dir(c.Socket), "agent-standby.sock")
	}
	if c.Standby.Admin == "" {
		if ap, err := netip.ParseAddrPort(c.Admin); err == nil && ap.Port() < 65535 {
			c.Standby.Admin = netip.AddrPortFrom(ap.Addr(), ap.Port()+1).String()
		}
	}
}

// AccessLog configures the L7 access log: one slog JSON line per request
// that failed (5xx, local reply, upstream failure, gRPC non-OK) and per
// sampled request of the rest.
type AccessLog struct {
	Enabled bool `json:"enabled"`
	// SampleRate is the share (0..1) of requests that went well logged.
	SampleRate float64 `json:"sampleRate"`
	// Path is "-" (the agent's stderr) or an absolute file, opened to
	// append.
	Path string `json:"path"`
}

// Kubernetes configures the agent's view of the cluster: enablement from
// namespace labels and pod annotations, services from Services and
// EndpointSlices (replacing services:), and the node's readiness taint.
type Kubernetes struct {
	Enabled bool `json:"enabled"`
	// Kubeconfig is a kubeconfig file; empty means in-cluster credentials.
	Kubeconfig string `json:"kubeconfig"`
	// NodeName is this node; empty means the NODE_NAME environment variable.
	NodeName string `json:"nodeName"`
	// Namespace is the agent's own namespace, never captured; empty means
	// the POD_NAMESPACE environment variable, else weir-system.
	Namespace string `json:"namespace"`
	// GatewayAPI routes HTTP and gRPC by the Gateway API HTTPRoutes and
	// GRPCRoutes whose parentRef is a Service (GAMMA), once their CRDs
	// are installed, and writes their status (one agent at a time, by
	// lease). Default true; false ignores those objects.
	GatewayAPI bool `json:"gatewayAPI"`
}

// Capture is the static enrolment policy and the interception settings.
type Capture struct {
	// Namespaces whose pods are captured (K8S_POD_NAMESPACE).
	Namespaces []string `json:"namespaces"`
	// Mode is redirect, tproxy or ebpf; empty (default) means the mode in
	// weir-cni's conflist entry, the node's default.
	Mode string `json:"mode"`
	// EBPF says where eBPF capture pins and attaches.
	EBPF EBPFSettings `json:"ebpf"`
	// EBPFFallback is the mode a pod gets when it asks for ebpf and the
	// node lacks what eBPF capture needs: redirect, tproxy, or none
	// (default: such pods are not captured and ADD fails, naming what is
	// missing; with capture.mode ebpf the agent does not start).
	EBPFFallback string `json:"ebpfFallback"`
	OutboundPort uint16 `json:"outboundPort"`
	InboundPort  uint16 `json:"inboundPort"`
	// Mark and Mask: the socket mark on every agent-made socket ("0x5700").
	Mark Hex `json:"mark"`
	Mask Hex `json:"mask"`
	// Backend is auto (default), legacy or nft (an iptables flavour), or
	// nftables (weir's own table over netlink).
	Backend              string   `json:"backend"`
	ExcludeInboundPorts  []uint16 `json:"excludeInboundPorts"`
	IncludeInboundPorts  []uint16 `json:"includeInboundPorts"`
	ExcludeOutboundPorts []uint16 `json:"excludeOutboundPorts"`
	ExcludeOutboundCIDRs []string `json:"excludeOutboundCIDRs"`
	// TPROXY mode: mark (under mask) that routes captured packets to the
	// local stack, and the routing table and rule preference doing it.
	TPROXYMark   Hex    `json:"tproxyMark"`
	TPROXYMask   Hex    `json:"tproxyMask"`
	RouteTable   uint32 `json:"routeTable"`
	RulePriority uint32 `json:"rulePriority"`
	// Overrides change capture for one pod (name set) or every pod of a
	// namespace (name empty); the most specific entry wins. Same model and
	// validation as the weir.dev/* pod annotations.
	Overrides []PodOverride `json:"overrides"`
	// TCPTimestamps is what REDIRECT capture does with a pod's
	// net.ipv4.tcp_timestamps. REDIRECT gives every outbound connection
	// the same local address in the pod (the agent's listener), while the
	// app's TCP stamps each destination address with its own random clock
	// offset; when the agent's side of an earlier connection is in
	// TIME_WAIT, a new SYN from the same source port to another destination
	// carries an "older" timestamp, is dropped by PAWS, and connects a
	// second or more later. "monotonic" (default) sets the sysctl from 1 to
	// 2 (timestamps without random offsets) while the pod is captured in
	// REDIRECT mode and back to 1 when the agent releases it; "keep" leaves
	// it alone. docs/design.md, "REDIRECT and TIME_WAIT".
	TCPTimestamps string `json:"tcpTimestamps"`
}

// EBPFSettings place eBPF capture on the node.
type EBPFSettings struct {
	// PinPath is weir's directory on a bpffs (default /sys/fs/bpf/weir,
	// mounting a bpffs on /sys/fs/bpf if none is there).
	PinPath string `json:"pinPath"`
	// Cgroup is the cgroup v2 directory the socket programs attach to
	// (default: the root of the node's cgroup v2 hierarchy, mounted at
	// /run/weir/cgroup2 on a host that has none): every pod process must be
	// below it.
	Cgroup string `json:"cgroup"`
	// Accelerate (default true) puts the local pairs the agent takes part
	// in (a captured app and the agent's outbound listener; the agent's
	// inbound upstream connection and the app) in a sockmap whose sk_msg
	// program hands the bytes straight to the peer socket, skipping TCP/IP
	// on the pod's loopback, while the peer keeps up (docs/design.md,
	// "Acceleration of local pairs"). It saves CPU on keep-alive and
	// request/response traffic and costs some on bulk transfers and
	// connection-per-request (the relay cannot splice an accelerated
	// pair): false turns it off. A kernel without what it needs
	// (capture.AccelSupport) runs without it, with a warning.
	Accelerate *bool `json:"accelerate"`
	// Splice (default false) splices the two sockets of every L4 relay
	// whose sockets are not accelerated in the kernel, with an sk_skb
	// verdict (bpf/splice): relayed bytes go from one socket's receive
	// path to the other's send path without waking the agent, until the
	// peer falls behind, when that direction goes back to the agent for
	// good. It works in every capture mode (it needs the kernel's
	// features, not eBPF capture); a kernel without them (splice.Support)
	// runs without, with a warning. Spliced connections are drained, not
	// handed over, at a takeover.
	Splice bool `json:"splice"`
	// AccelerateNode (default true; needs Accelerate) also puts the pair of
	// the agent's upstream socket and its server in the sockhash when the
	// server is a socket in another network namespace of this node (a pod
	// on the same node, captured or not): the bytes skip the second TCP/IP
	// traversal, across the veths and the bridge, as well (docs/design.md,
	// "Acceleration of same-node pairs"). Each SYN a listener on the node
	// takes costs one map update while it is on. false turns it off.
	AccelerateNode *bool `json:"accelerateNode"`
}

// accelerateNode is AccelerateNode with its default.
func (e EBPFSettings) accelerateNode() bool { return e.AccelerateNode == nil || *e.AccelerateNode }

// accelerate is Accelerate with its default.
func (e EBPFSettings) accelerate() bool { return e.Accelerate == nil || *e.Accelerate }

// PodOverride is a static per-pod (or per-namespace) capture override.
type PodOverride struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	podconfig.Overrides
}

// Service is one virtual address and its endpoints.
type Service struct {
	Name      string   `json:"name"`
	Address   string   `json:"address"`
	Addresses []string `json:"addresses"`
	// Endpoints are "ip:port" strings or objects with address, weight,
	// labels and health.
	Endpoints []Endpoint `json:"endpoints"`
	// Cluster holds balancing and resilience settings (balancer, retry,
	// outlier, circuitBreaker, …); every field has a default.
	Cluster cluster.Config `json:"cluster"`
	// Protocol is what the service speaks: auto (default: sniff each
	// connection), tcp, tls, http, http2, grpc, redis, dubbo, bolt or
	// rocketmq. A
	// declared protocol skips the sniffing deadline.
	Protocol string `json:"protocol"`
	// UpstreamProtocol is what the endpoints speak when it differs from
	// the client: auto (default: the client's protocol) or http2 (HTTP/1.1
	// clients' requests go upstream over h2c, for endpoints that serve
	// only HTTP/2).
	UpstreamProtocol string `json:"upstreamProtocol"`
	// HTTPRoutes route requests by host, path, method, headers and query
	// (Gateway API HTTPRoute shape); none sends every request to this
	// service's endpoints, balanced per request.
	HTTPRoutes []route.HTTPRoute `json:"httpRoutes"`
	// TLSRoutes route TLS connections by SNI to other services; none
	// sends them to this service's endpoints.
	TLSRoutes []route.TLSRoute `json:"tlsRoutes"`
	// RateLimit caps the service's L7 requests on this node (token
	// bucket); none by default.
	RateLimit *route.LocalRateLimit `json:"rateLimit"`
	// RPCRoutes route the requests of a dubbo, bolt or rocketmq service by
	// service, group, version, method and attachments/headers (RocketMQ:
	// topic, group, request code, brokerName) to other services;
	// none balances every request over this service's endpoints.
	RPCRoutes []route.RPCRoute `json:"rpcRoutes"`
	// RPC is the per-request timeout and retries of the service's RPC
	// requests ({timeout, retry: {attempts, on}}) that no rpcRoute gives
	// its own; none: no timeout, only connect failures retried.
	RPC *route.RPCPolicy `json:"rpc"`
	// Dataplane is agent (default: connections to the service's addresses
	// go through the agent) or kernel: in eBPF capture, an enrolled pod's
	// connect to an address of this service is sent straight to one of its
	// endpoints by the connect program, with no proxy in the path
	// (README, "Kernel-balanced services"). It trades per-connection
	// metrics, retries, outlier detection and L7 for one handshake less;
	// Validate refuses every setting the kernel cannot honour.
	Dataplane string `json:"dataplane"`
}

// Service dataplanes (Service.Dataplane).
const (
	DataplaneAgent  = "agent"
	DataplaneKernel = "kernel"
)

// validateKernel refuses, naming the field, what a kernel-balanced
// service cannot do (route.Service.KernelError says what); the capture
// mode must be ebpf, whose connect program does the balancing.
func (s Service) validateKernel(c Config) error {
	if redirect.Mode(c.Capture.Mode) != redirect.ModeEBPF {
		return fmt.Errorf("dataplane: kernel needs capture.mode ebpf (the connect program balances), got capture.mode %q", c.Capture.Mode)
	}
	if s.Address == "" && len(s.Addresses) == 0 {
		return fmt.Errorf("address: dataplane kernel needs an address to balance")
	}
	proto, _ := route.ParseProtocol(s.Protocol)
	up, _ := route.ParseUpstreamProtocol(s.UpstreamProtocol)
	rs := route.Service{
		Name: s.Name, Cluster: s.Cluster, Protocol: proto, UpstreamProtocol: up,
		HTTPRoutes: s.HTTPRoutes, TLSRoutes: s.TLSRoutes, RPCRoutes: s.RPCRoutes, RPC: s.RPC, RateLimit: s.RateLimit,
	}
	return rs.KernelError()
}

// Sniffing configures protocol detection on connections to services whose
// protocol is auto.
type Sniffing struct {
	// Timeout is how long the agent waits for a silent client's first
	// bytes before relaying the connection at L4; 0 never sniffs.
	Timeout Duration `json:"timeout"`
	// ServerFirstPorts are destination ports of protocols whose server
	// speaks first (SMTP, MySQL, …): connections to them are relayed at
	// L4 at once, never delayed.
	ServerFirstPorts []uint16 `json:"serverFirstPorts"`
	// PortTimeouts override Timeout per destination port ("5432": "0s").
	PortTimeouts map[string]Duration `json:"portTimeouts"`
}

// DefaultServerFirstPorts are the well-known ports of server-first
// protocols: FTP, SSH, SMTP, POP3, IMAP, SMTP submission, MySQL, NATS.
var DefaultServerFirstPorts = []uint16{21, 22, 25, 110, 143, 587, 3306, 4222}

// Endpoint is one upstream of a service.
type Endpoint struct {
	Address string            `json:"address"`
	Weight  uint32            `json:"weight,omitempty"`
	Labels  map[string]string `json:"labels,omitempty"`
	Health  cluster.Health    `json:"health,omitempty"`
}

// UnmarshalJSON accepts a plain "ip:port" string or an object.
func (e *Endpoint) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*e = Endpoint{Address: s}
		return nil
	}
	type plain Endpoint
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p plain
	if err := dec.Decode(&p); err != nil {
		return err
	}
	*e = Endpoint(p)
	return nil
}

// Duration is a time.Duration written as "5s" in the file.
type Duration time.Duration

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return badValue(b, Duration(0))
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return badValue(b, Duration(0))
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// Hex is a uint32 written as "0x5700" (or a plain number) in the file.
type Hex uint32

// UnmarshalJSON accepts "0x…" strings and numbers.
func (h *Hex) UnmarshalJSON(b []byte) error {
	s := strings.Trim(string(b), `"`)
	v, err := strconv.ParseUint(s, 0, 32)
	if err != nil {
		return badValue(b, Hex(0))
	}
	*h = Hex(v)
	return nil
}

// MarshalJSON writes the value in hex.
func (h Hex) MarshalJSON() ([]byte, error) { return json.Marshal(fmt.Sprintf("%#x", uint32(h))) }

// badValue reports a value a custom type cannot take, as a type error so the
// decoder adds the key's path to the message.
func badValue(b []byte, want any) error {
	return &json.UnmarshalTypeError{Value: "value " + string(b), Type: reflect.TypeOf(want)}
}

// DefaultConfig is what the agent runs with when the file sets nothing.
func DefaultConfig() Config {
	return Config{
		Socket:              api.DefaultSocket,
		Admin:               "127.0.0.1:15020",
		LogLevel:            "info",
		ConnectTimeout:      Duration(5 * time.Second),
		DrainTimeout:        Duration(10 * time.Second),
		SweepInterval:       Duration(30 * time.Second),
		ReconcileInterval:   Duration(60 * time.Second),
		NetnsDirs:           []string{"/run/netns", "/var/run/netns"},
		UnknownDestinations: "passthrough",
		AccessLog:           AccessLog{SampleRate: 1, Path: "-"},
		Kubernetes:          Kubernetes{GatewayAPI: true},
		Tracing:             Tracing{SampleRatio: 0.01, BatchTimeout: Duration(5 * time.Second)},
		Runtime:             Runtime{Procs: ProcsMax, MinProcs: 1, Loops: LoopsAuto},
		Sniffing: Sniffing{
			Timeout:          Duration(100 * time.Millisecond),
			ServerFirstPorts: DefaultServerFirstPorts,
		},
		Capture: Capture{
			OutboundPort: redirect.DefaultOutboundPort,
			InboundPort:  redirect.DefaultInboundPort,
			Mark:         Hex(redirect.DefaultMark),
			Mask:         Hex(redirect.DefaultMask),
			Backend:      "auto",
			TPROXYMark:   Hex(redirect.DefaultTPROXYMark),
			TPROXYMask:   Hex(redirect.DefaultTPROXYMask),
			RouteTable:   redirect.DefaultRouteTable,
			RulePriority: redirect.DefaultRulePriority,
		},
	}
}

// LoadConfig reads, defaults and validates a config file.
func LoadConfig(path string) (Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	c, err := ParseConfig(b)
	if err != nil {
		return Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// ParseConfig decodes YAML over the defaults and validates the result.
func ParseConfig(b []byte) (Config, error) {
	c := DefaultConfig()
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return Config{}, fmt.Errorf("decode: %w", err)
	}
	if c.StateDir == "" {
		c.StateDir = filepath.Dir(c.Socket)
	}
	c.withStandbyDefaults()
	if c.Kubernetes.NodeName == "" {
		c.Kubernetes.NodeName = os.Getenv("NODE_NAME")
	}
	if c.Kubernetes.Namespace == "" {
		c.Kubernetes.Namespace = os.Getenv("POD_NAMESPACE")
	}
	if c.Kubernetes.Namespace == "" {
		c.Kubernetes.Namespace = "weir-system"
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks every value, naming the offending key.
func (c Config) Validate() error {
	// Paths must be absolute: a relative one would depend on the directory
	// the agent happens to be started from.
	paths := [][2]string{{"socket", c.Socket}, {"stateDir", c.StateDir}}
	for i, d := range c.NetnsDirs {
		paths = append(paths, [2]string{fmt.Sprintf("netnsDirs[%d]", i), d})
	}
	if c.Kubernetes.Kubeconfig != "" {
		paths = append(paths, [2]string{"kubernetes.kubeconfig", c.Kubernetes.Kubeconfig})
	}
	for _, p := range paths {
		if !filepath.IsAbs(p[1]) {
			return fmt.Errorf("%s: must be an absolute path, got %q", p[0], p[1])
		}
	}
	if c.ProbeSocket != "" && !filepath.IsAbs(c.ProbeSocket) {
		return fmt.Errorf("probeSocket: want an absolute path, got %q", c.ProbeSocket)
	}
	if c.ProbeSocket != "" && c.ProbeSocket == c.Socket {
		return fmt.Errorf("probeSocket: must differ from socket (%s)", c.Socket)
	}
	if _, err := netip.ParseAddrPort(c.Admin); err != nil {
		return fmt.Errorf("admin: want ip:port, got %q: %w", c.Admin, err)
	}
	if err := c.Standby.validate(c); err != nil {
		return err
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("logLevel: want debug, info, warn or error, got %q", c.LogLevel)
	}
	if c.Kubernetes.Enabled && c.Kubernetes.NodeName == "" {
		return fmt.Errorf("kubernetes.nodeName: required when kubernetes.enabled (or set NODE_NAME)")
	}
	if c.Kubernetes.Enabled && len(c.Services) > 0 {
		return fmt.Errorf("services: not used when kubernetes.enabled (services come from the cluster); remove them")
	}
	for key, d := range map[string]Duration{"connectTimeout": c.ConnectTimeout, "drainTimeout": c.DrainTimeout, "sweepInterval": c.SweepInterval, "reconcileInterval": c.ReconcileInterval} {
		if d <= 0 {
			return fmt.Errorf("%s: must be positive", key)
		}
	}
	if err := (h2.Options{Engine: c.HTTP2.Engine}).Validate(); err != nil {
		return fmt.Errorf("http2.engine: %w", err)
	}
	if c.Sniffing.Timeout < 0 || c.Sniffing.Timeout > Duration(10*time.Second) {
		return fmt.Errorf("sniffing.timeout: want 0 (never sniff) up to 10s, got %s", time.Duration(c.Sniffing.Timeout))
	}
	for k, d := range c.Sniffing.PortTimeouts {
		if p, err := strconv.ParseUint(k, 10, 16); err != nil || p == 0 {
			return fmt.Errorf("sniffing.portTimeouts: key %q is not a port", k)
		}
		if d < 0 || d > Duration(10*time.Second) {
			return fmt.Errorf("sniffing.portTimeouts[%s]: want 0 up to 10s, got %s", k, time.Duration(d))
		}
	}
	for _, p := range c.Sniffing.ServerFirstPorts {
		if p == 0 {
			return fmt.Errorf("sniffing.serverFirstPorts: port 0")
		}
	}
	if err := c.XDS.validate(); err != nil {
		return err
	}
	if r := c.AccessLog.SampleRate; !(r >= 0 && r <= 1) {
		return fmt.Errorf("accessLog.sampleRate: want 0 up to 1, got %v", r)
	}
	if p := c.AccessLog.Path; p != "-" && !filepath.IsAbs(p) {
		return fmt.Errorf("accessLog.path: want - (stderr) or an absolute path, got %q", p)
	}
	if err := c.Tracing.validate(); err != nil {
		return err
	}
	if err := c.Runtime.validate(); err != nil {
		return err
	}
	switch c.UnknownDestinations {
	case "passthrough", "refuse":
	default:
		return fmt.Errorf("unknownDestinations: want passthrough or refuse, got %q", c.UnknownDestinations)
	}
	switch c.Capture.Backend {
	case "auto", redirect.BackendLegacy, redirect.BackendNFT, redirect.BackendNFTables:
	default:
		return fmt.Errorf("capture.backend: want auto, legacy, nft or nftables, got %q", c.Capture.Backend)
	}
	for _, ns := range c.Capture.Namespaces {
		if ns == "" {
			return fmt.Errorf("capture.namespaces: empty name")
		}
	}
	switch redirect.Mode(c.Capture.Mode) {
	case "", redirect.ModeRedirect, redirect.ModeTPROXY, redirect.ModeEBPF:
	default:
		return fmt.Errorf("capture.mode: want redirect, tproxy or ebpf, got %q", c.Capture.Mode)
	}
	switch c.Capture.TCPTimestamps {
	case "", timestampsMonotonic, timestampsKeep:
	default:
		return fmt.Errorf("capture.tcpTimestamps: want monotonic or keep, got %q", c.Capture.TCPTimestamps)
	}
	switch c.Capture.EBPFFallback {
	case "", "none", string(redirect.ModeRedirect), string(redirect.ModeTPROXY):
	default:
		return fmt.Errorf("capture.ebpfFallback: want redirect, tproxy or none, got %q", c.Capture.EBPFFallback)
	}
	for key, p := range map[string]string{"capture.ebpf.pinPath": c.Capture.EBPF.PinPath, "capture.ebpf.cgroup": c.Capture.EBPF.Cgroup} {
		if p != "" && !filepath.IsAbs(p) {
			return fmt.Errorf("%s: must be an absolute path, got %q", key, p)
		}
	}
	spec := c.redirectSpec(true, true, redirect.ModeRedirect)
	if err := spec.Validate(); err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	for i, o := range c.Capture.Overrides {
		if o.Namespace == "" {
			return fmt.Errorf("capture.overrides[%d].namespace: required", i)
		}
		if err := o.Overrides.Validate(); err != nil {
			return fmt.Errorf("capture.overrides[%d]: %w", i, err)
		}
		s := o.Overrides.Apply(spec)
		if s.Mode == "" {
			s.Mode = redirect.ModeRedirect
		}
		if err := s.Validate(); err != nil {
			return fmt.Errorf("capture.overrides[%d]: %w", i, err)
		}
	}
	seen := map[netip.AddrPort]string{}
	for i, s := range c.Services {
		where := fmt.Sprintf("services[%d]", i)
		if s.Name == "" {
			return fmt.Errorf("%s.name: required", where)
		}
		where = fmt.Sprintf("services[%d] (%s)", i, s.Name)
		addrs, err := s.addrs()
		if err != nil {
			return fmt.Errorf("%s.address: %w", where, err)
		}
		if len(addrs) == 0 && len(s.Endpoints) == 0 {
			return fmt.Errorf("%s: needs an address or endpoints (a service without an address is reachable only as a route's backend)", where)
		}
		for _, a := range addrs {
			if other, dup := seen[a]; dup {
				return fmt.Errorf("%s.address: %s already belongs to service %s", where, a, other)
			}
			seen[a] = s.Name
		}
		if _, err := s.endpoints(); err != nil {
			return fmt.Errorf("%s.endpoints: %w", where, err)
		}
		if err := s.Cluster.Validate(); err != nil {
			return fmt.Errorf("%s.cluster: %w", where, err)
		}
		if _, err := route.ParseProtocol(s.Protocol); err != nil {
			return fmt.Errorf("%s.protocol: %w", where, err)
		}
		if _, err := route.ParseUpstreamProtocol(s.UpstreamProtocol); err != nil {
			return fmt.Errorf("%s.upstreamProtocol: %w", where, err)
		}
		switch s.Dataplane {
		case "", DataplaneAgent:
		case DataplaneKernel:
			if err := s.validateKernel(c); err != nil {
				return fmt.Errorf("%s.%w", where, err)
			}
		default:
			return fmt.Errorf("%s.dataplane: want agent or kernel, got %q", where, s.Dataplane)
		}
	}
	if len(c.Services) > 0 {
		// Routes name other services: only a whole build checks them.
		if _, err := buildRoutes(c, nil); err != nil {
			return err
		}
	}
	return nil
}

func (s Service) addrs() ([]netip.AddrPort, error) {
	raw := s.Addresses
	if s.Address != "" {
		raw = append([]string{s.Address}, raw...)
	}
	out := make([]netip.AddrPort, 0, len(raw))
	for _, r := range raw {
		ap, err := netip.ParseAddrPort(r)
		if err != nil {
			return nil, fmt.Errorf("want ip:port (IPv6 as [addr]:port), got %q", r)
		}
		out = append(out, netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
	}
	return out, nil
}

func (s Service) endpoints() ([]cluster.Endpoint, error) {
	out := make([]cluster.Endpoint, 0, len(s.Endpoints))
	for _, e := range s.Endpoints {
		ap, err := netip.ParseAddrPort(e.Address)
		if err != nil {
			return nil, fmt.Errorf("want ip:port (IPv6 as [addr]:port), got %q", e.Address)
		}
		out = append(out, cluster.Endpoint{Addr: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), Weight: e.Weight, Labels: e.Labels, Health: e.Health})
	}
	return out, nil
}

// redirectSpec is the interception this config asks for, for a pod with the
// given address families, in mode unless the config sets one.
func (c Config) redirectSpec(v4, v6 bool, mode redirect.Mode) redirect.Spec {
	backend := c.Capture.Backend
	if backend == "auto" {
		backend = ""
	}
	if c.Capture.Mode != "" {
		mode = redirect.Mode(c.Capture.Mode)
	}
	return redirect.Spec{
		Mode:                 mode,
		OutboundPort:         c.Capture.OutboundPort,
		InboundPort:          c.Capture.InboundPort,
		Mark:                 uint32(c.Capture.Mark),
		Mask:                 uint32(c.Capture.Mask),
		IPv4:                 v4,
		IPv6:                 v6,
		ExcludeInboundPorts:  c.Capture.ExcludeInboundPorts,
		IncludeInboundPorts:  c.Capture.IncludeInboundPorts,
		ExcludeOutboundPorts: c.Capture.ExcludeOutboundPorts,
		ExcludeOutboundCIDRs: c.Capture.ExcludeOutboundCIDRs,
		Backend:              backend,
		TPROXYMark:           uint32(c.Capture.TPROXYMark),
		TPROXYMask:           uint32(c.Capture.TPROXYMask),
		RouteTable:           c.Capture.RouteTable,
		RulePriority:         c.Capture.RulePriority,
	}
}

// overridesFor returns the static overrides of a pod: a name match beats a
// namespace-wide entry.
func (c Config) overridesFor(namespace, name string) podconfig.Overrides {
	var best *PodOverride
	for i := range c.Capture.Overrides {
		o := &c.Capture.Overrides[i]
		if o.Namespace != namespace || (o.Name != "" && o.Name != name) {
			continue
		}
		if best == nil || (best.Name == "" && o.Name != "") {
			best = o
		}
	}
	if best == nil {
		return podconfig.Overrides{}
	}
	return best.Overrides
}

// sniffing is the engine's view of the sniffing settings.
func (c Config) sniffing() proxy.Sniffing {
	s := proxy.Sniffing{
		Timeout:      time.Duration(c.Sniffing.Timeout),
		ServerFirst:  map[uint16]bool{},
		PortTimeouts: map[uint16]time.Duration{},
	}
	for _, p := range c.Sniffing.ServerFirstPorts {
		s.ServerFirst[p] = true
	}
	for k, d := range c.Sniffing.PortTimeouts {
		if p, err := strconv.ParseUint(k, 10, 16); err == nil {
			s.PortTimeouts[uint16(p)] = time.Duration(d)
		}
	}
	return s
}

func (t Tracing) validate() error {
	if r := t.SampleRatio; !(r >= 0 && r <= 1) {
		return fmt.Errorf("tracing.sampleRatio: want 0 up to 1, got %v", r)
	}
	if t.BatchTimeout <= 0 || time.Duration(t.BatchTimeout) > time.Minute {
		return fmt.Errorf("tracing.batchTimeout: want more than 0 up to 1m, got %s", time.Duration(t.BatchTimeout))
	}
	if !t.Enabled {
		return nil
	}
	host, port, err := net.SplitHostPort(t.Endpoint)
	if err != nil || host == "" || port == "" {
		return fmt.Errorf("tracing.endpoint: want host:port of an OTLP/gRPC collector, got %q", t.Endpoint)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("tracing.endpoint: port %q is not 1-65535", port)
	}
	return nil
}
