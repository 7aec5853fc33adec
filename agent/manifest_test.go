package agent

import (
	"os"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// The ConfigMap the manifests ship must be a config this agent accepts.
func TestShippedConfigMapParses(t *testing.T) {
	b, err := os.ReadFile("../manifests/weir.yaml")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NODE_NAME", "node-1")
	found := false
	for _, doc := range strings.Split(string(b), "\n---") {
		var obj struct {
			Kind string            `json:"kind"`
			Data map[string]string `json:"data"`
		}
		if err := yaml.Unmarshal([]byte(doc), &obj); err != nil {
			t.Fatal(err)
		}
		if obj.Kind != "ConfigMap" || obj.Data["config.yaml"] == "" {
			continue
		}
		found = true
		c, err := ParseConfig([]byte(obj.Data["config.yaml"]))
		if err != nil {
			t.Fatalf("shipped config rejected: %v", err)
		}
		if !c.Kubernetes.Enabled || c.Kubernetes.NodeName != "node-1" {
			t.Fatalf("shipped config: %+v", c.Kubernetes)
		}
	}
	if !found {
		t.Fatal("no ConfigMap with config.yaml in manifests/weir.yaml")
	}
}
