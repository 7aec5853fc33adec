package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/redirect"
)

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte("capture:\n  namespaces: [demo]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Socket != "/run/weir/agent.sock" || c.Admin != "127.0.0.1:15020" || c.Capture.OutboundPort != 15001 ||
		c.Capture.InboundPort != 15006 || time.Duration(c.ConnectTimeout) != 5*time.Second || c.Capture.Mode != "" {
		t.Fatalf("defaults not applied: %+v", c)
	}
	for _, engine := range []string{"frames", "xnet"} {
		c, err := ParseConfig([]byte("http2:\n  engine: " + engine + "\n"))
		if err != nil || c.HTTP2.Engine != engine {
			t.Errorf("http2.engine %s: %v, %q", engine, err, c.HTTP2.Engine)
		}
	}
}

func TestParseConfigRuntime(t *testing.T) {
	c, err := ParseConfig(nil)
	if err != nil || c.Runtime.Procs != ProcsMax || c.Runtime.MinProcs != 1 {
		t.Fatalf("default runtime %+v, %v; want procs max, minProcs 1", c.Runtime, err)
	}
	for _, tc := range []struct {
		yaml  string
		procs Procs
		min   int
	}{
		{"runtime:\n  procs: auto\n  minProcs: 2\n", ProcsAuto, 2},
		{"runtime:\n  procs: max\n", ProcsMax, 1},
		{"runtime:\n  procs: 3\n", "3", 1},
		{"runtime:\n  procs: \"4\"\n", "4", 1},
	} {
		c, err := ParseConfig([]byte(tc.yaml))
		if err != nil || c.Runtime.Procs != tc.procs || c.Runtime.MinProcs != tc.min {
			t.Errorf("%q: %+v, %v; want procs %s, minProcs %d", tc.yaml, c.Runtime, err, tc.procs, tc.min)
		}
	}
	if n, ok := Procs("3").Fixed(); !ok || n != 3 {
		t.Errorf("Procs(3).Fixed() = %d, %v", n, ok)
	}
	if _, ok := ProcsAuto.Fixed(); ok {
		t.Error("auto reads as a fixed count")
	}
}

// runtime.loops: auto by default; auto follows the runtime's P count,
// except under procs: auto or eBPF splice; off and numbers are taken as
// they are; the rest is refused.
func TestParseConfigLoops(t *testing.T) {
	for _, tc := range []struct {
		yaml   string
		procs  int
		splice bool
		want   int
	}{
		{"", 4, false, 4},
		{"", 2, true, 0},
		{"runtime:\n  procs: auto\n", 4, false, 0},
		{"runtime:\n  loops: auto\n", 4, false, 4},
		{"runtime:\n  loops: auto\n", 1, false, 1},
		{"runtime:\n  loops: auto\n  procs: auto\n", 4, false, 0},
		{"runtime:\n  loops: auto\n", 4, true, 0},
		{"runtime:\n  loops: off\n", 4, false, 0},
		{"runtime:\n  loops: 0\n", 4, false, 0},
		{"runtime:\n  loops: 3\n", 8, false, 3},
		{"runtime:\n  loops: 3\n  procs: 2\n", 8, true, 3},
	} {
		c, err := ParseConfig([]byte(tc.yaml))
		if err != nil {
			t.Errorf("%q: %v", tc.yaml, err)
			continue
		}
		if got := c.Runtime.LoopCount(tc.procs, tc.splice); got != tc.want {
			t.Errorf("%q with %d Ps, splice %v: %d loops, want %d", tc.yaml, tc.procs, tc.splice, got, tc.want)
		}
	}
	for _, bad := range []string{"runtime:\n  loops: many\n", "runtime:\n  loops: -1\n", "runtime:\n  loops: 257\n", "runtime:\n  loops: 2\n  procs: auto\n"} {
		if _, err := ParseConfig([]byte(bad)); err == nil || !strings.Contains(err.Error(), "runtime.loops") {
			t.Errorf("%q: %v, want a runtime.loops error", bad, err)
		}
	}
}

// With no file at all the state directory is still the socket's, never
// the working directory.
func TestParseConfigNoFile(t *testing.T) {
	c, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.StateDir != "/run/weir" {
		t.Fatalf("stateDir %q, want the default socket's directory /run/weir", c.StateDir)
	}
	c, err = ParseConfig([]byte("socket: /var/run/w/a.sock\nnetnsDirs: [/run/netns]\nkubernetes:\n  kubeconfig: /etc/kube.conf\n"))
	if err != nil || c.StateDir != "/var/run/w" {
		t.Fatalf("absolute paths: %+v %v", c, err)
	}
}

