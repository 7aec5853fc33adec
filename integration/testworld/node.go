package testworld

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Subnets of every test node. Each node lives in its own isolated netns, so
// nodes of parallel tests may reuse them.
const (
	PodSubnet4 = "10.22.0.0/16"
	Gateway4   = "10.22.0.1"
	PodSubnet6 = "fd00:22::/64"
)

// NodeOptions shape a node. The zero value is an IPv4 node on CNI spec 1.0.0
// with Debian's plugins.
type NodeOptions struct {
	// SpecVersion is the conflist's cniVersion: "1.0.0" (Debian's plugins)
	// or "1.1.0" (upstream plugins, STATUS and GC).
	SpecVersion string
	// IPv6 adds an IPv6 range (dual stack with IPv4 unless NoIPv4).
	IPv6   bool
	NoIPv4 bool
	// Weir holds extra keys for weir-cni's conflist entry (mode, …).
	Weir map[string]any
	// Backend, when set (legacy or nft), makes the node look like one whose
	// kubelet uses that iptables backend: it creates kubelet's canary chain
	// there, as a real node has.
	Backend string
	// EBPF prepares the node for eBPF capture (ebpf.go): a private bpffs
	// (PinPath), a node cgroup (Cgroup) with one child per pod holding the
	// pod's processes, the agent's capture.ebpf settings filled in, and the
	// agent run with nsenter --net (ip netns exec's private sysfs would
	// hide the bpffs and cgroup mounts from it).
	EBPF bool
	// EBPFAccelerate sets capture.ebpf.accelerate (on by default) to true
	// explicitly in the agent's settings of an EBPF node.
	EBPFAccelerate bool
	// EBPFNoAccelerate turns capture.ebpf.accelerate off explicitly.
	EBPFNoAccelerate bool
	// EBPFSplice turns capture.ebpf.splice on (in-kernel splice of L4
	// relays).
	EBPFSplice bool
	// Exec, when set, runs the plugins instead of libcni's default (a
	// benchmark times weir-cni through it).
	Exec invoke.Exec
	// CaptureBackend, when set, is the agent's capture.backend (auto,
	// legacy, nft, nftables) in every config WriteAgentConfig writes,
	// unless the config names one itself.
	CaptureBackend string
}

// Node is one isolated node: a netns with the bridge, the CNI chain and an
// agent socket path.
type Node struct {
	*Netns
	Opts      NodeOptions
	Dir       string // temp dir: IPAM data, CNI cache, logs, agent config
	Bin       string // weir binaries
	PluginDir string
	Socket    string // the agent's unix socket
	CNILog    string // weir-cni's log file
	// PinPath and Cgroup are the eBPF capture's pin directory and attach
	// cgroup (NodeOptions.EBPF only).
	PinPath, Cgroup string
	// agentCgroupFD is the agent's cgroup below Cgroup (NodeOptions.EBPF only).
	agentCgroupFD int
	cni           *libcni.CNIConfig
}

// NewNode builds an isolated node netns and prepares the CNI chain.
func NewNode(t T, opts NodeOptions) *Node {
	t.Helper()
	RequireRoot(t)
	if opts.SpecVersion == "" {
		opts.SpecVersion = "1.0.0"
	}
	n := &Node{Netns: NewNetns(t, "wn-"), Opts: opts, Dir: t.TempDir()}
	n.Bin = Binaries(t)
	n.PluginDir = PluginDir(t, opts.SpecVersion)
	n.Socket = filepath.Join(n.Dir, "agent.sock")
	n.CNILog = filepath.Join(n.Dir, "weir-cni.log")
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{n.PluginDir, n.Bin}, filepath.Join(n.Dir, "cni-cache"), opts.Exec)
	// The bridge's IPv6 gateway address would sit "tentative" through
	// duplicate address detection, and the node could not use it.
	n.MustRun(t, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
	// The bridge plugin's CHECK compares the bridge's MAC with the one ADD
	// recorded; a bridge takes its ports' lowest MAC unless one is set, so
	// every later pod would change it. Create it with a fixed address.
	n.MustRun(t, "ip", "link", "add", "weir0", "type", "bridge")
	n.MustRun(t, "ip", "link", "set", "weir0", "address", "02:00:00:22:00:01")
	if opts.Backend != "" {
		tool := "iptables-" + opts.Backend
		RequireTool(t, tool)
		n.MustRun(t, tool, "-w", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
	}
	if opts.EBPF {
		n.ebpfNode(t)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(n.CNILog); err == nil {
				t.Logf("weir-cni log:\n%s", b)
			}
		}
	})
	return n
}

