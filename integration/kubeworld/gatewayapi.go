package kubeworld

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// GatewayAPIModule is the module whose standard-channel CRDs
// InstallGatewayAPI installs: the one weir's go.mod requires, so the CRDs
// match the types the agent decodes.
const GatewayAPIModule = "sigs.k8s.io/gateway-api"

// gatewayCRDs are the standard-channel route CRDs the mesh uses, under
// the module's config/crd/standard.
var gatewayCRDs = []string{
	"gateway.networking.k8s.io_httproutes.yaml",
	"gateway.networking.k8s.io_grpcroutes.yaml",
}

// GatewayAPICRDs returns the paths of the HTTPRoute and GRPCRoute CRD
// files in the module cache (go list finds the module weir's go.mod
// pins). A missing file fails the test.
func GatewayAPICRDs(t testing.TB) []string {
	t.Helper()
	out, err := exec.CommandContext(Context(t), "go", "list", "-m", "-f", "{{.Dir}}", GatewayAPIModule).Output()
	dir := strings.TrimSpace(string(out))
	if err != nil || dir == "" {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = errors.New(string(ee.Stderr))
		}
		t.Fatalf("find module %s (run go mod download): %v", GatewayAPIModule, err)
	}
	var paths []string
	for _, f := range gatewayCRDs {
		p := filepath.Join(dir, "config", "crd", "standard", f)
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("Gateway API CRD: %v", err)
		}
		paths = append(paths, p)
	}
	return paths
}

// InstallGatewayAPI creates the HTTPRoute and GRPCRoute CRDs (standard
// channel, from the module cache) unless they exist, and waits until the
// API serves them. They stay for the rest of the world's life; see
// RemoveGatewayAPI.
func (w *World) InstallGatewayAPI(t testing.TB) {
	t.Helper()
	args := []string{"apply", "--server-side", "--force-conflicts"}
	for _, p := range GatewayAPICRDs(t) {
		args = append(args, "-f", p)
	}
	w.Kubectl(t, args...)
	w.Kubectl(t, "wait", "--for=condition=Established", "--timeout=60s",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io")
	w.waitGatewayDiscovery(t, true)
}

// RemoveGatewayAPI deletes the route CRDs (and with them every route) and
// waits until discovery no longer lists them, so a test can start from a
// cluster without the Gateway API.
func (w *World) RemoveGatewayAPI(t testing.TB) {
	t.Helper()
	w.Kubectl(t, "delete", "--ignore-not-found", "--wait=true", "--timeout=90s",
		"crd/httproutes.gateway.networking.k8s.io", "crd/grpcroutes.gateway.networking.k8s.io")
	w.waitGatewayDiscovery(t, false)
}

func (w *World) waitGatewayDiscovery(t testing.TB, present bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(Context(t), 90*time.Second)
	defer cancel()
	for {
		list, err := w.Client.Discovery().ServerResourcesForGroupVersion("gateway.networking.k8s.io/v1")
		n := 0
		if err == nil {
			for _, r := range list.APIResources {
				if r.Name == "httproutes" || r.Name == "grpcroutes" {
					n++
				}
			}
		} else if !apierrors.IsNotFound(err) {
			t.Logf("discovery: %v", err)
		}
		if (present && n == 2) || (!present && n == 0) {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Gateway API route kinds present=%v not reached: %d of 2 listed", present, n)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// ServiceParent is a GAMMA parentRef: the Service name in the route's
// namespace, and one of its ports unless port is 0.
func ServiceParent(name string, port int32) gwv1.ParentReference {
	group, kind := gwv1.Group(""), gwv1.Kind("Service")
	p := gwv1.ParentReference{Group: &group, Kind: &kind, Name: gwv1.ObjectName(name)}
	if port != 0 {
		pn := gwv1.PortNumber(port)
		p.Port = &pn
	}
	return p
}

// ServiceBackend is a backendRef to port of the Service name in the
// route's namespace, with a weight.
func ServiceBackend(name string, port, weight int32) gwv1.BackendRef {
	pn := gwv1.PortNumber(port)
	return gwv1.BackendRef{
		BackendObjectReference: gwv1.BackendObjectReference{Name: gwv1.ObjectName(name), Port: &pn},
		Weight:                 &weight,
	}
}
