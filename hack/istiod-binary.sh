#!/usr/bin/env bash
# istiod-binary.sh builds a real istiod (istio.io/istio's pilot-discovery) for
# the integration test that points weir's xDS client at it. The version is
# pinned in tools/istiod, a Go module of its own, so the project's go.mod
# never sees Istio's dependency graph.
#
# The binary lands in a cache directory keyed by a hash of everything that
# decides its content (tools/istiod's go.mod and go.sum, and this script).
# When that directory already holds it, nothing is built: CI pays the cold
# build (~12 min on two busy cores, ~2.8 GB peak memory) only when the pin or
# this script changes.
#
#   WEIR_ISTIOD_BIN_DIR  use this directory instead of the default; it is
#                        rebuilt when its recorded input hash differs
#   WEIR_ISTIOD_CACHE    parent of the default directory (/var/cache/weir)
#
# The directory is printed as the last line of stdout; build logs go to
# stderr. Safe to run twice or concurrently: runs for one directory take a
# lock, and the finished binary is moved into place by one rename.
#
# Typical use:  export WEIR_ISTIOD_BIN_DIR="$(hack/istiod-binary.sh | tail -n1)"
set -euo pipefail

binary=pilot-discovery
pkg=istio.io/istio/pilot/cmd/pilot-discovery

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/tools/istiod"
script="$root/hack/istiod-binary.sh"

log() { printf 'istiod-binary: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
command -v flock >/dev/null || die "flock (util-linux) is not on PATH"
[[ -f "$module/go.mod" ]] || die "$module/go.mod not found"

# go.mod holds the pin (the tool line and istio.io/istio's version), go.sum
# the exact content of every dependency; with this script they decide the
# binary.
inputs_hash() {
	(
		cd "$module"
		for f in go.mod go.sum; do
			printf '%s\n' "$f"
			cat "$f"
		done
		cat "$script"
	) | sha256sum | cut -c1-16
}

hash="$(inputs_hash)"
if [[ -n "${WEIR_ISTIOD_BIN_DIR:-}" ]]; then
	dir="$WEIR_ISTIOD_BIN_DIR"
else
	dir="${WEIR_ISTIOD_CACHE:-/var/cache/weir}/istiod-$hash"
fi
dir="${dir%/}"
parent="$(dirname "$dir")"
mkdir -p "$parent" || die "cannot create $parent"

complete() {
	[[ -f "$1/.inputs-hash" && "$(cat "$1/.inputs-hash")" == "$hash" && -x "$1/$binary" ]]
}

if complete "$dir"; then
	log "up to date: $dir"
	printf '%s\n' "$dir"
	exit 0
fi

exec 9>"$dir.lock"
log "waiting for lock $dir.lock"
flock 9

# Another run may have finished the build while this one waited.
if complete "$dir"; then
	log "up to date: $dir (built by a concurrent run)"
	printf '%s\n' "$dir"
	exit 0
fi

tmp="$(mktemp -d "$parent/.istiod-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

log "building $binary ($(grep -m1 'istio.io/istio ' "$module/go.mod" | awk '{print $2}')) into $dir"
start=$SECONDS
(
	cd "$module"
	go build -trimpath -ldflags '-s -w' -o "$tmp/$binary" "$pkg"
) >&2 || die "go build in $module failed"
[[ -x "$tmp/$binary" ]] || die "go build produced no $binary"
printf '%s\n' "$hash" >"$tmp/.inputs-hash"

# The hash file goes first out and last in, so a reader never trusts a
# directory whose binary is from another pin.
mkdir -p "$dir"
chmod 755 "$dir"
rm -f "$dir/.inputs-hash"
mv -f "$tmp/$binary" "$dir/$binary"
mv -f "$tmp/.inputs-hash" "$dir/.inputs-hash"
rm -rf "$tmp"
trap - EXIT
log "built in $((SECONDS - start)) s: $dir"
printf '%s\n' "$dir"
