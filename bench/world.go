package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// WeirModes are the interception modes benchmarked, one path each
// ("weir-<mode>"). Adding a mode weir-cni and the agent accept is one line
// here; each mode beyond the first gets a node of its own with the same
// servers, since the mode is a node-wide setting.
var WeirModes = []string{
	"redirect",
	"tproxy",
	"ebpf",
}

// backend is one server program in the server pod, reached by the workloads.
type backend string

const (
	backendHTTP  backend = "http"  // nginx, 13-byte `return 200`
	backendH2C   backend = "h2c"   // the same nginx, `listen … http2` (prior knowledge, no TLS)
	backendIPerf backend = "iperf" // iperf3 -s
	backendEcho  backend = "echo"  // the echo helper
)

// serverPorts are the server pod's ports, one per backend; the virtual
// service addresses use the same order.
var (
	serverPorts = map[backend]int{backendHTTP: 8080, backendH2C: 8081, backendIPerf: 5201, backendEcho: 7000}
	servicePort = map[backend]int{backendHTTP: 80, backendH2C: 81, backendIPerf: 5201, backendEcho: 7000}
	backends    = []backend{backendHTTP, backendH2C, backendIPerf, backendEcho}
	// httpBackends are the ones an HTTP proxy (an L7 peer) carries.
	httpBackends = []backend{backendHTTP, backendH2C}
)

// weirVIP is the virtual address of the services weir balances; it exists
// only in the agent's config. Its services declare no protocol (auto):
// the agent sniffs every connection, proxies HTTP/1.1 and h2c at L7 and
// relays anything else at L4. weirVIPL4 has the same services declared
// `protocol: tcp`, which the agent relays at L4 without sniffing: the
// weir-<mode>-l4 paths, so both halves of weir are measured side by side.
const (
	weirVIP   = "10.96.0.10"
	weirVIPL4 = "10.96.0.11"
)

// weirVIPKernel has, on eBPF nodes, the same services declared `protocol:
// tcp, dataplane: kernel`: the connect program sends each connection
// straight to the server pod, with no proxy in its path (KernelPath).
const weirVIPKernel = "10.96.0.12"

// KernelPath is the path of weir's kernel-balanced services (issue 12):
// the weir-ebpf node's client pod dialling weirVIPKernel.
const KernelPath = "weir-ebpf-kernel"

// PolicyPath is weir's L7 path with issue 10's policy and telemetry
// configured, measured against the plain weir-<first mode> path: one
// route with one rule per HTTP service (retry on 503, a request timeout,
// a rate limit far above the load), per-route metrics, the access log
// sampled at 1 % (to a file), tracing off. It has a node and agent of its
// own, since the access log is an agent-wide setting.
const PolicyPath = "weir-redirect-policy"

// Kinds of path.
const (
	kindDirect = "direct" // no proxy at all
	kindWeir   = "weir"   // captured by weir-cni's rules, relayed by weir-agent
	kindPeer   = "peer"   // another proxy placed where weir's listener sits
)

// path is one way from a client pod to the servers.
type path struct {
	Name string
	Kind string
	// Desc says in a few words what sits in between.
	Desc   string
	client *testworld.Pod
	// addr is where the client connects for each backend the path carries
	// (L7 peers carry HTTP only).
	addr map[backend]string
	// skip says, for a backend the path does not carry, why not (shown
	// under the workload's table).
	skip map[backend]string
	// notes says how the path carries a backend when that differs from
	// its description (shown under the workload's table).
	notes map[backend]string
	procs procGroup
	agent *testworld.Agent
	// deps are the processes the path needs alive: the servers and its proxy.
	deps []*proc
}

// site is one node with its server pod; the first also holds the direct
// path and the peers.
type site struct {
	node    *testworld.Node
	server  *testworld.Pod
	servers []*proc
}

// world is the benchmark's test world and its paths, in table order.
type world struct {
	t     testworld.T
	opts  *Options
	paths []*path
	// first is the node holding the peers; plain is its uncaptured client
	// pod, where the direct path and the peers run.
	first *site
	plain *testworld.Pod
	// procs are every server and peer process started.
	procs []*proc
	// ruleWatches are `nft monitor` logs of the captured pods' rule changes.
	ruleWatches map[string]string
	// scratch is a directory for the load tools' own files (h2load's
	// per-request log).
	scratch string
}

// tuneNetns lets a netns take connection churn: reuse of TIME_WAIT ports,
// the whole ephemeral range, and conntrack entries that leave TIME_WAIT fast
// (the table is global: a connection-per-request workload would fill it).
func tuneNetns(t testworld.T, n *testworld.Netns) {
	t.Helper()
	n.MustRun(t, "sysctl", "-q", "-w",
		"net.ipv4.tcp_tw_reuse=1",
		"net.ipv4.ip_local_port_range=1024 65000",
		"net.core.somaxconn=8192",
		"net.ipv4.tcp_max_syn_backlog=8192",
	)
	// Conntrack sysctls exist only once the module is loaded; best effort.
	n.Run("sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1")
}

