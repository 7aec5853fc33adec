package kube

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weir-mesh/weir/agent/kube/gwroute"
	"github.com/weir-mesh/weir/integration/kubeworld"
	"github.com/weir-mesh/weir/proxy/route"
)

func ptr[T any](v T) *T { return &v }

func backend(name string, port, weight int32) gwv1.HTTPBackendRef {
	return gwv1.HTTPBackendRef{BackendRef: kubeworld.ServiceBackend(name, port, weight)}
}

// syncBuffer is a log sink the source writes from its goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Against the real API server, as the agent's ServiceAccount bound to
// PolicyRules and LeaseRules only: without the CRDs the feature is off
// with one log line and no retry noise; CRDs installed later are picked
// up; an HTTPRoute and a GRPCRoute attached to a Service reach the
// route model; status.parents gets Accepted and ResolvedRefs written by
// the lease holder; a route naming a missing backend says BackendNotFound.
func TestGatewayRoutesAgainstAPIServer(t *testing.T) {
	w := newWorld(t)
	w.RemoveGatewayAPI(t) // start from a cluster without the Gateway API
	_, saCfg := w.ServiceAccountClient(t, w.agentNS, "weir-agent")
	gw, err := gwclient.NewForConfig(saCfg)
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := New(Options{Client: w.agentCli, NodeName: w.node.Name, AgentNamespace: w.agentNS, Log: log,
		Gateway: gw, GatewayRecheck: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		t.Logf("source log:\n%s", logs.String())
	})
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // ten rechecks
	if n := strings.Count(logs.String(), "Gateway API CRDs not installed"); n != 1 {
		t.Fatalf("%d 'not installed' log lines over ten rechecks, want exactly 1:\n%s", n, logs.String())
	}
	if n := strings.Count(logs.String(), "level=WARN") + strings.Count(logs.String(), "level=ERROR"); n != 0 {
		t.Fatalf("warnings or errors without the CRDs:\n%s", logs.String())
	}

	w.InstallGatewayAPI(t)
	eventually(t, "the source to watch routes once the CRDs exist", func() error {
		if !strings.Contains(logs.String(), "watching Gateway API routes") {
			return fmt.Errorf("not yet")
		}
		return nil
	})

	// An agent whose RBAC lacks the Gateway API rules still starts, says
	// once what to grant, and starts no informer that would retry
	// "forbidden" forever.
	rules := PolicyRules()
	noGW, noGWCfg := agentClientWith(t, w.World, w.agentNS, "weir-agent-no-gw", rules[:len(rules)-2])
	gwDenied, err := gwclient.NewForConfig(noGWCfg)
	if err != nil {
		t.Fatal(err)
	}
	var denied syncBuffer
	s2, err := New(Options{Client: noGW, NodeName: w.node.Name, AgentNamespace: w.agentNS,
		Log: slog.New(slog.NewTextHandler(&denied, nil)), Gateway: gwDenied, GatewayRecheck: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel2 := context.WithTimeout(context.Background(), waitTimeout)
	if err := s2.Run(ctx2); err != nil {
		t.Fatalf("run a source without Gateway API RBAC: %v", err)
	}
	time.Sleep(2 * time.Second) // ten rechecks
	cancel2()
	if n := strings.Count(denied.String(), "cannot watch Gateway API routes"); n != 1 || strings.Contains(denied.String(), "watching Gateway API routes") {
		t.Fatalf("without RBAC: %d warnings (want 1), log:\n%s", n, denied.String())
	}

	ns := w.Namespace(t, "gw", nil).Name
	for _, name := range []string{"front", "v1", "v2"} {
		w.Service(t, ns, name, nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	}
	admin, err := gwclient.NewForConfig(w.Config)
	if err != nil {
		t.Fatal(err)
	}
	hr := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "split"}}
	hr.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("front", 80)}
	hr.Spec.Rules = []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{backend("v1", 80, 80), backend("v2", 80, 20)}}}
	missing := hr.DeepCopy()
	missing.Name = "missing"
	missing.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("v1", 80)}
	missing.Spec.Rules[0].BackendRefs = []gwv1.HTTPBackendRef{backend("not-there", 80, 1)}
	gr := &gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "by-method"}}
	gr.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("v2", 0)}
	gr.Spec.Rules = []gwv1.GRPCRouteRule{{
		Matches:     []gwv1.GRPCRouteMatch{{Method: &gwv1.GRPCMethodMatch{Service: ptr("pkg.Echo"), Method: ptr("Say")}}},
		BackendRefs: []gwv1.GRPCBackendRef{{BackendRef: backend("v1", 80, 1).BackendRef}},
	}}
	for _, r := range []*gwv1.HTTPRoute{hr, missing} {
		if _, err := admin.GatewayV1().HTTPRoutes(ns).Create(kubeworld.Context(t), r, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create HTTPRoute %s: %v", r.Name, err)
		}
	}
	if _, err := admin.GatewayV1().GRPCRoutes(ns).Create(kubeworld.Context(t), gr, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create GRPCRoute: %v", err)
	}

	attached := func(name string) []route.HTTPRoute {
		for _, svc := range s.Services() {
			if svc.Name == name {
				return svc.HTTPRoutes
			}
		}
		return nil
	}
	eventually(t, "routes attached to their Services", func() error {
		f, v1, v2 := attached(ns+"/front:80"), attached(ns+"/v1:80"), attached(ns+"/v2:80")
		if len(f) != 1 || len(v1) != 1 || len(v2) != 1 {
			return fmt.Errorf("front %d, v1 %d, v2 %d routes", len(f), len(v1), len(v2))
		}
		if b := f[0].Rules[0].Backends; b[0].Service != ns+"/v1:80" || *b[0].Weight != 80 || b[1].Service != ns+"/v2:80" {
			return fmt.Errorf("front backends %+v", b)
		}
		if b := v1[0].Rules[0].Backends[0]; b.Unresolved != "BackendNotFound" {
			return fmt.Errorf("missing backend %+v", b)
		}
		if m := v2[0].Rules[0].Matches[0]; m.Path == nil || m.Path.Value != "/pkg.Echo/Say" {
			return fmt.Errorf("gRPC match %+v", m)
		}
		return nil
	})
	// The snapshot builds: nothing the source attached fails route.Build.
	if _, err := route.Build(route.Config{Services: s.Services()}, nil); err != nil {
		t.Fatalf("build routes from the cluster: %v", err)
	}

	cond := func(parents []gwv1.RouteParentStatus, typ string) *metav1.Condition {
		for _, p := range parents {
			if p.ControllerName == gwroute.ControllerName {
				return meta.FindStatusCondition(p.Conditions, typ)
			}
		}
		return nil
	}
	eventually(t, "route status written", func() error {
		got, err := admin.GatewayV1().HTTPRoutes(ns).Get(kubeworld.Context(t), "split", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c := cond(got.Status.Parents, "Accepted"); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("split: Accepted %+v", c)
		}
		if c := cond(got.Status.Parents, "ResolvedRefs"); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("split: ResolvedRefs %+v", c)
		}
		got, err = admin.GatewayV1().HTTPRoutes(ns).Get(kubeworld.Context(t), "missing", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c := cond(got.Status.Parents, "ResolvedRefs"); c == nil || c.Status != metav1.ConditionFalse || c.Reason != "BackendNotFound" {
			return fmt.Errorf("missing: ResolvedRefs %+v", c)
		}
		g, err := admin.GatewayV1().GRPCRoutes(ns).Get(kubeworld.Context(t), "by-method", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c := cond(g.Status.Parents, "Accepted"); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("by-method: Accepted %+v", c)
		}
		return nil
	})
	lease, err := w.Client.CoordinationV1().Leases(w.agentNS).Get(kubeworld.Context(t), StatusLeaseName, metav1.GetOptions{})
	if err != nil || lease.Spec.HolderIdentity == nil || !strings.HasPrefix(*lease.Spec.HolderIdentity, w.node.Name+"/") {
		t.Fatalf("status lease %v: %+v", err, lease)
	}

	// Creating the missing backend resolves the route, status follows.
	w.Service(t, ns, "not-there", nil, corev1.ServicePort{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP})
	eventually(t, "ResolvedRefs=True once the backend exists", func() error {
		got, err := admin.GatewayV1().HTTPRoutes(ns).Get(kubeworld.Context(t), "missing", metav1.GetOptions{})
		if err != nil {
			return err
		}
		if c := cond(got.Status.Parents, "ResolvedRefs"); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("ResolvedRefs %+v", c)
		}
		return nil
	})
	for _, name := range []string{"split", "missing"} {
		if err := admin.GatewayV1().HTTPRoutes(ns).Delete(kubeworld.Context(t), name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Error(err)
		}
	}
	_ = admin.GatewayV1().GRPCRoutes(ns).Delete(kubeworld.Context(t), "by-method", metav1.DeleteOptions{})
}
