#!/usr/bin/env bash
# Runs every weir test as CI does: installs what is missing, builds, vets, and
# runs unit and end-to-end tests (network namespaces, real CNI chain, real
# servers). Needs root. Safe to run twice.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "weir: the tests need root (network namespaces, iptables)" >&2; exit 1; }
hack/deps.sh
export PATH=$PATH:/usr/local/go/bin
# An older Go fetches the toolchain go.mod names through the module proxy.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
# Cached builds (first run: minutes each, cached under /var/cache/weir by a
# hash of their inputs): upstream CNI plugins for spec 1.1.0; a real
# kube-apiserver, etcd, kubectl, kubelet, controller-manager and scheduler
# for the Kubernetes and node tests; real RPC peers (a dubbo-go
# provider/consumer from tools/dubbo, sofa-bolt-node from npm; Apache's
# RocketMQ Go client from tools/rocketmq); a real
# istiod (pilot-discovery) for the xDS test against it; helm for the chart
# tests. On a cold machine they are built at the same time: most of each
# build waits on downloads, so side by side they finish in about the time of
# the longest rather than the sum. A variable already set skips its build.
builds=$(mktemp -d)
trap 'rm -rf "$builds"' EXIT
cached() { # cached VAR script...: runs script in the background unless VAR is set
	local var=$1
	shift
	[ -z "${!var:-}" ] || return 0
	touch "$builds/$var.started"
	(
		rc=0
		"$@" >"$builds/$var.out" 2>"$builds/$var.err" || rc=$?
		echo "$rc" >"$builds/$var.rc"
	) &
}
cached WEIR_CNI_PLUGINS_DIR hack/cni-plugins.sh
cached WEIR_KUBE_BIN_DIR hack/kube-binaries.sh
cached WEIR_RPC_PEERS_DIR hack/rpc-peers.sh
cached WEIR_ROCKETMQ_DIR hack/rocketmq-client.sh
cached WEIR_ISTIOD_BIN_DIR hack/istiod-binary.sh
cached WEIR_HELM bash tools/helm/build.sh
started=$SECONDS
wait
for var in WEIR_CNI_PLUGINS_DIR WEIR_KUBE_BIN_DIR WEIR_RPC_PEERS_DIR WEIR_ROCKETMQ_DIR WEIR_ISTIOD_BIN_DIR WEIR_HELM; do
	[ -e "$builds/$var.started" ] || continue
	cat "$builds/$var.err" >&2
	if [ "$(cat "$builds/$var.rc" 2>/dev/null)" != 0 ]; then
		echo "weir: the cached build for $var failed (output above)" >&2
		exit 1
	fi
	# Assign, then export, so an empty answer stops the run.
	val=$(tail -n1 "$builds/$var.out")
	[ -n "$val" ] || { echo "weir: the cached build for $var printed no path" >&2; exit 1; }
	export "$var=$val"
	echo "weir: $var=$val"
done
echo "weir: cached builds ready in $((SECONDS - started)) s"
hack/bpf-generate.sh --check
make build
go vet ./...
test -z "$(gofmt -l $(git ls-files '*.go'))" || { echo "weir: gofmt needed:" >&2; gofmt -l $(git ls-files '*.go') >&2; exit 1; }
go test -count=1 -timeout 75m ${WEIR_TEST_FLAGS:-} ./...
# Parsers and codecs: every fuzz target beyond its corpus, bounded in time.
hack/fuzz.sh