func TestParseConfigExample(t *testing.T) {
	const example = `
socket: /run/weir/agent.sock
admin: 127.0.0.1:15020
capture:
  namespaces: [demo]
  mark: "0x100"
  mask: "0xf00"
services:
  - name: web
    address: 10.96.0.10:80
    endpoints: ["10.22.0.3:8080", "10.22.0.4:8080"]
  - name: web6
    addresses: ["[fd00:96::10]:80"]
    endpoints: ["[fd00:22::3]:8080"]
`
	c, err := ParseConfig([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	if c.Capture.Mark != 0x100 || len(c.Services) != 2 {
		t.Fatalf("parsed %+v", c)
	}
	if _, err := buildRoutes(c, nil); err != nil {
		t.Fatalf("routes from the example: %v", err)
	}
}

func TestParseConfigRejects(t *testing.T) {
	for _, tc := range []struct{ name, yaml, want string }{
		{"unknown key", "sockett: /x\n", `unknown field "sockett"`},
		{"unknown nested key", "capture:\n  namespace: [demo]\n", `unknown field "namespace"`},
		{"relative socket", "socket: agent.sock\n", `socket: must be an absolute path, got "agent.sock"`},
		{"relative stateDir", "stateDir: state\n", `stateDir: must be an absolute path, got "state"`},
		{"dot stateDir", "stateDir: ./run/weir\n", "stateDir: must be an absolute path"},
		{"relative netnsDirs", "netnsDirs: [/run/netns, netns]\n", `netnsDirs[1]: must be an absolute path, got "netns"`},
		{"empty netnsDirs entry", "netnsDirs: [\"\"]\n", `netnsDirs[0]: must be an absolute path, got ""`},
		{"relative kubeconfig", "kubernetes:\n  kubeconfig: kube.conf\n", `kubernetes.kubeconfig: must be an absolute path, got "kube.conf"`},
		{"bad admin", "admin: localhost\n", "admin:"},
		{"bad log level", "logLevel: loud\n", "logLevel:"},
		{"bad duration", "connectTimeout: soon\n", "connectTimeout"},
		{"negative duration", "drainTimeout: -1s\n", "drainTimeout"},
		{"bad unknown policy", "unknownDestinations: drop\n", "unknownDestinations"},
		{"bad backend", "capture:\n  backend: iptables\n", "capture.backend"},
		{"bad mode", "capture:\n  mode: magic\n", "capture"},
		{"bad mark", "capture:\n  mark: lots\n", "mark"},
		{"bad tcpTimestamps", "capture:\n  tcpTimestamps: random\n", `capture.tcpTimestamps: want monotonic or keep, got "random"`},
		{"service without name", "services:\n  - address: 10.0.0.1:80\n", "services[0].name"},
		{"service without address or endpoints", "services:\n  - name: a\n", "services[0] (a): needs an address or endpoints"},
		{"bad protocol", "services:\n  - name: a\n    address: 10.0.0.1:80\n    protocol: quic\n", "services[0] (a).protocol"},
		{"bad upstream protocol", "services:\n  - name: a\n    address: 10.0.0.1:80\n    upstreamProtocol: h3\n", "services[0] (a).upstreamProtocol"},
		{"upstream protocol for tcp", "services:\n  - name: a\n    address: 10.0.0.1:80\n    protocol: tcp\n    upstreamProtocol: http2\n", "upstreamProtocol http2 needs protocol"},
		{"route to unknown service", "services:\n  - name: a\n    address: 10.0.0.1:80\n    httpRoutes:\n      - rules:\n          - backendRefs: [{service: nope}]\n", `"nope" is not a service`},
		{"unknown route key", "services:\n  - name: a\n    address: 10.0.0.1:80\n    httpRoutes:\n      - rulez: []\n", "rulez"},
		{"negative sniffing timeout", "sniffing:\n  timeout: -1s\n", "sniffing.timeout"},
		{"bad sniffing port", "sniffing:\n  portTimeouts: {http: 1s}\n", "sniffing.portTimeouts"},
		{"unknown http2 engine", "http2:\n  engine: nghttp2\n", "http2.engine"},
		{"bad service address", "services:\n  - name: a\n    address: 10.0.0.1\n", "services[0] (a).address"},
		{"bad endpoint", "services:\n  - name: a\n    address: 10.0.0.1:80\n    endpoints: [x]\n", "services[0] (a).endpoints"},
		{"unknown runtime.procs", "runtime:\n  procs: some\n", `runtime.procs: want auto, max or a number from 1 to 4096, got "some"`},
		{"zero runtime.procs", "runtime:\n  procs: 0\n", "runtime.procs"},
		{"fractional runtime.procs", "runtime:\n  procs: 1.5\n", "runtime.procs"},
		{"zero runtime.minProcs", "runtime:\n  minProcs: 0\n", "runtime.minProcs: want 1 to 4096, got 0"},
		{"runtime.procs a list", "runtime:\n  procs: [1]\n", "runtime.procs"},
		{"duplicate address", "services:\n  - name: a\n    address: 10.0.0.1:80\n  - name: b\n    address: 10.0.0.1:80\n", "already belongs to service a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseConfigBackends(t *testing.T) {
	for _, b := range []string{"auto", "legacy", "nft", "nftables"} {
		c, err := ParseConfig([]byte("capture:\n  backend: " + b + "\n"))
		if err != nil || c.Capture.Backend != b {
			t.Errorf("backend %s: %v, %q", b, err, c.Capture.Backend)
		}
	}
}

func TestRulesOnlyChange(t *testing.T) {
	base := DefaultConfig().redirectSpec(true, true, "redirect")
	for _, tc := range []struct {
		name string
		edit func(s *redirect.Spec)
		want bool
	}{
		{"backend", func(s *redirect.Spec) { s.Backend = redirect.BackendNFTables }, true},
		{"exclusions", func(s *redirect.Spec) { s.ExcludeOutboundPorts = []uint16{53} }, true},
		{"mode", func(s *redirect.Spec) { s.Mode = redirect.ModeTPROXY }, false},
		{"port", func(s *redirect.Spec) { s.OutboundPort = 15101 }, false},
		{"family", func(s *redirect.Spec) { s.IPv6 = false }, false},
	} {
		s := base
		tc.edit(&s)
		if got := rulesOnlyChange(base, s); got != tc.want {
			t.Errorf("%s: rulesOnlyChange = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFamilies(t *testing.T) {
	for _, tc := range []struct {
		ips    []string
		v4, v6 bool
	}{
		{[]string{"10.0.0.2/16"}, true, false},
		{[]string{"fd00::2/64"}, false, true},
		{[]string{"10.0.0.2/16", "fd00::2/64"}, true, true},
		{nil, true, true},
	} {
		v4, v6, err := families(tc.ips)
		if err != nil || v4 != tc.v4 || v6 != tc.v6 {
			t.Errorf("families(%v) = %v %v %v", tc.ips, v4, v6, err)
		}
	}
	if _, _, err := families([]string{"nonsense"}); err == nil {
		t.Error("families accepted nonsense")
	}
}

// standby takes a bool or an object; its socket and admin address default
// to ones beside the primary's; bad values name the key.
func TestParseConfigStandby(t *testing.T) {
	c, err := ParseConfig([]byte("socket: /run/w/agent.sock\nadmin: 127.0.0.1:9000\nstandby: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Standby.Enabled || c.Standby.Respawn || c.Standby.Socket != "/run/w/agent-standby.sock" || c.Standby.Admin != "127.0.0.1:9001" {
		t.Fatalf("standby: true gave %+v", c.Standby)
	}
	c, err = ParseConfig([]byte("standby:\n  respawn: true\n  admin: 127.0.0.1:15030\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Standby.Enabled || !c.Standby.Respawn || c.Standby.Admin != "127.0.0.1:15030" || c.Standby.Socket != "/run/weir/agent-standby.sock" {
		t.Fatalf("standby object gave %+v", c.Standby)
	}
	for in, want := range map[string]string{
		"standby: yes please\n":                      "standby",
		"standby:\n  respawns: true\n":               "respawns",
		"standby:\n  socket: rel.sock\n":             "standby.socket: must be an absolute path",
		"standby:\n  socket: /run/weir/agent.sock\n": "standby.socket: must differ from socket",
		"standby:\n  admin: 127.0.0.1:15020\n":       "standby.admin: must differ from admin",
		"standby:\n  admin: localhost\n":             "standby.admin: want ip:port",
		"admin: 127.0.0.1:65535\nstandby: true\n":    "standby.admin: want ip:port",
	} {
		if _, err := ParseConfig([]byte(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err %v, want it to mention %q", in, err, want)
		}
	}
}

// FuzzParseConfigRuntime feeds arbitrary runtime: sections (and whole
// files) to ParseConfig: it never panics, and what it accepts is a valid
// runtime.procs and minProcs.
func FuzzParseConfigRuntime(f *testing.F) {
	for _, seed := range []string{
		"runtime:\n  procs: auto\n", "runtime:\n  procs: max\n  minProcs: 2\n", "runtime:\n  procs: 3\n",
		"runtime:\n  procs: \"7\"\n", "runtime:\n  procs: -1\n", "runtime:\n  procs: 1e3\n",
		"runtime:\n  procs: 0x10\n", "runtime:\n  procs: null\n", "runtime: {procs: [1], minProcs: x}\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b)
		if err != nil {
			return
		}
		if c.Runtime.Procs != ProcsAuto && c.Runtime.Procs != ProcsMax {
			if n, ok := c.Runtime.Procs.Fixed(); !ok || n < 1 || n > 4096 {
				t.Fatalf("accepted runtime.procs %q", c.Runtime.Procs)
			}
		}
		if c.Runtime.MinProcs < 1 || c.Runtime.MinProcs > 4096 {
			t.Fatalf("accepted runtime.minProcs %d", c.Runtime.MinProcs)
		}
	})
}

// A kernel-balanced service is accepted with what the connect program can
// do, and every other setting is refused at start, naming the service and
// the field.
func TestParseConfigKernelDataplane(t *testing.T) {
	const base = "capture:\n  mode: ebpf\nservices:\n- name: db\n  address: 10.96.0.20:5432\n  endpoints: [\"10.0.0.1:5432\", {address: \"10.0.0.2:5432\", weight: 3}]\n  protocol: tcp\n  dataplane: kernel\n"
	for _, extra := range []string{
		"",
		"  cluster: {balancer: random}\n",
		"  cluster: {balancer: round_robin, healthCheck: {enabled: true, interval: 1s}}\n",
		"  cluster: {retry: {disabled: true}, outlier: {disabled: true}}\n",
	} {
		c, err := ParseConfig([]byte(base + extra))
		if err != nil {
			t.Errorf("%q: %v", extra, err)
			continue
		}
		if c.Services[0].Dataplane != DataplaneKernel {
			t.Errorf("%q: dataplane %q", extra, c.Services[0].Dataplane)
		}
	}
	if _, err := ParseConfig([]byte(strings.Replace(base, "kernel", "agent", 1))); err != nil {
		t.Errorf("dataplane agent: %v", err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{strings.Replace(base, "mode: ebpf", "mode: redirect", 1), "services[0] (db).dataplane: kernel needs capture.mode ebpf"},
		{strings.Replace(base, "  mode: ebpf\n", "  namespaces: [demo]\n", 1), "services[0] (db).dataplane: kernel needs capture.mode ebpf"},
		{strings.Replace(base, "dataplane: kernel", "dataplane: xdp", 1), "services[0] (db).dataplane: want agent or kernel"},
		{strings.Replace(base, "protocol: tcp", "protocol: http", 1), "services[0] (db).protocol: dataplane kernel needs protocol tcp"},
		{strings.Replace(base, "  protocol: tcp\n", "", 1), "services[0] (db).protocol: dataplane kernel needs protocol tcp"},
		{strings.Replace(base, "  address: 10.96.0.20:5432\n", "", 1), "services[0] (db).address: dataplane kernel needs an address"},
		{base + "  upstreamProtocol: http2\n", "services[0] (db).upstreamProtocol"},
		{base + "  httpRoutes: [{name: r, rules: [{backendRefs: [{service: db}]}]}]\n", "services[0] (db).httpRoutes: not available with dataplane kernel"},
		{base + "  tlsRoutes: [{name: r, hostnames: [a.example], backendRefs: [{service: db}]}]\n", "services[0] (db).tlsRoutes: not available"},
		{base + "  rpcRoutes: [{name: r, backendRefs: [{service: db}]}]\n", "services[0] (db).rpcRoutes: not available"},
		{base + "  rpc: {timeout: 1s}\n", "services[0] (db).rpc: not available"},
		{base + "  rateLimit: {requestsPerSecond: 10, burst: 10}\n", "services[0] (db).rateLimit: not available"},
		{base + "  cluster: {balancer: least_request}\n", "services[0] (db).cluster.balancer: dataplane kernel balances round_robin or random"},
		{base + "  cluster: {balancer: maglev}\n", "services[0] (db).cluster.balancer"},
		{base + "  cluster: {retry: {maxRetries: 3}}\n", "services[0] (db).cluster.retry: not available"},
		{base + "  cluster: {outlier: {consecutiveFailures: 2}}\n", "services[0] (db).cluster.outlier: not available"},
		{base + "  cluster: {circuitBreaker: {maxConnections: 10}}\n", "services[0] (db).cluster.circuitBreaker: not available"},
		{base + "  cluster: {connectTimeout: 1s}\n", "services[0] (db).cluster.connectTimeout: not available"},
		{base + "  cluster: {subset: {selector: {v: \"1\"}}}\n", "services[0] (db).cluster.subset: not available"},
		{base + "  cluster: {locality: {enabled: true}}\n", "services[0] (db).cluster.locality: not available"},
		{base + "  cluster: {peakEwma: {decay: 1s}}\n", "services[0] (db).cluster.peakEwma: not available"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("config:\n%s\ngot error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
}

// The GOMAXPROCS environment variable counts as set as the runtime reads
// it: a positive integer; anything else leaves the runtime's default.
func TestProcsFromEnv(t *testing.T) {
	for v, want := range map[string]bool{"": false, "2": true, "0": false, "-1": false, "two": false, "64": true} {
		if got := procsFromEnv(v); got != want {
			t.Errorf("GOMAXPROCS=%q: set %v, want %v", v, got, want)
		}
	}
}