// Conflist is the node's chain: bridge + host-local, then weir-cni.
func (n *Node) Conflist() []byte {
	var ranges []any
	if !n.Opts.NoIPv4 {
		ranges = append(ranges, []any{map[string]any{"subnet": PodSubnet4, "gateway": Gateway4}})
	}
	routes := []any{}
	if !n.Opts.NoIPv4 {
		routes = append(routes, map[string]any{"dst": "0.0.0.0/0"})
	}
	if n.Opts.IPv6 {
		ranges = append(ranges, []any{map[string]any{"subnet": PodSubnet6}})
		routes = append(routes, map[string]any{"dst": "::/0"})
	}
	weir := map[string]any{"type": "weir-cni", "agentSocket": n.Socket, "logFile": n.CNILog, "logLevel": "debug"}
	for k, v := range n.Opts.Weir {
		weir[k] = v
	}
	list := map[string]any{
		"cniVersion": n.Opts.SpecVersion,
		"name":       "weir-test",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": "weir0", "isGateway": true, "ipMasq": false,
				"ipam": map[string]any{"type": "host-local", "ranges": ranges, "routes": routes, "dataDir": filepath.Join(n.Dir, "ipam")},
			},
			weir,
		},
	}
	b, _ := json.Marshal(list)
	return b
}

func (n *Node) netList() (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromBytes(n.Conflist())
}

func (n *Node) loList() (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromBytes([]byte(fmt.Sprintf(`{"cniVersion":%q,"name":"lo","plugins":[{"type":"loopback"}]}`, n.Opts.SpecVersion)))
}

// Pod is a pod netns attached to the node by the CNI chain.
type Pod struct {
	*Netns
	Namespace, Name, ContainerID string
	// UID is the pod object's UID (K8S_POD_UID); empty: one derived from
	// the container ID.
	UID      string
	IP4, IP6 netip.Addr
	Result   *current.Result
	node     *Node
}

// Runtime is the RuntimeConf libcni passes for p, as a Kubernetes runtime would.
func (p *Pod) Runtime() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: p.ContainerID,
		NetNS:       p.Path,
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", p.Namespace},
			{"K8S_POD_NAME", p.Name},
			{"K8S_POD_UID", p.uid()},
		},
	}
}

func (p *Pod) uid() string {
	if p.UID != "" {
		return p.UID
	}
	return "uid-" + p.ContainerID
}

// NewPodNetns makes the pod's namespace without running the chain yet.
func (n *Node) NewPodNetns(t T, namespace, name string) *Pod {
	t.Helper()
	p := &Pod{Netns: NewNetns(t, "wp-"), Namespace: namespace, Name: name, node: n}
	p.ContainerID = "c" + p.Netns.Name
	if n.Opts.EBPF {
		n.podCgroup(t, p)
	}
	return p
}

// AddPod creates a pod netns and runs ADD (loopback, then the chain) through
// libcni inside the node netns. A failed ADD is returned, not fatal.
func (n *Node) AddPod(t T, namespace, name string) (*Pod, error) {
	t.Helper()
	p := n.NewPodNetns(t, namespace, name)
	return p, n.Add(t, p)
}

