//go:build tools

// Package tools pins the helm CLI that manifests/validate.sh renders the chart
// with. It lives in its own module so the project's go.mod never sees Helm's
// dependency graph.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
