#!/usr/bin/env bash
# Runs weir's demo: a node made of network namespaces, pods attached by the
# real CNI chain with weir-cni chained last, the agent, and a client reaching a
# virtual service through it. Needs root; tears everything down at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "weir: the demo needs root (network namespaces, iptables)" >&2; exit 1; }
hack/deps.sh
export PATH=$PATH:/usr/local/go/bin
# An older Go fetches the toolchain go.mod names through the module proxy.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
exec go run ./integration/demo "$@"
