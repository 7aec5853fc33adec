// Command weir-cni-rules is weir-cni's rules helper: the same CNI verbs,
// with the rule code linked in, so it programs, verifies and removes
// capture rules in a pod's namespace itself. weir-cni hands it the verbs
// that need that (CHECK, a DEL with the agent down, an ADD answered by an
// older agent) by exec'ing it with the same environment and config; it is
// installed beside weir-cni and is not listed in a conflist. It also runs
// `weir-cni install|uninstall`, which weir-cni hands it the same way.
package main

import (
	"os"

	"github.com/weir-mesh/weir/cni/convert"
	"github.com/weir-mesh/weir/cni/install"
	"github.com/weir-mesh/weir/cni/plugin"
	"github.com/weir-mesh/weir/cni/rules"
)

func main() {
	if os.Getenv("CNI_COMMAND") == "" && len(os.Args) > 1 && (os.Args[1] == "install" || os.Args[1] == "uninstall") {
		os.Exit(install.Main(os.Args[1:]))
	}
	plugin.ConvertPrevResult = convert.PrevResult
	plugin.Main(rules.Redirect{}, "weir-cni-rules: weir-cni's rule programming (CHECK, DEL without the agent)")
}
