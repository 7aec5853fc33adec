// Command weir-cni is weir's chained CNI plugin. Run by a container runtime
// (CNI_COMMAND set) it serves the CNI verbs; run by hand as
// `weir-cni install|uninstall` it chains itself into the node's conflist.
//
// It links no rule code (netlink, nftables, iptables, eBPF): it is the
// binary a runtime starts at every pod ADD, and the agent programs the
// rules of an ADD. What needs rule code in the plugin's own process (CHECK,
// a DEL with the agent down, an ADD answered by an older agent) is handed to
// weir-cni-rules, installed beside it.
package main

import (
	"os"

	"github.com/weir-mesh/weir/cni/install"
	"github.com/weir-mesh/weir/cni/plugin"
)

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 && (os.Args[1] == "install" || os.Args[1] == "uninstall") {
		os.Exit(install.Main(os.Args[1:]))
	}
	plugin.Main(nil, "weir-cni: captures pod traffic for the weir node agent")
}
