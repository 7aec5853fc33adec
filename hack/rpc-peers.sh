#!/usr/bin/env bash
# rpc-peers.sh builds the real RPC peers weir's end-to-end tests run:
#   dubbo-peer      a dubbo-go v3 provider/consumer (tools/dubbo, its own Go
#                   module, so the project's go.mod never sees dubbo-go's
#                   dependency graph)
#   node_modules/   sofa-bolt-node from the npm registry, pinned, for the
#                   SOFABolt client and servers (run by the machine's Node.js)
#
# Like hack/kube-binaries.sh, the result lands in a cache directory keyed by
# a hash of its inputs (tools/dubbo, the npm pins, this script); a complete
# directory is reused as is. The directory is printed as the last line of
# stdout; logs go to stderr.
#
#   WEIR_RPC_PEERS_CACHE   parent of the directory (default /var/cache/weir)
#
# Typical use:  export WEIR_RPC_PEERS_DIR="$(hack/rpc-peers.sh | tail -n1)"
set -euo pipefail

bolt_version=2.0.1

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/tools/dubbo"
script="$root/hack/rpc-peers.sh"

log() { printf 'rpc-peers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
command -v npm >/dev/null || die "npm is not on PATH (Debian package npm)"
command -v flock >/dev/null || die "flock (util-linux) is not on PATH"

inputs_hash() {
	(
		cd "$module"
		find . -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) -print0 |
			LC_ALL=C sort -z |
			while IFS= read -r -d '' f; do
				printf '%s\n' "$f"
				cat "$f"
			done
		cat "$script"
	) | sha256sum | cut -c1-16
}

hash="$(inputs_hash)"
parent="${WEIR_RPC_PEERS_CACHE:-/var/cache/weir}"
dir="$parent/rpc-peers-$hash"
mkdir -p "$parent" || die "cannot create $parent"

complete() {
	[[ -f "$1/.inputs-hash" && "$(cat "$1/.inputs-hash")" == "$hash" ]] &&
		[[ -x "$1/dubbo-peer" ]] &&
		[[ -f "$1/node_modules/sofa-bolt-node/package.json" ]]
}

if complete "$dir"; then
	log "up to date: $dir"
	printf '%s\n' "$dir"
	exit 0
fi

exec 9>"$dir.lock"
flock 9
if complete "$dir"; then
	printf '%s\n' "$dir"
	exit 0
fi

tmp="$(mktemp -d "$parent/.rpc-peers.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
start=$SECONDS
log "building dubbo-peer (tools/dubbo) into $dir"
(cd "$module" && go build -trimpath -ldflags '-s -w' -o "$tmp/dubbo-peer" ./cmd/dubbo-peer) >&2 ||
	die "go build in $module failed"
log "installing sofa-bolt-node@$bolt_version from npm"
(
	cd "$tmp"
	printf '{"name":"weir-rpc-peers","private":true}\n' >package.json
	npm install --no-audit --no-fund --ignore-scripts --loglevel=error "sofa-bolt-node@$bolt_version"
) >&2 || die "npm install sofa-bolt-node@$bolt_version failed"
printf '%s\n' "$hash" >"$tmp/.inputs-hash"
rm -rf "$dir"
mv "$tmp" "$dir"
chmod 755 "$dir"
trap - EXIT
log "built in $((SECONDS - start)) s: $dir"
printf '%s\n' "$dir"
