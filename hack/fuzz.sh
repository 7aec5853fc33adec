#!/usr/bin/env bash
# Runs every Go fuzz target of the packages that parse untrusted bytes for a
# bounded time each (WEIR_FUZZTIME, default 10s), one at a time. `go test`
# already replays each target's checked-in corpus; this explores beyond it.
# A failure leaves the failing input under the package's testdata/fuzz/ and
# stops the run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
fuzztime=${WEIR_FUZZTIME:-10s}
for pkg in $(go list ./proxy/... ./cni/... ./agent/...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz: $pkg $target for $fuzztime"
    go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -parallel 1 "$pkg"
  done
done
