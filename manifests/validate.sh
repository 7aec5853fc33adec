#!/usr/bin/env bash
# validate.sh checks weir's deployment manifests:
#
#   1. helm lint --strict on the chart, and helm template with default values;
#   2. go test ./manifests: every object of weir.yaml, weir-uninstall.yaml and
#      of the chart's renders decodes strictly into its k8s.io/api type
#      (unknown fields fail), the parts agree with each other (conflist mode
#      and socket vs the agent's config, probes vs the admin address, surge
#      upgrades, exact capabilities and RBAC verbs), and the default render
#      equals weir.yaml object by object;
#   3. only when KUBECONFIG is set: kubectl apply --dry-run=server of weir.yaml,
#      the rendered chart and weir-uninstall.yaml against that API server.
#      Server-side dry-run cannot create the namespace the other objects go
#      into, so if weir-system does not exist it is created for real first and
#      deleted again afterwards: point KUBECONFIG at a test cluster (the
#      integration suite's kube-apiserver, for one).
#
#   WEIR_HELM        helm binary to use (default: tools/helm/build.sh builds
#                    the pinned version once and caches it in /var/cache/weir)
#   KUBECONFIG       enables step 3
#   KUBECTL          kubectl binary for step 3 (default: $WEIR_KUBE_BIN_DIR/kubectl,
#                    else kubectl on PATH)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
log() { printf 'validate: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

helm="${WEIR_HELM:-$(tools/helm/build.sh | tail -n1)}"
[[ -x "$helm" ]] || die "no helm at $helm"
export WEIR_HELM="$helm"

rendered="$(mktemp --suffix=.yaml)"
trap 'rm -f "$rendered"' EXIT

log "helm lint"
"$helm" lint --strict manifests/helm/weir >&2
"$helm" template weir manifests/helm/weir >"$rendered"

log "go test ./manifests (strict decoding, contract, render == weir.yaml)"
go test -count=1 ./manifests/

if [[ -z "${KUBECONFIG:-}" ]]; then
	log "KUBECONFIG unset: skipped kubectl apply --dry-run=server"
	log "ok"
	exit 0
fi

kubectl="${KUBECTL:-}"
if [[ -z "$kubectl" && -n "${WEIR_KUBE_BIN_DIR:-}" && -x "$WEIR_KUBE_BIN_DIR/kubectl" ]]; then
	kubectl="$WEIR_KUBE_BIN_DIR/kubectl"
fi
kubectl="${kubectl:-kubectl}"
command -v "$kubectl" >/dev/null || die "KUBECONFIG is set but there is no kubectl ($kubectl)"

created=""
if ! "$kubectl" get namespace weir-system >/dev/null 2>&1; then
	log "creating namespace weir-system for the dry run"
	"$kubectl" create namespace weir-system --save-config >&2
	created=1
fi
cleanup() {
	rm -f "$rendered"
	if [[ -n "$created" ]]; then
		"$kubectl" delete namespace weir-system --wait=false >&2 || true
	fi
}
trap cleanup EXIT

for f in manifests/weir.yaml "$rendered" manifests/weir-uninstall.yaml; do
	log "kubectl apply --dry-run=server -f $f"
	"$kubectl" apply --dry-run=server -f "$f" >&2
done
log "ok"
