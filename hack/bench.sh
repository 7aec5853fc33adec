#!/usr/bin/env bash
# Runs weir's side-by-side performance suite: builds a test world of network
# namespaces (node, client and server pods through the real CNI chain) and
# measures direct, weir (L7 and L4) and peer proxies (nginx, haproxy, a Go
# relay) under keep-alive HTTP/1.1, a connection per request, keep-alive
# HTTP/2 (h2c), bulk and ping-pong. Needs root.
#
#   hack/bench.sh            full run (about 20 minutes on 2 cores), rewrites docs/benchmarks.md
#   hack/bench.sh --quick    smoke run (about a minute), leaves docs/ alone
#   hack/bench.sh --profile DIR   also records weir-agent with perf per workload
#   hack/bench.sh --baseline-agent BIN   also runs BIN (an older weir-agent build) on
#                            nodes of its own: paths weir-<mode>-base[-l4], before/after in one run
#
# Any other flag goes to weir-bench (see `go run ./bench/cmd/weir-bench -h`).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "weir: the bench needs root (network namespaces, iptables)" >&2; exit 1; }
hack/deps.sh
export PATH=$PATH:/usr/local/go/bin

out=$(mktemp -d /tmp/weir-bench-XXXXXX)
go build -o "$out/weir-bench" ./bench/cmd/weir-bench
args=("$@")
doc=()
case " $* " in
  *" --quick "* | *" -quick "* | *" --doc "* | *" -doc "*) ;;
  *) doc=(--doc docs/benchmarks.md) ;;
esac
# A full run also counts each proxy's syscalls and context switches with perf
# (one extra unrecorded run per cell) and samples weir-agent's CPU.
case " $* " in
  *" --quick "* | *" -quick "* | *"-profile"*) ;;
  *) command -v perf >/dev/null && doc+=(--profile "$out/profile") ;;
esac
if [ $# -eq 0 ]; then export WEIR_BENCH_COMMAND="make bench"; else export WEIR_BENCH_COMMAND="hack/bench.sh $*"; fi
exec "$out/weir-bench" --json "$out/results.json" "${doc[@]}" "${args[@]}"