func (w *world) logf(format string, args ...any) {
	if w.opts.Log != nil {
		fmt.Fprintf(w.opts.Log, format+"\n", args...)
	}
}

// newSite builds a node for a weir mode, starts its agent and its server
// pod; with policy, the agent and its HTTP services are configured as
// PolicyPath says.
//
// bin, when set, is the weir-agent binary to run instead of the node's.
//
// In ebpf mode the acceleration is on unless variant is noAccelSuffix or
// spliceSuffix (which also turns the in-kernel splice on).
func (w *world) newSite(mode string, policy bool, bin string, variant string) (*site, *testworld.Agent) {
	t := w.t
	noAccel := variant == noAccelSuffix || variant == spliceSuffix
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.0.0", Weir: map[string]any{"mode": mode}, EBPF: mode == "ebpf",
		EBPFAccelerate: mode == "ebpf" && !noAccel, EBPFNoAccelerate: mode == "ebpf" && noAccel,
		EBPFSplice: mode == "ebpf" && variant == spliceSuffix})
	tuneNetns(t, node.Netns)
	capture := map[string]any{"namespaces": []string{captureNamespace(mode)}, "mode": mode}
	cfg := map[string]any{"logLevel": "info", "sweepInterval": "30s", "capture": capture}
	start := func() *testworld.Agent {
		if bin != "" {
			return node.StartAgentBinary(t, cfg, bin)
		}
		if w.opts.Loops != "" {
			// This build's agent only: a baseline may not know the key.
			cfg["runtime"] = map[string]any{"loops": w.opts.Loops}
		}
		return node.StartAgent(t, cfg)
	}
	agent := start()
	s := &site{node: node, server: node.MustAddPod(t, "bench-server", "server")}
	tuneNetns(t, s.server.Netns)
	s.servers = w.startServers(s.server)

	// Restart the agent with the services now that the server's address is
	// known; pods added so far are not captured, so nothing is lost.
	agent.Stop(t)
	var services []any
	for _, b := range backends {
		ep := []string{fmt.Sprintf("%s:%d", s.server.IP4, serverPorts[b])}
		svc := map[string]any{
			"name":      string(b),
			"address":   fmt.Sprintf("%s:%d", weirVIP, servicePort[b]),
			"endpoints": ep,
		}
		if policy && slices.Contains(httpBackends, b) {
			svc["httpRoutes"] = []any{map[string]any{"name": string(b), "rules": []any{map[string]any{
				"backendRefs": []any{map[string]any{"service": string(b)}},
				"retry":       map[string]any{"codes": []int{503}, "attempts": 1},
				"timeouts":    map[string]any{"request": "10s"},
				"rateLimit":   map[string]any{"requestsPerSecond": 1e8, "burst": 100000},
			}}}}
		}
		services = append(services, svc, map[string]any{
			"name":      string(b) + "-l4",
			"address":   fmt.Sprintf("%s:%d", weirVIPL4, servicePort[b]),
			"endpoints": ep,
			"protocol":  "tcp",
		})
		if mode == "ebpf" {
			services = append(services, map[string]any{
				"name":      string(b) + "-kernel",
				"address":   fmt.Sprintf("%s:%d", weirVIPKernel, servicePort[b]),
				"endpoints": ep,
				"protocol":  "tcp",
				"dataplane": "kernel",
			})
		}
	}
	cfg["services"] = services
	if w.opts.HTTP2Engine != "" {
		cfg["http2"] = map[string]any{"engine": w.opts.HTTP2Engine}
	}
	if policy {
		cfg["accessLog"] = map[string]any{"enabled": true, "sampleRate": 0.01, "path": filepath.Join(w.scratch, "access-"+node.Name+".log")}
	}
	agent = start()
	return s, agent
}

// captureHow says in a few words how a weir mode captures.
func captureHow(mode string) string {
	if mode == "ebpf" {
		return "eBPF (cgroup connect rewrite, sk_lookup; local pairs accelerated by sockmap)"
	}
	return "weir-cni's " + mode + " rules"
}

func captureNamespace(mode string) string { return "bench-weir-" + mode }

