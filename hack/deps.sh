#!/usr/bin/env bash
# Installs what weir's demo, tests and benchmarks need on a Debian machine, as
# root. Safe to run twice: packages already present are not fetched again.
set -euo pipefail

packages=(iptables nftables iproute2 containernetworking-plugins nginx libnginx-mod-stream curl
  iperf3 wrk redis-server redis-tools conntrack haproxy procps ca-certificates git make nghttp2-client linux-perf)
packages+=(clang llvm libbpf-dev) # eBPF objects: hack/bpf-generate.sh
packages+=(nodejs) # SOFABolt peers (sofa-bolt-node): hack/rpc-peers.sh
packages+=(containerd runc)          # the real node of integration/nodeworld

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "weir: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  # Debian starts these services on install; the tests run their own copies.
  # containerd too: nodeworld runs its own, with its own socket and dirs.
  systemctl disable --now nginx redis-server haproxy containerd >/dev/null 2>&1 || true
fi
# npm installs sofa-bolt-node; some nodejs builds ship it, Debian's does not.
if ! command -v npm >/dev/null; then
  echo "weir: installing npm" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >&2
fi

# Go: the module wants go1.26. An older go (>= 1.21) fetches the toolchain
# itself through the module proxy.
export PATH=$PATH:/usr/local/go/bin
if ! command -v go >/dev/null; then
  echo "weir: Go is not installed. Install Go 1.26 (or any Go >= 1.21, which fetches 1.26 itself) and run again." >&2
  exit 1
fi
