package nodeworld

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-mesh/weir/integration/kubeworld"
	"github.com/weir-mesh/weir/integration/testworld"
)

// Addresses and names of the node. 192.0.2.0/24 is TEST-NET-1 (RFC 5737);
// it exists only inside the node netns.
const (
	NodeIP = "192.0.2.10"
	// PodCIDR is the primary network's range (the bridge plugin's
	// host-local IPAM), inside the node netns only.
	PodCIDR = "10.88.0.0/16"
	// PrimaryConflist is the runtime's CNI configuration the node starts
	// with, as a primary CNI would have written it.
	PrimaryConflist = "10-bridge.conflist"
	// WeirImage is the reference manifests/weir.yaml names: imported
	// locally, so the manifest is applied unchanged.
	WeirImage = "ghcr.io/weir-mesh/weir:dev"
	// WeirImageNext is the same programs under a second tag with a
	// different marker file, for a rolling update of the DaemonSet.
	WeirImageNext = "ghcr.io/weir-mesh/weir:dev-next"
	// PauseImage is both containerd's sandbox image and the image the
	// uninstall manifest's "done" container names.
	PauseImage = "registry.k8s.io/pause:3.10"
	// TestImage runs nodetest (see its package doc): "serve" and "pause".
	TestImage = "weir.test/nodetest:1"
)

// kubeletSysctls are the global sysctls kubelet sets at start
// (protectKernelDefaults false); the node restores them at teardown.
var kubeletSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Node is a running real node: control plane, containerd and kubelet.
type Node struct {
	// Name is the Node object's name.
	Name string
	// Netns is the node network namespace.
	Netns *testworld.Netns
	// Kube is the control plane; Kube.Client is an admin client that
	// reaches the apiserver inside the node netns.
	Kube *kubeworld.World
	// Dir holds the node's state; gone after teardown.
	Dir string
	// ConfDir and BinDir are the runtime's CNI dirs as the host sees them
	// (the node sees them at /etc/cni/net.d and /opt/cni/bin).
	ConfDir, BinDir string

	wrap       []string // nsenter into the node's netns and mount ns
	socket     string   // containerd's socket
	cgroupRoot string
	logDir     string
	kubelet    *daemon
	containerd *daemon
}

// Start brings up a node for t and tears it down when t ends. A missing
// tool or binary skips the test, or fails it under CI=true.
func Start(t *testing.T) *Node {
	t.Helper()
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "nsenter", "unshare", "mount", "containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ldd", "ip", "go")
	plugins := testworld.PluginDir(t, "1.1.0")
	began := time.Now()

	dir, err := os.MkdirTemp("", "wn-")
	if err != nil {
		t.Fatalf("node directory: %v", err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove node directory: %v", err)
		}
	})
	n := &Node{Dir: dir, ConfDir: filepath.Join(dir, "cni-conf"), BinDir: filepath.Join(dir, "cni-bin"), logDir: filepath.Join(dir, "logs")}
	for _, d := range []string{n.ConfDir, n.BinDir, n.logDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		if t.Failed() {
			n.dumpLogs(t)
		}
	})

	n.Netns = testworld.NewNetns(t, "wnode-")
	n.Name = "weir-" + strings.TrimPrefix(n.Netns.Name, "wnode-")
	for _, args := range [][]string{
		// The node's "uplink": a veth pair with both ends in the node netns
		// (this kernel has no dummy links), so nothing leaves it.
		{"link", "add", "node0", "type", "veth", "peer", "name", "node0-peer"},
		{"addr", "add", NodeIP + "/24", "dev", "node0"},
		{"link", "set", "node0", "up"},
		{"link", "set", "node0-peer", "up"},
		{"route", "add", "default", "dev", "node0"},
	} {
		n.Netns.MustRun(t, "ip", args...)
	}
	mntNS := n.startMountNamespace(t)
	n.wrap = []string{"nsenter", "--net=" + n.Netns.Path, "--mount=" + mntNS, "--"}

	n.Kube = kubeworld.StartWith(t, kubeworld.Options{
		Wrap:              n.wrap,
		Address:           NodeIP,
		Dial:              n.DialContext,
		AuthorizationMode: "Node,RBAC",
		APIServerArgs:     []string{"--kubelet-preferred-address-types=InternalIP"},
	})
	for _, b := range []string{"kubelet", "kube-controller-manager", "kube-scheduler"} {
		if _, err := os.Stat(filepath.Join(n.Kube.BinDir, b)); err != nil {
			testworld.Require(t, false, b+" in "+n.Kube.BinDir+" (hack/kube-binaries.sh builds it)")
		}
	}
	t.Logf("nodeworld: control plane ready after %v", time.Since(began).Round(time.Millisecond))
	// kube-proxy's one job here: the "kubernetes" Service, for the agent's
	// in-cluster config (KUBERNETES_SERVICE_HOST is its ClusterIP).
	port := n.Kube.Host[strings.LastIndex(n.Kube.Host, ":")+1:]
	n.Netns.MustRun(t, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", "10.96.0.1/32", "-p", "tcp", "--dport", "443",
		"-j", "DNAT", "--to-destination", NodeIP+":"+port)

	n.startControllers(t)
	n.startContainerd(t)
	n.importImages(t)
	n.writePrimaryNetwork(t, plugins)
	n.startKubelet(t)
	t.Logf("nodeworld: node %s ready after %v", n.Name, time.Since(began).Round(time.Millisecond))
	return n
}