// startServers runs the backends in the server pod: one nginx for HTTP/1.1
// and h2c, iperf3 and the echo helper.
func (w *world) startServers(p *testworld.Pod) []*proc {
	t := w.t
	dir := t.TempDir()
	conf := fmt.Sprintf(`
user root;
daemon off;
worker_processes 1;
worker_rlimit_nofile 65536;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
  server { listen %[2]d backlog=8192; location / { return 200 "hello, weir!\n"; } }
  server { listen %[3]d backlog=8192 http2; location / { return 200 "hello, weir!\n"; } }
}
`, dir, serverPorts[backendHTTP], serverPorts[backendH2C])
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	errLog := filepath.Join(dir, "error.log")
	procs := []*proc{
		w.startProc(p.Netns, "server nginx", []string{errLog}, "nginx", "-p", dir, "-c", path, "-e", errLog),
		w.startProc(p.Netns, "server iperf3", nil, "iperf3", "-s", "-p", strconv.Itoa(serverPorts[backendIPerf])),
	}
	exe, args, err := helperCommand("echo", "-listen", fmt.Sprintf(":%d", serverPorts[backendEcho]))
	if err != nil {
		t.Fatal(err)
	}
	procs = append(procs, w.startProc(p.Netns, "server echo", nil, exe, args...))
	for _, b := range backends {
		p.WaitPort(t, fmt.Sprintf("127.0.0.1:%d", serverPorts[b]))
	}
	return procs
}

// buildWorld makes every node, pod, server and proxy, and lists the paths.
func buildWorld(t testworld.T, opts *Options) *world {
	t.Helper()
	w := &world{t: t, opts: opts, scratch: t.TempDir()}
	start := time.Now()
	for i, mode := range WeirModes {
		w.logf("building node for weir mode %s", mode)
		s, agent := w.newSite(mode, false, "", "")
		if i == 0 {
			w.first = s
			plain := s.node.MustAddPod(t, "bench-plain", "client-plain")
			tuneNetns(t, plain.Netns)
			w.paths = append(w.paths, &path{
				Name: "direct", Kind: kindDirect, Desc: "client connects straight to the server pod",
				client: plain, addr: serverAddrs(s.server), deps: s.servers,
			})
			w.plain = plain
		}
		w.paths = append(w.paths, w.weirPaths(s, agent, mode, "")...)
		if opts.BaselineAgent != "" && (keep(opts.Paths, "weir-"+mode+baseSuffix) || keep(opts.Paths, "weir-"+mode+baseSuffix+"-l4")) {
			w.logf("building node for weir mode %s with the baseline agent %s", mode, opts.BaselineAgent)
			bs, bagent := w.newSite(mode, false, opts.BaselineAgent, "")
			w.paths = append(w.paths, w.weirPaths(bs, bagent, mode, baseSuffix)...)
		}
		if mode == "ebpf" && (slices.Contains(opts.Paths, "weir-ebpf"+noAccelSuffix) || slices.Contains(opts.Paths, "weir-ebpf"+noAccelSuffix+"-l4")) {
			w.logf("building node for weir mode ebpf without acceleration")
			ns, nagent := w.newSite(mode, false, "", noAccelSuffix)
			w.paths = append(w.paths, w.weirPaths(ns, nagent, mode, noAccelSuffix)...)
		}
		if mode == "ebpf" && (slices.Contains(opts.Paths, "weir-ebpf"+spliceSuffix) || slices.Contains(opts.Paths, "weir-ebpf"+spliceSuffix+"-l4")) {
			w.logf("building node for weir mode ebpf with the in-kernel splice")
			ss, sagent := w.newSite(mode, false, "", spliceSuffix)
			w.paths = append(w.paths, w.weirPaths(ss, sagent, mode, spliceSuffix)...)
		}
	}
	if keep(opts.Paths, PolicyPath) {
		w.logf("building node for %s", PolicyPath)
		w.paths = append(w.paths, w.policyPath())
	}
	for i, p := range peers {
		if !keep(opts.Paths, p.name) || (p.optIn && !slices.Contains(opts.Paths, p.name)) {
			continue
		}
		w.logf("starting peer %s", p.name)
		w.paths = append(w.paths, w.startPeer(i, p))
	}
	w.logf("test world ready in %s", time.Since(start).Round(time.Millisecond))
	return w
}

// baseSuffix marks the paths of the baseline agent (Options.BaselineAgent).
const baseSuffix = "-base"

// noAccelSuffix marks the opt-in paths weir-ebpf-noaccel[-l4]: eBPF capture
// with capture.ebpf.accelerate off, on a node of its own, so acceleration
// on and off are measured side by side. They run only when --paths names
// them.
const noAccelSuffix = "-noaccel"

// spliceSuffix marks the opt-in paths weir-ebpf-splice[-l4]: eBPF capture
// with the acceleration off and capture.ebpf.splice on (L4 relays spliced
// in the kernel), on a node of its own. They run only when --paths names
// them.
const spliceSuffix = "-splice"

