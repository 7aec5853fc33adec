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
# Cached builds (first run: minutes): upstream CNI plugins for spec 1.1.0,
# a real kube-apiserver, etcd and kubectl for the Kubernetes tests, and a
# real istiod (pilot-discovery) for the xDS test against it.
# Assign, then export, so a failed build stops the run.
WEIR_CNI_PLUGINS_DIR=${WEIR_CNI_PLUGINS_DIR:-$(hack/cni-plugins.sh | tail -n1)}
export WEIR_CNI_PLUGINS_DIR
WEIR_KUBE_BIN_DIR=${WEIR_KUBE_BIN_DIR:-$(hack/kube-binaries.sh | tail -n1)}
export WEIR_KUBE_BIN_DIR
# Real RPC peers: a dubbo-go provider/consumer (tools/dubbo) and
# sofa-bolt-node from npm.
WEIR_RPC_PEERS_DIR=${WEIR_RPC_PEERS_DIR:-$(hack/rpc-peers.sh | tail -n1)}
export WEIR_RPC_PEERS_DIR
# Apache's RocketMQ Go client (tools/rocketmq).
WEIR_ROCKETMQ_DIR=${WEIR_ROCKETMQ_DIR:-$(hack/rocketmq-client.sh | tail -n1)}
export WEIR_ROCKETMQ_DIR
WEIR_ISTIOD_BIN_DIR=${WEIR_ISTIOD_BIN_DIR:-$(hack/istiod-binary.sh | tail -n1)}
export WEIR_ISTIOD_BIN_DIR
hack/bpf-generate.sh --check
make build
go vet ./...
test -z "$(gofmt -l $(git ls-files '*.go'))" || { echo "weir: gofmt needed:" >&2; gofmt -l $(git ls-files '*.go') >&2; exit 1; }
go test -count=1 -timeout 75m ${WEIR_TEST_FLAGS:-} ./...
# Parsers and codecs: every fuzz target beyond its corpus, bounded in time.
hack/fuzz.sh
