#!/usr/bin/env bash
# build.sh builds the helm CLI pinned by tools/helm/go.mod, for rendering
# weir's chart in manifests/validate.sh and in manifests' Go tests. Helm is no
# Debian package here, so it is built from the Go module proxy, in this
# separate module: the project's go.mod never sees Helm's dependencies.
#
# The binary lands in a cache directory keyed by the helm version and a hash
# of this module's files and this script; when it is there, nothing is built
# (a cold build takes a few minutes on two cores).
#
#   WEIR_HELM_CACHE   parent of the cache directory (default /var/cache/weir)
#
# Prints the path of the helm binary as the last line of stdout; build logs
# go to stderr. Safe to run twice or concurrently (a lock per directory, and
# the binary arrives by one rename).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { printf 'tools/helm: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
command -v flock >/dev/null || die "flock (util-linux) is not on PATH"

version="$(cd "$here" && go list -m -f '{{.Version}}' helm.sh/helm/v3)" || die "cannot read the helm version from $here/go.mod"
hash="$(cat "$here/go.mod" "$here/go.sum" "$here/tools.go" "$here/build.sh" | sha256sum | cut -c1-12)"
dir="${WEIR_HELM_CACHE:-/var/cache/weir}/helm-$version-$hash"
bin="$dir/helm"

if [[ -x "$bin" ]]; then
	log "up to date: $bin"
	printf '%s\n' "$bin"
	exit 0
fi

mkdir -p "$dir" || die "cannot create $dir"
exec 9>"$dir.lock"
flock 9
if [[ -x "$bin" ]]; then
	log "up to date: $bin (built by a concurrent run)"
	printf '%s\n' "$bin"
	exit 0
fi

log "building helm $version into $dir"
start=$SECONDS
tmp="$(mktemp "$dir/.helm.XXXXXX")"
trap 'rm -f "$tmp"' EXIT
(
	cd "$here"
	go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$version" \
		-o "$tmp" helm.sh/helm/v3/cmd/helm
) >&2 || die "go build of helm failed"
chmod 755 "$tmp"
"$tmp" version --short >&2 || die "the built helm does not run"
mv -f "$tmp" "$bin"
trap - EXIT
log "built in $((SECONDS - start)) s: $bin"
printf '%s\n' "$bin"
