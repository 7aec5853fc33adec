package install

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"

	"github.com/containernetworking/cni/libcni"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// debianPlugins is where Debian's containernetworking-plugins package puts the
// reference plugins.
const debianPlugins = "/usr/lib/cni"

// require fails under CI=true and skips elsewhere when a prerequisite is
// missing: a skipped test proves nothing, so CI must not pass by skipping.
func require(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing prerequisite: %s", what)
	}
	t.Skipf("missing prerequisite: %s", what)
}

// TestInstalledChainRunsThroughLibcni installs into a bridge conflist and runs
// the result exactly as a runtime would: the first file by name, loaded by
// libcni, ADD/CHECK/DEL against a pod netns, with the bridge living in a node
// netns the test creates (nothing touches the root netns).
//
// weir-cni itself is built by another package, so Debian's `tuning` plugin is
// installed under weir's entry in its place: it proves the written list is one
// libcni executes, that the primary's plugins still work after the rewrite and
// that the last plugin gets the primary's result. The chain with the real
// weir-cni is the integration suite's job.
func TestInstalledChainRunsThroughLibcni(t *testing.T) {
	require(t, os.Geteuid() == 0, "root (to create network namespaces)")
	for _, p := range []string{"bridge", "host-local", "tuning"} {
		_, err := os.Stat(filepath.Join(debianPlugins, p))
		require(t, err == nil, "CNI plugin "+filepath.Join(debianPlugins, p)+" (apt-get install containernetworking-plugins)")
	}
	_, err := exec.LookPath("ip")
	require(t, err == nil, "iproute2")

	n := newNode(t)
	ipamDir := t.TempDir() // host-local's leases stay out of /var/lib/cni
	n.write(t, "10-weirtest.conf", `{"cniVersion":"1.0.0","name":"weirtest","type":"bridge","bridge":"weirbr0",
		"isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","dataDir":"`+ipamDir+`",
		"ranges":[[{"subnet":"10.199.0.0/24"}]]}}`, 0o644)
	o := n.options()
	o.PluginType = "tuning"
	o.BinarySource = filepath.Join(debianPlugins, "tuning")
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}

	files, err := libcni.ConfFiles(n.conf, confExtensions)
	if err != nil || len(files) == 0 {
		t.Fatalf("conf files: %v %v", files, err)
	}
	sort.Strings(files)
	list, err := libcni.ConfListFromFile(files[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := list.Plugins[len(list.Plugins)-1].Network.Type; got != "tuning" {
		t.Fatalf("runtime's list ends with %q", got)
	}

	nodeNS, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nodeNS.Close(); testutils.UnmountNS(nodeNS) })
	podNS, err := testutils.NewNS()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { podNS.Close(); testutils.UnmountNS(podNS) })

	cni := libcni.NewCNIConfig([]string{n.bin, debianPlugins}, nil)
	rt := &libcni.RuntimeConf{ContainerID: "weir-install-test", NetNS: podNS.Path(), IfName: "eth0"}
	ctx := context.Background()
	err = nodeNS.Do(func(ns.NetNS) error {
		res, err := cni.AddNetworkList(ctx, list, rt)
		if err != nil {
			return err
		}
		t.Cleanup(func() {
			_ = nodeNS.Do(func(ns.NetNS) error { return cni.DelNetworkList(ctx, list, rt) })
		})
		r, err := types100.NewResultFromResult(res)
		if err != nil {
			return err
		}
		if len(r.IPs) != 1 || r.IPs[0].Address.IP.String() != "10.199.0.2" {
			t.Errorf("result IPs %v, want 10.199.0.2 from the bridge's IPAM passed through", r.IPs)
		}
		if err := cni.CheckNetworkList(ctx, list, rt); err != nil {
			t.Errorf("CHECK: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("ADD through the installed chain: %v", err)
	}
	err = podNS.Do(func(ns.NetNS) error {
		link, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if len(addrs) != 1 || addrs[0].IP.String() != "10.199.0.2" {
			t.Errorf("pod eth0 addresses %v", addrs)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := nodeNS.Do(func(ns.NetNS) error { return cni.DelNetworkList(ctx, list, rt) }); err != nil {
		t.Errorf("DEL: %v", err)
	}
}
