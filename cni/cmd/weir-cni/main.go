// Command weir-cni is weir's chained CNI plugin. Run by a container runtime
// (CNI_COMMAND set) it serves the CNI verbs; run by hand as
// `weir-cni install|uninstall` it chains itself into the node's conflist.
package main

import (
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weir-mesh/weir/cni/install"
	"github.com/weir-mesh/weir/cni/plugin"
)

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 && (os.Args[1] == "install" || os.Args[1] == "uninstall") {
		os.Exit(install.Main(os.Args[1:]))
	}
	skel.PluginMainFuncs(plugin.Funcs(), version.PluginSupports("1.0.0", "1.1.0"), "weir-cni: captures pod traffic for the weir node agent")
}
