package agent

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weir-mesh/weir/agent/kube"
	"github.com/weir-mesh/weir/proxy/route"
)

// newKubeSource connects to the API server the config names.
func newKubeSource(cfg Config, log *slog.Logger) (*kube.Source, error) {
	var (
		rc  *rest.Config
		err error
	)
	if cfg.Kubernetes.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubernetes.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes credentials: %w", err)
	}
	rc.UserAgent = "weir-agent"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	o := kube.Options{Client: client, NodeName: cfg.Kubernetes.NodeName, AgentNamespace: cfg.Kubernetes.Namespace, Log: log}
	if cfg.Kubernetes.GatewayAPI {
		if o.Gateway, err = gwclient.NewForConfig(rc); err != nil {
			return nil, fmt.Errorf("gateway API client: %w", err)
		}
	}
	return kube.New(o)
}

// syncKube swaps in routes derived from the cluster's Services and
// EndpointSlices, reusing what did not change.
func (a *Agent) syncKube() {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	rc := route.Config{Unknown: a.cfg.UnknownDestinations, LocalZone: a.cfg.Zone, Services: a.kube.Services()}
	if err := a.publishRoutes(rc); err != nil {
		// One bad Service must not stop the others: the source already
		// drops what it cannot express, so this is unexpected.
		a.log.Error("routes from kubernetes", "err", err)
	}
}
