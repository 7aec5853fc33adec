#!/usr/bin/env bash
# kube-binaries.sh builds the real control plane weir's integration tests run
# against: kube-apiserver and kubectl (k8s.io/kubernetes v1.32.13) and etcd
# 3.5, plus what a real node needs (integration/nodeworld): kubelet,
# kube-controller-manager and kube-scheduler; all from the separate Go module
# in tools/kube, so the project's own go.mod never sees Kubernetes'
# dependency graph. One go build shares the compiled packages: the three node
# binaries add about 3 minutes to a warm build cache and ~10 to a cold one.
#
# The binaries land in a cache directory keyed by a hash of everything that
# decides their content (tools/kube's files and this script). When that
# directory already holds all of them, nothing is built, so CI pays the cold
# build (several minutes) only when tools/kube or this script changes.
#
#   WEIR_KUBE_BIN_DIR   use this directory instead of the default; it is
#                       rebuilt when its recorded input hash differs
#   WEIR_KUBE_CACHE     parent of the default directory (/var/cache/weir)
#
# The directory is printed as the last line of stdout; build logs go to
# stderr. Safe to run twice or concurrently: runs for one directory take a
# lock and a finished build is moved into place in one rename.
#
# Typical use:  export WEIR_KUBE_BIN_DIR="$(hack/kube-binaries.sh | tail -n1)"
set -euo pipefail

k8s_version=v1.32.13
binaries=(kube-apiserver kubectl kubelet kube-controller-manager kube-scheduler etcd)

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/tools/kube"
script="$root/hack/kube-binaries.sh"

log() { printf 'kube-binaries: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v go >/dev/null || die "go is not on PATH"
command -v flock >/dev/null || die "flock (util-linux) is not on PATH"
[[ -f "$module/go.mod" ]] || die "$module/go.mod not found"

# Hash every file of the tools module (sorted by path, path included) plus
# this script, so any change to a pin, a main or a build flag changes the key.
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
if [[ -n "${WEIR_KUBE_BIN_DIR:-}" ]]; then
	dir="$WEIR_KUBE_BIN_DIR"
else
	dir="${WEIR_KUBE_CACHE:-/var/cache/weir}/kube-$hash"
fi
dir="${dir%/}"
parent="$(dirname "$dir")"
mkdir -p "$parent" || die "cannot create $parent"

complete() {
	local b
	[[ -f "$1/.inputs-hash" && "$(cat "$1/.inputs-hash")" == "$hash" ]] || return 1
	for b in "${binaries[@]}"; do
		[[ -x "$1/$b" ]] || return 1
	done
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

tmp="$(mktemp -d "$parent/.kube-build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

version_pkg_flags() {
	local pkg="$1" minor="${k8s_version#v1.}"
	minor="${minor%%.*}"
	printf -- '-X %s.gitVersion=%s -X %s.gitMajor=1 -X %s.gitMinor=%s -X %s.gitTreeState=clean ' \
		"$pkg" "$k8s_version" "$pkg" "$pkg" "$minor" "$pkg"
}
ldflags="-s -w $(version_pkg_flags k8s.io/component-base/version)$(version_pkg_flags k8s.io/client-go/pkg/version)"

log "building ${binaries[*]} ($k8s_version, etcd from tools/kube) into $dir"
start=$SECONDS
# One go build for all of them lets the go command share compiled packages and
# overlap the links. -p is left to Go (GOMAXPROCS): with 24 GB the ~2 GB per
# link is no constraint, and -p=1 only makes the cold build slower.
(
	cd "$module"
	go build -trimpath -ldflags "$ldflags" -o "$tmp/" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kubectl \
		k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		./cmd/etcd
) >&2 || die "go build in $module failed"

for b in "${binaries[@]}"; do
	[[ -x "$tmp/$b" ]] || die "go build produced no $b"
done
printf '%s\n' "$hash" >"$tmp/.inputs-hash"

# Install file by file, never replacing the directory itself (it may be a
# caller's WEIR_KUBE_BIN_DIR holding other files). Readers trust the
# directory only once .inputs-hash matches, so that file goes first out and
# last in; each binary arrives by one rename, so a running process keeps
# its old inode.
mkdir -p "$dir"
chmod 755 "$dir"
rm -f "$dir/.inputs-hash"
for b in "${binaries[@]}"; do
	mv -f "$tmp/$b" "$dir/$b"
done
mv -f "$tmp/.inputs-hash" "$dir/.inputs-hash"
rm -rf "$tmp"
trap - EXIT
log "built in $((SECONDS - start)) s: $dir"
printf '%s\n' "$dir"