// DialContext dials from inside the node netns; the connection stays
// there. It is how the test reaches the apiserver, pods and Services.
func (n *Node) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := n.Netns.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// HTTPClient returns a client whose connections start in the node netns.
func (n *Node) HTTPClient(timeout time.Duration) *http.Client {
	return &http.Client{Timeout: timeout, Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}}
}

// Command prepares a command inside the node's network and mount
// namespaces, as the node's own processes see the machine.
func (n *Node) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	argv := append(append(append([]string(nil), n.wrap...), name), args...)
	return exec.CommandContext(ctx, argv[0], argv[1:]...)
}

// Run runs a command on the node, bounded to a minute, and returns its
// combined output.
func (n *Node) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := n.Command(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// Kubectl runs kubectl on the node as the cluster admin.
func (n *Node) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	return n.Kube.Kubectl(t, args...)
}

// nodesLock is held shared by every running node of this machine.
const nodesLock = "/tmp/weir-nodeworld.lock"

// mountBinds are the host paths the node sees as directories of its own
// (relative to Dir). Every component and the shipped manifest's hostPaths
// use these paths; on the host they stay untouched.
var mountBinds = []struct{ host, local string }{
	{"/etc/cni/net.d", "cni-conf"},
	{"/opt/cni/bin", "cni-bin"},
	{"/run/weir", "run-weir"},
	{"/run/netns", "run-netns"},
	{"/run/containerd", "run-containerd"},
	{"/var/lib/kubelet", "kubelet"},
	{"/var/lib/containerd", "containerd"},
	{"/var/lib/cni", "var-lib-cni"},
	{"/var/log", "var-log"},
}

// startMountNamespace starts the process that holds the node's mount
// namespace and returns the namespace's path. Host mount points that do
// not exist are created first (a bind needs a target) and removed at
// teardown.
func (n *Node) startMountNamespace(t *testing.T) string {
	t.Helper()
	var script strings.Builder
	script.WriteString("set -e\n")
	var created []string
	for _, b := range mountBinds {
		local := filepath.Join(n.Dir, b.local)
		if err := os.MkdirAll(local, 0o755); err != nil {
			t.Fatal(err)
		}
		made, err := mkdirAllRecord(b.host)
		if err != nil {
			t.Fatalf("mount point %s: %v", b.host, err)
		}
		created = append(created, made...)
		fmt.Fprintf(&script, "mount --bind %s %s\n", local, b.host)
	}
	// Removing a directory that is a mount point in another mount namespace
	// detaches that mount there (Linux ≥ 3.18): with two nodes on one
	// machine (two test binaries), the first to finish would pull the
	// second's /run/weir from under it. Every node holds a shared lock; only
	// one that finds itself alone removes the mount points it created.
	lock, err := os.OpenFile(nodesLock, os.O_CREATE|os.O_RDONLY, 0o644)
	if err != nil {
		t.Fatalf("nodeworld lock: %v", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatalf("nodeworld lock %s: %v", nodesLock, err)
	}
	t.Cleanup(func() {
		defer lock.Close()
		if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			t.Logf("another node runs on this machine: leaving the mount points %v to it", created)
			return
		}
		for i := len(created) - 1; i >= 0; i-- {
			if err := os.Remove(created[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove mount point %s the node created: %v", created[i], err)
			}
		}
	})
	// Shared within the node's namespace (so a container's
	// mountPropagation sees the node's mounts), a slave of the host's (so
	// nothing mounted here reaches the host).
	script.WriteString("mount --make-rshared /\necho ready\nexec sleep 2147483647\n")
	cmd := exec.Command("unshare", "--mount", "--propagation", "slave", "--", "sh", "-c", script.String())
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start mount namespace: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("node mount namespace: %q %v: %s", line, err, stderr.String())
	}
	return fmt.Sprintf("/proc/%d/ns/mnt", cmd.Process.Pid)
}

