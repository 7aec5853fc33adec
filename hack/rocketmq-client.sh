#!/usr/bin/env bash
# rocketmq-client.sh builds rmq-client (tools/rocketmq, its own Go module so
# the project's go.mod never sees rocketmq-client-go's dependencies): Apache
# RocketMQ's Go client as a producer and push consumer, for weir's
# end-to-end RocketMQ test.
#
# Like hack/kube-binaries.sh, the result lands in a cache directory keyed by
# a hash of its inputs (tools/rocketmq, this script); a complete directory is
# reused as is. The directory is printed as the last line of stdout; logs go
# to stderr.
#
#   WEIR_ROCKETMQ_CACHE   parent of the directory (default /var/cache/weir)
#
# Typical use:  export WEIR_ROCKETMQ_DIR="$(hack/rocketmq-client.sh | tail -n1)"
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/tools/rocketmq"
script="$root/hack/rocketmq-client.sh"

log() { printf 'rocketmq-client: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
command -v flock >/dev/null || die "flock (util-linux) is not on PATH"

hash="$(cd "$module" && { find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) | LC_ALL=C sort | xargs cat; cat "$script"; } | sha256sum | cut -c1-16)"
parent="${WEIR_ROCKETMQ_CACHE:-/var/cache/weir}"
dir="$parent/rocketmq-client-$hash"
mkdir -p "$parent" || die "cannot create $parent"
if [[ -x "$dir/rmq-client" ]]; then
	log "up to date: $dir"
	printf '%s\n' "$dir"
	exit 0
fi
exec 9>"$dir.lock"
flock 9
if [[ ! -x "$dir/rmq-client" ]]; then
	tmp="$(mktemp -d "$parent/.rocketmq-client.XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	log "building rmq-client (tools/rocketmq) into $dir"
	(cd "$module" && go build -trimpath -ldflags '-s -w' -o "$tmp/rmq-client" ./cmd/rmq-client) >&2 ||
		die "go build in $module failed"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	chmod 755 "$dir"
	trap - EXIT
fi
printf '%s\n' "$dir"
