#!/usr/bin/env bash
# Runs every Go fuzz target of the packages that parse untrusted bytes for a
# bounded time each (WEIR_FUZZTIME, default 10s), one at a time. `go test`
# already replays each target's checked-in corpus; this explores beyond it.
# A failure leaves the failing input under the package's testdata/fuzz/ and
# stops the run.
#
# Go 1.26's fuzz coordinator can report a bare "context deadline exceeded"
# when a duration -fuzztime expires while a worker is mid-call on a loaded
# machine (golang/go#75804, fixed in Go 1.27). That is not a finding: a real
# failure always writes a reproducer. Such a run is reported and retried once
# with a count budget (no wall-clock deadline); it fails only if that fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin
fuzztime=${WEIR_FUZZTIME:-10s}
retrycount=${WEIR_FUZZ_RETRY_COUNT:-20000x}
# count_inputs prints how many corpus files DIR holds (0 when it is absent).
count_inputs() { if [ -d "$1" ]; then find "$1" -type f | wc -l; else echo 0; fi; }
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for pkg in $(go list ./proxy/... ./cni/... ./agent/...); do
  dir=$(go list -f '{{.Dir}}' "$pkg")
  for target in $(grep -ho '^func Fuzz[A-Za-z0-9_]*' "$dir"/*_test.go 2>/dev/null | sed 's/^func //' | sort -u); do
    echo "fuzz: $pkg $target for $fuzztime"
    corpus="$dir/testdata/fuzz/$target"
    before=$(count_inputs "$corpus")
    if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -parallel 1 "$pkg" 2>&1 | tee "$log"; then
      continue
    fi
    after=$(count_inputs "$corpus")
    if [ "$after" -eq "$before" ] && grep -q '^    context deadline exceeded$' "$log" && ! grep -q 'Failing input written' "$log"; then
      echo "fuzz: $target: coordinator deadline race (golang/go#75804), no input written; retrying with -fuzztime $retrycount"
      go test -run '^$' -fuzz "^${target}\$" -fuzztime "$retrycount" -parallel 1 "$pkg"
      continue
    fi
    exit 1
  done
done
