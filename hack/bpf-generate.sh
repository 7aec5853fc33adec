#!/usr/bin/env bash
# Regenerates the eBPF objects and their Go bindings under bpf/ with bpf2go
# (go.mod's tool block) and Debian's clang. With --check, fails when the
# committed output differs from what the sources compile to, so a change to
# a .c file cannot land without its objects (CI runs this from hack/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
command -v clang >/dev/null || { echo "weir: clang is missing (hack/deps.sh installs clang, llvm and libbpf-dev)" >&2; exit 1; }
[ -f /usr/include/bpf/bpf_helpers.h ] || { echo "weir: libbpf-dev is missing (/usr/include/bpf/bpf_helpers.h)" >&2; exit 1; }
go generate ./bpf/...
if [ "${1:-}" = --check ]; then
  if ! git diff --quiet -- bpf/ || [ -n "$(git ls-files --others --exclude-standard -- bpf/)" ]; then
    echo "weir: generated eBPF files differ from the committed ones ($(clang --version | head -n1)); run hack/bpf-generate.sh and commit:" >&2
    git status --short -- bpf/ >&2
    exit 1
  fi
fi
