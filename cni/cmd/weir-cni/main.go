// Command weir-cni is weir's chained CNI plugin. Run by a container runtime
// (CNI_COMMAND set) it serves the CNI verbs; run by hand as
// `weir-cni install|uninstall` it chains itself into the node's conflist.
//
// It links no rule code (netlink, nftables, iptables, eBPF) and no
// installer: it is the binary a runtime starts at every pod ADD, and the
// agent programs the rules of an ADD. What needs more in the plugin's own
// process (CHECK, a DEL with the agent down, an ADD answered by an older
// agent, install and uninstall) is handed to weir-cni-rules, installed
// beside it.
package main

import (
	"fmt"
	"os"

	"github.com/weir-mesh/weir/cni/plugin"
)

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 && (os.Args[1] == "install" || os.Args[1] == "uninstall") {
		// The installer (libcni, file watching) costs every CNI verb
		// about 0.2 ms of CPU at start when linked here; it runs in the
		// helper, which installs this binary and itself.
		err := plugin.ExecHelper(os.Args[1:])
		fmt.Fprintf(os.Stderr, "weir-cni %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
	plugin.Main(nil, "weir-cni: captures pod traffic for the weir node agent")
}
