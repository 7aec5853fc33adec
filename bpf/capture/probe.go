package capture

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// ErrUnsupported is wrapped by every error of Probe: the node lacks
// something eBPF capture needs, and the message names it.
var ErrUnsupported = errors.New("eBPF capture unsupported on this node")

// Probe reports the first thing the node lacks for eBPF capture, naming it,
// or nil. It asks the kernel (cilium/ebpf's feature probes load tiny
// programs; bpftool's probe is known to lie about some of these), then
// checks that cgroup is a cgroup v2 directory, that pinPath's parent is a
// bpffs, and that no cgroup v1 net_cls or net_prio hierarchy is mounted:
// once either is used, the kernel silently stops running cgroup-BPF socket
// programs ("disabling cgroup2 socket matching"), and captured pods would
// reach everything around the agent.
func Probe(pinPath, cgroup string) error {
	fail := func(what string, err error) error {
		return fmt.Errorf("%w: %s: %v", ErrUnsupported, what, err)
	}
	for _, pt := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.SockOps, ebpf.SkLookup, ebpf.SkMsg} {
		if err := features.HaveProgramType(pt); err != nil {
			return fail("program type "+pt.String(), err)
		}
	}
	for _, mt := range []ebpf.MapType{ebpf.Hash, ebpf.LRUHash, ebpf.LPMTrie, ebpf.SkStorage, ebpf.SockHash, ebpf.PerCPUArray} {
		if err := features.HaveMapType(mt); err != nil {
			return fail("map type "+mt.String(), err)
		}
	}
	for _, h := range []struct {
		pt ebpf.ProgramType
		fn asm.BuiltinFunc
	}{
		{ebpf.CGroupSockAddr, asm.FnGetNetnsCookie},
		{ebpf.CGroupSockAddr, asm.FnGetCurrentCgroupId},
		{ebpf.CGroupSockAddr, asm.FnSkStorageGet},
		{ebpf.CGroupSockAddr, asm.FnSkLookupTcp},
		{ebpf.SockOps, asm.FnGetNetnsCookie},
		{ebpf.SockOps, asm.FnSkStorageGet},
		{ebpf.SkLookup, asm.FnSkAssign},
		{ebpf.SockOps, asm.FnSockHashUpdate},
		{ebpf.SkMsg, asm.FnMsgRedirectHash},
		{ebpf.SkMsg, asm.FnSkStorageGet},
		{ebpf.SkMsg, asm.FnGetNetnsCookie},
	} {
		if err := features.HaveProgramHelper(h.pt, h.fn); err != nil {
			return fail(fmt.Sprintf("helper %s in %s programs", h.fn, h.pt), err)
		}
	}
	if err := checkFS(cgroup, unix.CGROUP2_SUPER_MAGIC, "cgroup2"); err != nil {
		return fail("cgroup v2 hierarchy", err)
	}
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	if err := checkFS(filepath.Dir(pinPath), unix.BPF_FS_MAGIC, "bpffs"); err != nil {
		return fail("bpffs", err)
	}
	if c, err := netClsActive(); err != nil {
		return fail("cgroup v1 controllers", err)
	} else if c != "" {
		return fail("cgroup v1 "+c, fmt.Errorf("the %s controller is mounted as a cgroup v1 hierarchy; once used it disables cgroup-BPF socket programs for new sockets (unmount it, or use redirect or tproxy mode)", c))
	}
	return nil
}

// netClsActive returns net_cls or net_prio when /proc/cgroups shows it
// bound to a cgroup v1 hierarchy.
func netClsActive() (string, error) {
	f, err := os.Open("/proc/cgroups")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		if len(fs) < 4 || (fs[0] != "net_cls" && fs[0] != "net_prio") {
			continue
		}
		if fs[1] != "0" && fs[3] == "1" {
			return fs[0], nil
		}
	}
	return "", sc.Err()
}

// Cgroup2Mount returns where a cgroup v2 hierarchy is mounted, by
// /proc/self/mountinfo: /sys/fs/cgroup on a pure v2 host,
// /sys/fs/cgroup/unified on many hybrid ones; "" when none is.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts ... - fstype source opts
		line := sc.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		pre, post := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(pre) >= 5 && len(post) >= 1 && post[0] == "cgroup2" && pre[3] == "/" {
			return pre[4], nil
		}
	}
	return "", sc.Err()
}

// EnsureCgroup2 returns a cgroup v2 mount, mounting one at dir when the
// host has none (a cgroup v1 host).
func EnsureCgroup2(dir string) (string, error) {
	if m, err := Cgroup2Mount(); err != nil || m != "" {
		return m, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := unix.Mount("none", dir, "cgroup2", 0, ""); err != nil {
		return "", fmt.Errorf("mount cgroup2 at %s: %w", dir, err)
	}
	return dir, nil
}

// EnsureBPFFS mounts a bpffs at dir unless one is there already.
func EnsureBPFFS(dir string) error {
	if checkFS(dir, unix.BPF_FS_MAGIC, "bpffs") == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := unix.Mount("bpf", dir, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs at %s: %w", dir, err)
	}
	return nil
}

// SelfCgroupID returns the cgroup v2 id of the calling process (the agent):
// the inode of its directory under the cgroup v2 mount.
func SelfCgroupID(mount string) (uint64, error) {
	dir, err := SelfCgroup(mount)
	if err != nil {
		return 0, err
	}
	return inode(dir)
}

// SelfCgroup is the calling process's cgroup v2 directory under mount.
func SelfCgroup(mount string) (string, error) {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			return filepath.Join(mount, rest), nil
		}
	}
	return "", errors.New("no cgroup v2 entry in /proc/self/cgroup")
}
