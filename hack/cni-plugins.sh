#!/usr/bin/env bash
# Builds the upstream CNI reference plugins (spec 1.1.0: STATUS and GC) that
# the test world uses beside Debian's (spec 1.0.0). Cached by version; safe to
# run twice and concurrently. Prints the directory on its last line.
set -euo pipefail
version=${CNI_PLUGINS_VERSION:-v1.7.1}
dir=${WEIR_CNI_PLUGINS_DIR:-/var/cache/weir/cni-plugins-$version}
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9
if [ ! -x "$dir/bridge" ] || [ ! -x "$dir/host-local" ] || [ ! -x "$dir/loopback" ] || [ ! -x "$dir/portmap" ]; then
  for p in main/bridge ipam/host-local main/loopback meta/portmap meta/tuning; do
    GOBIN="$dir" GOFLAGS=-trimpath go install "github.com/containernetworking/plugins/plugins/$p@$version" >&2
  done
fi
echo "$dir"
