package nodeworld

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

const cgroupFS = "/sys/fs/cgroup"

// cgroupHierarchies lists the mounted cgroup hierarchies (v1 controllers,
// named ones and a v2 "unified" one alike).
func cgroupHierarchies() []string {
	entries, _ := os.ReadDir(cgroupFS)
	var out []string
	for _, e := range entries {
		p := filepath.Join(cgroupFS, e.Name())
		if _, err := os.Stat(filepath.Join(p, "cgroup.procs")); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// makeCgroupRoot creates the node's cgroup root in every hierarchy (kubelet
// requires it to exist) and removes the whole subtree at teardown, after
// every process in it is gone. A root of the node's own keeps kubelet's
// kubepods away from the host's cgroups.
func (n *Node) makeCgroupRoot(t *testing.T) {
	t.Helper()
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, n.cgroupRoot)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatalf("cgroup root for kubelet: %v", err)
		}
		if filepath.Base(h) == "cpuset" {
			// A v1 cpuset cgroup takes no task until it has cpus and mems.
			for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
				if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
					os.WriteFile(filepath.Join(dir, f), b, 0o644)
				}
			}
		}
	}
	t.Cleanup(func() {
		if err := n.removeCgroupRoot(); err != nil {
			t.Errorf("remove kubelet cgroups: %v", err)
		}
	})
}

// cgroupPIDs lists the processes in the node's cgroups (containers).
func (n *Node) cgroupPIDs() []int {
	seen := map[int]bool{}
	var pids []int
	for _, h := range cgroupHierarchies() {
		filepath.WalkDir(filepath.Join(h, n.cgroupRoot), func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupRoot removes the node's cgroup subtrees, deepest first,
// retrying while the last processes leave.
func (n *Node) removeCgroupRoot() error {
	var last error
	for range 50 {
		last = nil
		for _, h := range cgroupHierarchies() {
			root := filepath.Join(h, n.cgroupRoot)
			var dirs []string
			filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err == nil && d.IsDir() {
					dirs = append(dirs, p)
				}
				return nil
			})
			sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
			for _, d := range dirs {
				if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
					last = err
				}
			}
		}
		if last == nil {
			return nil
		}
		time.Sleep(200 * time.Millisecond)
	}
	return last
}

// saveSysctls records the global sysctls kubelet changes and restores them
// at teardown.
func (n *Node) saveSysctls(t *testing.T) {
	t.Helper()
	saved := map[string][]byte{}
	for _, s := range kubeletSysctls {
		p := filepath.Join("/proc/sys", s)
		b, err := os.ReadFile(p)
		if err != nil {
			continue // not on this kernel: kubelet skips it too
		}
		saved[p] = b
	}
	t.Cleanup(func() {
		for p, b := range saved {
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Errorf("restore sysctl %s: %v", p, err)
			}
			if now, _ := os.ReadFile(p); strings.TrimSpace(string(now)) != strings.TrimSpace(string(b)) {
				t.Errorf("sysctl %s is %q after restoring %q", p, now, b)
			}
		}
	})
}

// String names the node for messages.
func (n *Node) String() string { return fmt.Sprintf("node %s (%s)", n.Name, NodeIP) }