// weirPaths adds site s's captured client pod and returns its paths,
// "weir-<mode><suffix>" (sniffed) and the same with "-l4" (protocol: tcp),
// and on the eBPF node KernelPath (dataplane: kernel).
func (w *world) weirPaths(s *site, agent *testworld.Agent, mode, suffix string) []*path {
	t, opts := w.t, w.opts
	client := s.node.MustAddPod(t, captureNamespace(mode), "client")
	tuneNetns(t, client.Netns)
	w.watchRules(client)
	addrs, addrsL4 := map[backend]string{}, map[backend]string{}
	skipL4 := map[backend]string{}
	for _, b := range backends {
		addrs[b] = fmt.Sprintf("%s:%d", weirVIP, servicePort[b])
		if slices.Contains(httpBackends, b) {
			addrsL4[b] = fmt.Sprintf("%s:%d", weirVIPL4, servicePort[b])
		} else {
			skipL4[b] = "not HTTP, so weir-" + mode + " already relays it at L4 (the sniffer finds no HTTP); measured there"
		}
	}
	name := "weir-" + mode + suffix
	engine := opts.HTTP2Engine
	if engine == "" {
		engine = "frames"
	}
	desc := "weir-agent"
	switch suffix {
	case baseSuffix:
		desc = "the baseline weir-agent (" + filepath.Base(opts.BaselineAgent) + ") on a node of its own"
	case noAccelSuffix:
		desc = "weir-agent with capture.ebpf.accelerate off, on a node of its own"
	case spliceSuffix:
		desc = "weir-agent with capture.ebpf.accelerate off and capture.ebpf.splice on, on a node of its own"
	}
	paths := []*path{{
		Name: name, Kind: kindWeir,
		Desc:   desc + ", captured by " + captureHow(mode) + "; service protocol auto: HTTP/1.1 and h2c sniffed and proxied per request (L7, HTTP/2 engine " + engine + "), other bytes relayed at L4",
		client: client, addr: addrs, procs: procGroup{root: agent.Pid()}, agent: agent, deps: s.servers,
		notes: map[backend]string{backendH2C: "h2c both ways: the client's streams go out on weir's own HTTP/2 upstream connections to the server's h2c port"},
	}, {
		Name: name + "-l4", Kind: kindWeir,
		Desc:   "the same weir-agent and client pod; service declared protocol: tcp, so relayed at L4 with no sniffing",
		client: client, addr: addrsL4, skip: skipL4, procs: procGroup{root: agent.Pid()}, agent: agent, deps: s.servers,
		notes: map[backend]string{backendH2C: "bytes relayed: the client's h2c connection ends at the server"},
	}}
	if mode == "ebpf" && suffix == "" {
		addrsKernel := map[backend]string{}
		for _, b := range backends {
			addrsKernel[b] = fmt.Sprintf("%s:%d", weirVIPKernel, servicePort[b])
		}
		paths = append(paths, &path{
			Name: KernelPath, Kind: kindWeir,
			Desc:   "the same client pod; services declared protocol: tcp, dataplane: kernel, so the connect program sends each connection straight to the server (no proxy in the path; the agent's CPU is still counted)",
			client: client, addr: addrsKernel, procs: procGroup{root: agent.Pid()}, agent: agent, deps: s.servers,
		})
	}
	return paths
}

func serverAddrs(p *testworld.Pod) map[backend]string {
	m := map[backend]string{}
	for _, b := range backends {
		m[b] = fmt.Sprintf("%s:%d", p.IP4, serverPorts[b])
	}
	return m
}

// policyPath builds PolicyPath's node (redirect mode, as the first weir
// path) and client: HTTP/1.1 and h2c only.
func (w *world) policyPath() *path {
	t := w.t
	const mode = "redirect"
	s, agent := w.newSite(mode, true, "", "")
	client := s.node.MustAddPod(t, captureNamespace(mode), "client")
	tuneNetns(t, client.Netns)
	addrs, skip := map[backend]string{}, map[backend]string{}
	for _, b := range backends {
		if slices.Contains(httpBackends, b) {
			addrs[b] = fmt.Sprintf("%s:%d", weirVIP, servicePort[b])
		} else {
			skip[b] = "not HTTP: no L7 policy applies"
		}
	}
	return &path{
		Name: PolicyPath, Kind: kindWeir,
		Desc:   "weir-redirect's L7 path with policy and telemetry on: one route rule per service with retries, a request timeout and a rate limit, per-route metrics, access log sampled at 1 %, tracing off (a node and agent of its own)",
		client: client, addr: addrs, skip: skip, procs: procGroup{root: agent.Pid()}, agent: agent, deps: s.servers,
	}
}
