package testworld

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/bpf/capture"
)

// ebpfNode prepares a node for eBPF capture (NodeOptions.EBPF): a private
// bpffs for the agent's pins, and a cgroup v2 directory for the node whose
// children hold each pod's processes; the agent attaches there, so nothing
// outside the test is ever seen by its programs. Both go at cleanup, which
// also detaches everything pinned.
func (n *Node) ebpfNode(t T) {
	t.Helper()
	mount, err := capture.EnsureCgroup2("/run/weir-test-cgroup2")
	Require(t, err == nil && mount != "", fmt.Sprintf("a cgroup v2 hierarchy (mount one with: mount -t cgroup2 none DIR): %v", err))
	bpffs := filepath.Join(n.Dir, "bpffs")
	if err := os.MkdirAll(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		Require(t, false, fmt.Sprintf("a bpffs (mount -t bpf): %v", err))
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	n.PinPath = filepath.Join(bpffs, "weir")
	cg, err := os.MkdirTemp(mount, "weir-node-")
	if err != nil {
		t.Fatalf("create node cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroup(cg) })
	n.Cgroup = cg
	if err := capture.Probe(n.PinPath, n.Cgroup); err != nil {
		Require(t, false, err.Error())
	}
	// The agent runs in a cgroup of its own below the node's, as an agent
	// pod sits below the cgroup capture attaches to: the programs see its
	// sockets (the acceleration needs its accepted and upstream sockets),
	// and it exempts its cgroup from capture.
	agentCg := filepath.Join(cg, "weir-agent")
	if err := os.Mkdir(agentCg, 0o755); err != nil {
		t.Fatalf("create agent cgroup: %v", err)
	}
	f, err := os.Open(agentCg)
	if err != nil {
		t.Fatal(err)
	}
	n.agentCgroupFD = int(f.Fd())
	t.Cleanup(func() {
		f.Close()
		removeCgroup(agentCg)
	})
}

// podCgroup puts the pod's future processes in a cgroup of their own below
// the node's (SysProcAttr.UseCgroupFD), as a runtime does.
func (n *Node) podCgroup(t T, p *Pod) {
	t.Helper()
	dir := filepath.Join(n.Cgroup, p.Netns.Name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create pod cgroup: %v", err)
	}
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	p.Netns.cgroupFD = int(f.Fd())
	t.Cleanup(func() {
		f.Close()
		removeCgroup(dir)
	})
}

// removeCgroup removes a cgroup directory once its processes are gone.
func removeCgroup(dir string) {
	for i := 0; i < 100; i++ {
		if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ebpfSettings is the agent's capture.ebpf for this node.
func (n *Node) ebpfSettings() map[string]any {
	m := map[string]any{"pinPath": n.PinPath, "cgroup": n.Cgroup}
	if n.Opts.EBPFAccelerate {
		m["accelerate"] = true
	}
	if n.Opts.EBPFNoAccelerate {
		m["accelerate"] = false
	}
	if n.Opts.EBPFSplice {
		m["splice"] = true
	}
	return m
}