// MustAddPod is AddPod that fails the test on error.
func (n *Node) MustAddPod(t T, namespace, name string) *Pod {
	t.Helper()
	p, err := n.AddPod(t, namespace, name)
	if err != nil {
		t.Fatalf("ADD pod %s/%s: %v", namespace, name, err)
	}
	return p
}

// Add runs ADD for an existing pod netns and registers DEL at cleanup.
func (n *Node) Add(t T, p *Pod) error {
	t.Helper()
	lo, err := n.loList()
	if err != nil {
		return err
	}
	list, err := n.netList()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var res types.Result
	err = n.Do(func() error {
		if _, err := n.cni.AddNetworkList(ctx, lo, p.Runtime()); err != nil {
			return fmt.Errorf("loopback: %w", err)
		}
		var err error
		res, err = n.cni.AddNetworkList(ctx, list, p.Runtime())
		return err
	})
	t.Cleanup(func() { n.Del(p) })
	if err != nil {
		return err
	}
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return err
	}
	p.Result = r
	for _, ip := range r.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		a = a.Unmap()
		if a.Is4() {
			p.IP4 = a
		} else {
			p.IP6 = a
		}
	}
	return nil
}

// Del runs DEL for the pod through libcni.
func (n *Node) Del(p *Pod) error {
	list, err := n.netList()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Do(func() error { return n.cni.DelNetworkList(ctx, list, p.Runtime()) })
}

// DelWeirOnly runs DEL through libcni for weir-cni alone, as the first
// step of the chain's DEL (chained DELs run in reverse order): the main
// plugin's DEL, which removes the interface and its address, has not run
// yet.
func (n *Node) DelWeirOnly(p *Pod) error {
	var full map[string]any
	if err := json.Unmarshal(n.Conflist(), &full); err != nil {
		return err
	}
	plugins := full["plugins"].([]any)
	full["plugins"] = plugins[len(plugins)-1:]
	b, err := json.Marshal(full)
	if err != nil {
		return err
	}
	list, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Do(func() error { return n.cni.DelNetworkList(ctx, list, p.Runtime()) })
}

// Check runs CHECK for the pod through libcni.
func (n *Node) Check(p *Pod) error {
	list, err := n.netList()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Do(func() error { return n.cni.CheckNetworkList(ctx, list, p.Runtime()) })
}

// Status runs STATUS (spec 1.1.0) through libcni.
func (n *Node) Status() error {
	list, err := n.netList()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Do(func() error { return n.cni.GetStatusNetworkList(ctx, list) })
}

// GC runs GC (spec 1.1.0) through libcni, naming the pods still valid.
func (n *Node) GC(valid ...*Pod) error {
	list, err := n.netList()
	if err != nil {
		return err
	}
	args := &libcni.GCArgs{}
	for _, p := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: p.ContainerID, IfName: "eth0"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return n.Do(func() error { return n.cni.GCNetworkList(ctx, list, args) })
}

// AddList runs ADD for p with a conflist of the caller's (such as one an
// installer wrote), looking up plugins in paths before the node's own.
func (n *Node) AddList(t T, p *Pod, conflist []byte, paths ...string) error {
	t.Helper()
	list, err := libcni.ConfListFromBytes(conflist)
	if err != nil {
		return err
	}
	lo, err := n.loList()
	if err != nil {
		return err
	}
	cni := libcni.NewCNIConfigWithCacheDir(append(paths, n.PluginDir, n.Bin), filepath.Join(n.Dir, "cni-cache"), nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = n.Do(func() error {
		if _, err := cni.AddNetworkList(ctx, lo, p.Runtime()); err != nil {
			return err
		}
		_, err := cni.AddNetworkList(ctx, list, p.Runtime())
		return err
	})
	t.Cleanup(func() {
		n.Do(func() error { return cni.DelNetworkList(context.Background(), list, p.Runtime()) })
	})
	return err
}