// mkdirAllRecord is os.MkdirAll that returns the directories it created,
// outermost first.
func mkdirAllRecord(path string) ([]string, error) {
	var missing []string
	for p := path; ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil {
			break
		}
		missing = append([]string{p}, missing...)
		if p == "/" {
			break
		}
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return nil, err
	}
	return missing, nil
}

// daemon is one long-running program of the node, its output in a file.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

func (n *Node) startDaemon(t *testing.T, name string, args ...string) *daemon {
	t.Helper()
	logPath := filepath.Join(n.logDir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := n.Command(context.Background(), args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = n.Dir
	// The test binary's death takes the node with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("start %s: %v", name, err)
	}
	d := &daemon{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		f.Close()
		close(d.done)
	}()
	return d
}

func (d *daemon) stop() {
	select {
	case <-d.done:
		return
	default:
	}
	d.cmd.Process.Kill()
	<-d.done
}

func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

func (d *daemon) logTail() string {
	b, _ := os.ReadFile(d.log)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// startControllers runs kube-controller-manager (DaemonSets, Deployments,
// EndpointSlices, ServiceAccounts, kube-root-ca.crt) and kube-scheduler,
// both as the cluster admin, serving only on the node's loopback.
func (n *Node) startControllers(t *testing.T) {
	t.Helper()
	kc := n.Kube.Kubeconfig
	kcm := n.startDaemon(t, "kube-controller-manager", filepath.Join(n.Kube.BinDir, "kube-controller-manager"),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10257",
		"--service-account-private-key-file="+n.Kube.PKIFile("sa.key"),
		"--root-ca-file="+n.Kube.PKIFile("ca.crt"),
		"--use-service-account-credentials=false",
		"--v=1")
	t.Cleanup(kcm.stop)
	sched := n.startDaemon(t, "kube-scheduler", filepath.Join(n.Kube.BinDir, "kube-scheduler"),
		"--kubeconfig="+kc, "--authentication-kubeconfig="+kc, "--authorization-kubeconfig="+kc,
		"--leader-elect=false", "--bind-address=127.0.0.1", "--secure-port=10259", "--v=1")
	t.Cleanup(sched.stop)
	// The controller-manager is up once it made the default namespace's
	// ServiceAccount (pod admission needs it).
	waitFor(t, 3*time.Minute, "kube-controller-manager to create default/default", func() error {
		for _, d := range []*daemon{kcm, sched} {
			if d.exited() {
				t.Fatalf("%s exited: %s", d.name, d.logTail())
			}
		}
		_, err := n.Kube.Client.CoreV1().ServiceAccounts("default").Get(context.Background(), "default", metav1.GetOptions{})
		return err
	})
}

// containerdConfig is containerd 1.6's configuration for the node. Paths
// under /run/containerd, /var/lib/containerd and the CNI dirs are the
// node's own (bind mounts); the socket lives in Dir so ctr on the host
// reaches it.
const containerdConfig = `version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "%s"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%s"
  # Root here lacks CAP_SYS_RESOURCE: without this every sandbox fails with
  # "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
`

func (n *Node) startContainerd(t *testing.T) {
	t.Helper()
	n.socket = filepath.Join(n.Dir, "containerd.sock")
	cfg := filepath.Join(n.Dir, "containerd.toml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, containerdConfig, n.socket, PauseImage), 0o644); err != nil {
		t.Fatal(err)
	}
	n.containerd = n.startDaemon(t, "containerd", "containerd", "--config", cfg, "--log-level", "warn")
	t.Cleanup(n.containerd.stop)
	waitFor(t, time.Minute, "containerd to answer", func() error {
		if n.containerd.exited() {
			t.Fatalf("containerd exited: %s", n.containerd.logTail())
		}
		_, err := n.ctr("version")
		return err
	})
}

// ctr runs containerd's client against the node's containerd, in the CRI
// namespace (of containerd's namespaces; it runs in the node's Linux ones).
func (n *Node) ctr(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// In the node's mount namespace: ctr mounts snapshots itself for some
	// commands, and they live under the node's /var/lib/containerd.
	out, err := n.Command(ctx, "ctr", append([]string{"--address", n.socket, "-n", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// writePrimaryNetwork installs the reference plugins and a bridge conflist,
// as a primary CNI would before weir is installed.
func (n *Node) writePrimaryNetwork(t *testing.T, plugins string) {
	t.Helper()
	for _, p := range []string{"bridge", "host-local", "loopback", "portmap"} {
		b, err := os.ReadFile(filepath.Join(plugins, p))
		if err != nil {
			t.Fatalf("reference plugin: %v", err)
		}
		if err := os.WriteFile(filepath.Join(n.BinDir, p), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conflist := `{
  "cniVersion": "1.0.0",
  "name": "bridge",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "isDefaultGateway": true,
      "hairpinMode": true,
      "ipam": {"type": "host-local", "ranges": [[{"subnet": "` + PodCIDR + `"}]]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`
	if err := os.WriteFile(filepath.Join(n.ConfDir, PrimaryConflist), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
}

// kubeletConfig is the node's KubeletConfiguration. See the package doc for
// why each unusual setting is there.
const kubeletConfig = `apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[2]s}
authorization: {mode: Webhook}
cgroupDriver: cgroupfs
cgroupRoot: %[3]s
failSwapOn: false
failCgroupV1: false
containerRuntimeEndpoint: unix://%[4]s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "1Mi", nodefs.available: "1%%", nodefs.inodesFree: "1%%", imagefs.available: "1%%"}
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
volumePluginDir: /var/lib/kubelet/volume-plugins
protectKernelDefaults: false
serializeImagePulls: false
syncFrequency: 10s
fileCheckFrequency: 10s
nodeStatusUpdateFrequency: 5s
registerWithTaints:
  - key: weir.dev/agent-not-ready
    effect: NoSchedule
`

func (n *Node) startKubelet(t *testing.T) {
	t.Helper()
	kubeconfig := filepath.Join(n.Dir, "kubelet.kubeconfig")
	if err := n.Kube.WriteKubeconfig(kubeconfig, "system:node:"+n.Name, []string{"system:nodes"}); err != nil {
		t.Fatal(err)
	}
	n.cgroupRoot = "/" + n.Name
	n.makeCgroupRoot(t)
	n.saveSysctls(t)
	cfg := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, kubeletConfig, NodeIP, n.Kube.PKIFile("ca.crt"), n.cgroupRoot, n.socket), 0o644); err != nil {
		t.Fatal(err)
	}
	n.kubelet = n.startDaemon(t, "kubelet", filepath.Join(n.Kube.BinDir, "kubelet"),
		"--config="+cfg, "--kubeconfig="+kubeconfig, "--root-dir=/var/lib/kubelet",
		"--hostname-override="+n.Name, "--node-ip="+NodeIP, "--v=2")
	t.Cleanup(n.stopKubelet)
	waitFor(t, 3*time.Minute, "node "+n.Name+" Ready", func() error {
		if n.kubelet.exited() {
			t.Fatalf("kubelet exited: %s", n.kubelet.logTail())
		}
		node, err := n.Kube.Client.CoreV1().Nodes().Get(context.Background(), n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady {
				if c.Status == corev1.ConditionTrue {
					return nil
				}
				return fmt.Errorf("Ready=%s: %s", c.Status, c.Message)
			}
		}
		return errors.New("no Ready condition yet")
	})
}

// stopKubelet stops kubelet and then everything it had containerd run:
// every process in the node's cgroups and the shims serving them.
func (n *Node) stopKubelet() {
	n.kubelet.stop()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		pids := append(n.cgroupPIDs(), n.shimPIDs()...)
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGKILL)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// shimPIDs are the containerd shims of this node: their command line names
// the node's own containerd socket.
func (n *Node) shimPIDs() []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if len(args) > 0 && strings.HasSuffix(args[0], "containerd-shim-runc-v2") && strings.Contains(string(b), n.socket) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// dumpLogs prints the end of each component's log when a test failed.
func (n *Node) dumpLogs(t *testing.T) {
	for _, name := range []string{"kubelet", "containerd", "kube-controller-manager", "kube-scheduler"} {
		b, err := os.ReadFile(filepath.Join(n.logDir, name+".log"))
		if err != nil {
			continue
		}
		if len(b) > 6000 {
			b = b[len(b)-6000:]
		}
		t.Logf("---- %s log (end) ----\n%s", name, b)
	}
	// The weir pods' own logs, as kubelet wrote them.
	logs, _ := filepath.Glob(filepath.Join(n.Dir, "var-log", "pods", "weir-system_*", "*", "*.log"))
	for _, l := range logs {
		if b, err := os.ReadFile(l); err == nil {
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("---- %s (end) ----\n%s", strings.TrimPrefix(l, n.Dir), b)
		}
	}
	if b, err := os.ReadFile(filepath.Join(n.Dir, "var-log", "weir-cni.log")); err == nil {
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		t.Logf("---- weir-cni log (end) ----\n%s", b)
	}
}

// waitFor polls f until it returns nil, failing the test after timeout
// with f's last error.
func waitFor(t testing.TB, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := Poll(timeout, f); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}

// Poll calls f every 200 ms until it returns nil or timeout passes, and
// returns the last error.
func Poll(timeout time.Duration, f func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
