package kubeworld

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

func TestMain(m *testing.M) { Main(m) }

// waitFor polls cond until it holds or the bound runs out.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWorldPodsServicesAndWatch walks the path weir's agent depends on: a
// labelled namespace, a pod bound to a node, an informer that sees the pod
// and its status change, and a Service with a hand-written EndpointSlice.
func TestWorldPodsServicesAndWatch(t *testing.T) {
	w := Start(t)
	ctx := Context(t)

	ns := w.Namespace(t, "capture", map[string]string{"weir.dev/capture": "enabled"})
	if got := ns.Labels["weir.dev/capture"]; got != "enabled" {
		t.Fatalf("namespace %s label weir.dev/capture = %q, want enabled", ns.Name, got)
	}
	node := w.Node(t, "node")

	// Watch only this namespace: the world is shared with other tests.
	factory := informers.NewSharedInformerFactoryWithOptions(w.Client, 0, informers.WithNamespace(ns.Name))
	pods := factory.Core().V1().Pods()
	seen := make(chan string, 16)
	if _, err := pods.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) { seen <- "add " + obj.(*corev1.Pod).Name },
		UpdateFunc: func(oldObj, obj any) {
			// Only IP changes: a grace-0 delete also sends an update that
			// sets deletionTimestamp just before the delete.
			if o, p := oldObj.(*corev1.Pod), obj.(*corev1.Pod); o.Status.PodIP != p.Status.PodIP {
				seen <- "ip " + p.Name + " " + p.Status.PodIP
			}
		},
		DeleteFunc: func(obj any) {
			if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = tomb.Obj
			}
			seen <- "delete " + obj.(*corev1.Pod).Name
		},
	}); err != nil {
		t.Fatalf("add pod event handler: %v", err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop); factory.Shutdown() })
	factory.Start(stop)
	for typ, ok := range factory.WaitForCacheSync(stop) {
		if !ok {
			t.Fatalf("informer cache for %v did not sync", typ)
		}
	}

	expect := func(want string) {
		t.Helper()
		select {
		case got := <-seen:
			if got != want {
				t.Fatalf("informer event %q, want %q", got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("no informer event, want %q", want)
		}
	}

	pod := w.Pod(t, ns.Name, "web-0", node.Name, map[string]string{"app": "web"}, map[string]string{"weir.dev/inbound-ports": "8080"})
	if pod.Spec.NodeName != node.Name {
		t.Fatalf("pod bound to %q, want %q", pod.Spec.NodeName, node.Name)
	}
	if pod.Spec.ServiceAccountName != "default" {
		t.Fatalf("pod service account %q, want default (admitted by the ServiceAccount plugin)", pod.Spec.ServiceAccountName)
	}
	expect("add web-0")

	pod = w.SetPodReady(t, pod, "10.244.1.7", "192.0.2.10")
	expect("ip web-0 10.244.1.7")
	cached, err := pods.Lister().Pods(ns.Name).Get("web-0")
	if err != nil {
		t.Fatalf("lister get web-0: %v", err)
	}
	if cached.Status.Phase != corev1.PodRunning || cached.Annotations["weir.dev/inbound-ports"] != "8080" {
		t.Fatalf("cached pod phase %q annotations %v, want Running with weir.dev/inbound-ports=8080", cached.Status.Phase, cached.Annotations)
	}

	svc := w.Service(t, ns.Name, "web", map[string]string{"app": "web"}, corev1.ServicePort{
		Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP,
	})
	if !strings.HasPrefix(svc.Spec.ClusterIP, "10.96.") {
		t.Fatalf("service cluster IP %q, want one from %s", svc.Spec.ClusterIP, ServiceCIDR)
	}
	slice := w.EndpointSlice(t, svc, PodEndpoint(pod))
	slices, err := w.Client.DiscoveryV1().EndpointSlices(ns.Name).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=web",
	})
	if err != nil {
		t.Fatalf("list endpoint slices: %v", err)
	}
	if len(slices.Items) != 1 || slices.Items[0].Name != slice.Name {
		t.Fatalf("endpoint slices for web: %d, want exactly %s", len(slices.Items), slice.Name)
	}
	got := slices.Items[0]
	if len(got.Endpoints) != 1 || got.Endpoints[0].Addresses[0] != "10.244.1.7" || !*got.Endpoints[0].Conditions.Ready ||
		len(got.Ports) != 1 || *got.Ports[0].Port != 8080 {
		t.Fatalf("endpoint slice %+v, want one ready endpoint 10.244.1.7 on port 8080", got)
	}

	w.ForceDeletePod(t, ns.Name, "web-0")
	expect("delete web-0")
}

