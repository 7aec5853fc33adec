package integration

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-mesh/weir/integration/kubeworld"
)

// Must show 8 (issue 5): the shipped manifests pass the API server's own
// validation (kubectl apply --dry-run=server against a real kube-apiserver).
func TestManifestsDryRunAgainstAPIServer(t *testing.T) {
	kw := kubeworld.Start(t)
	// The server dry run of namespaced objects needs their namespace.
	if _, err := kw.Client.CoreV1().Namespaces().Create(kubeworld.Context(t),
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "weir-system"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"../manifests/weir.yaml", "../manifests/weir-uninstall.yaml"} {
		out := kw.Kubectl(t, "apply", "--dry-run=server", "-f", f)
		if !strings.Contains(out, "(server dry run)") {
			t.Fatalf("kubectl apply --dry-run=server -f %s:\n%s", f, out)
		}
		t.Logf("%s:\n%s", f, out)
	}
}
