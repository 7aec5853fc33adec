// Command weir-cni is weir's chained CNI plugin. Run by a container runtime
// (CNI_COMMAND set) it serves the CNI verbs; run by hand as
// `weir-cni install|uninstall` it chains itself into the node's conflist.
package main

import (
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weir-mesh/weir/cni/plugin"
)

func main() {
	skel.PluginMainFuncs(plugin.Funcs(), version.PluginSupports("1.0.0", "1.1.0"), "weir-cni: captures pod traffic for the weir node agent")
}