// TestWorldRBAC checks that RBAC is enforced for ServiceAccounts: a token
// client gets exactly what its ClusterRole grants. Tests of weir's own
// manifests rely on this to prove the agent's role is enough and no more.
func TestWorldRBAC(t *testing.T) {
	w := Start(t)
	ctx := Context(t)
	ns := w.Namespace(t, "rbac", nil)
	w.ServiceAccount(t, ns.Name, "agent")

	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kubeworld-reader-"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch"},
		}},
	}
	role, err := w.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create cluster role: %v", err)
	}
	t.Cleanup(func() { _ = w.Client.RbacV1().ClusterRoles().Delete(ctx, role.Name, metav1.DeleteOptions{}) })

	sa, _ := w.ServiceAccountClient(t, ns.Name, "agent")
	if _, err := sa.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list pods before binding: err = %v, want Forbidden", err)
	}

	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kubeworld-reader-"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns.Name, Name: "agent"}},
	}
	binding, err = w.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create cluster role binding: %v", err)
	}
	t.Cleanup(func() {
		_ = w.Client.RbacV1().ClusterRoleBindings().Delete(ctx, binding.Name, metav1.DeleteOptions{})
	})

	// RBAC reads bindings from its own informer: allow a moment.
	waitFor(t, "the binding to allow listing pods", func() bool {
		_, err := sa.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
		return err == nil
	})
	if _, err := sa.CoreV1().Secrets(ns.Name).List(ctx, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Fatalf("list secrets with a pods-only role: err = %v, want Forbidden", err)
	}
	_, err = sa.CoreV1().Pods(ns.Name).Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "nope"},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "kubeworld.invalid/c:1"}}},
	}, metav1.CreateOptions{})
	if !apierrors.IsForbidden(err) {
		t.Fatalf("create pod with a read-only role: err = %v, want Forbidden", err)
	}
}

// TestWorldKubeconfigAndKubectl checks the kubeconfig file works for an
// independent client and for kubectl, which tests use to apply manifests.
func TestWorldKubeconfigAndKubectl(t *testing.T) {
	w := Start(t)
	cfg, err := clientcmd.BuildConfigFromFlags("", w.Kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig %s: %v", w.Kubeconfig, err)
	}
	if cfg.Host != w.Host || !strings.HasPrefix(cfg.Host, "https://127.0.0.1:") {
		t.Fatalf("kubeconfig host %q, want %q on 127.0.0.1", cfg.Host, w.Host)
	}

	if out := w.Kubectl(t, "version", "-o", "yaml"); !strings.Contains(out, "gitVersion: v1.32.13") {
		t.Fatalf("kubectl version does not report v1.32.13 for client and server:\n%s", out)
	}
	ns := w.Namespace(t, "kubectl", nil)
	w.Kubectl(t, "-n", ns.Name, "create", "configmap", "conf", "--from-literal=mode=redirect")
	cm, err := w.Client.CoreV1().ConfigMaps(ns.Name).Get(Context(t), "conf", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get configmap created by kubectl: %v", err)
	}
	if cm.Data["mode"] != "redirect" {
		t.Fatalf("configmap data %v, want mode=redirect", cm.Data)
	}
}

// TestNamespaceCleanupFinalizes checks that a namespace is really gone after
// its test, although no namespace controller runs.
func TestNamespaceCleanupFinalizes(t *testing.T) {
	w := Start(t)
	var name string
	t.Run("inner", func(t *testing.T) {
		ns := w.Namespace(t, "gone", nil)
		name = ns.Name
		node := w.Node(t, "gone")
		w.Pod(t, ns.Name, "p", node.Name, nil, nil)
	})
	_, err := w.Client.CoreV1().Namespaces().Get(Context(t), name, metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("namespace %s after cleanup: err = %v, want NotFound", name, err)
	}
}

func BenchmarkStart(b *testing.B) {
	if _, err := findBinDir(); err != nil {
		skipOrFail(b, "%v", err)
	}
	for b.Loop() {
		w, err := startWorld(b.Logf)
		if err != nil {
			b.Fatalf("start world: %v", err)
		}
		w.Stop()
	}
}
