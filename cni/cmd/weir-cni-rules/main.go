// Command weir-cni-rules is weir-cni's rules helper: the same CNI verbs,
// with the rule code linked in, so it programs, verifies and removes
// capture rules in a pod's namespace itself. weir-cni hands it the verbs
// that need that (CHECK, a DEL with the agent down, an ADD answered by an
// older agent) by exec'ing it with the same environment and config; it is
// installed beside weir-cni and is not listed in a conflist.
package main

import (
	"github.com/weir-mesh/weir/cni/plugin"
	"github.com/weir-mesh/weir/cni/rules"
)

func main() {
	plugin.Main(rules.Redirect{}, "weir-cni-rules: weir-cni's rule programming (CHECK, DEL without the agent)")
}
