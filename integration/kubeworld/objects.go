package kubeworld

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
)

// cleanupTimeout bounds the API calls a cleanup makes, which run after the
// test's own context is gone.
const cleanupTimeout = 30 * time.Second

// ManagedByLabel marks every object a helper creates, so a test (or a person
// looking at a leaked object) can tell harness data from what weir wrote.
const ManagedByLabel = "weir.dev/kubeworld"

// Namespace creates a namespace named prefix plus a random suffix, with the
// given labels, and its "default" ServiceAccount (no controller-manager
// makes it, and pod admission requires it). When the test ends the
// namespace's objects are deleted and the namespace is finalized by hand,
// since no namespace controller would ever finish its deletion.
func (w *World) Namespace(t testing.TB, prefix string, labels map[string]string) *corev1.Namespace {
	t.Helper()
	ctx := Context(t)
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
		GenerateName: prefix + "-",
		Labels:       withManaged(labels),
	}}
	ns, err := w.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s-*: %v", prefix, err)
	}
	t.Cleanup(func() {
		if err := w.deleteNamespace(ns.Name); err != nil {
			t.Errorf("clean up namespace %s: %v", ns.Name, err)
		}
	})
	w.ServiceAccount(t, ns.Name, "default")
	return ns
}

// ServiceAccount creates a ServiceAccount; it goes away with its namespace.
func (w *World) ServiceAccount(t testing.TB, ns, name string) *corev1.ServiceAccount {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: withManaged(nil)}}
	sa, err := w.Client.CoreV1().ServiceAccounts(ns).Create(Context(t), sa, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service account %s/%s: %v", ns, name, err)
	}
	return sa
}

// deleteNamespace does the namespace controller's job for the kinds tests
// create, then clears the namespace's finalizer so it is really gone.
func (w *World) deleteNamespace(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
	defer cancel()
	now := metav1.DeleteOptions{GracePeriodSeconds: new(int64)}
	all := metav1.ListOptions{}
	c := w.Client
	for kind, del := range map[string]func() error{
		"pods":            func() error { return c.CoreV1().Pods(name).DeleteCollection(ctx, now, all) },
		"services":        func() error { return w.deleteServices(ctx, name) },
		"endpointslices":  func() error { return c.DiscoveryV1().EndpointSlices(name).DeleteCollection(ctx, now, all) },
		"endpoints":       func() error { return c.CoreV1().Endpoints(name).DeleteCollection(ctx, now, all) },
		"configmaps":      func() error { return c.CoreV1().ConfigMaps(name).DeleteCollection(ctx, now, all) },
		"secrets":         func() error { return c.CoreV1().Secrets(name).DeleteCollection(ctx, now, all) },
		"serviceaccounts": func() error { return c.CoreV1().ServiceAccounts(name).DeleteCollection(ctx, now, all) },
		"roles":           func() error { return c.RbacV1().Roles(name).DeleteCollection(ctx, now, all) },
		"rolebindings":    func() error { return c.RbacV1().RoleBindings(name).DeleteCollection(ctx, now, all) },
	} {
		if err := del(); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", kind, err)
		}
	}
	err := c.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("delete: %w", err)
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		ns, err := c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("get: %w", err)
		}
		ns.Spec.Finalizers = nil
		if _, err := c.CoreV1().Namespaces().Finalize(ctx, ns, metav1.UpdateOptions{}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("finalize: %w", err)
		}
		return nil
	})
}

// deleteServices deletes services one by one: the API has no
// DeleteCollection for them.
func (w *World) deleteServices(ctx context.Context, ns string) error {
	list, err := w.Client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	for _, s := range list.Items {
		err := w.Client.CoreV1().Services(ns).Delete(ctx, s.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return err
		}
	}
	return nil
}

// Node creates a Node named prefix plus a random suffix, with the given
// taints and a Ready condition (no kubelet will ever report one). It is
// deleted when the test ends.
func (w *World) Node(t testing.TB, prefix string, taints ...corev1.Taint) *corev1.Node {
	t.Helper()
	ctx := Context(t)
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: withManaged(nil)},
		Spec:       corev1.NodeSpec{Taints: taints},
	}
	node, err := w.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create node %s-*: %v", prefix, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		err := w.Client.CoreV1().Nodes().Delete(ctx, node.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("clean up node %s: %v", node.Name, err)
		}
	})
	now := metav1.Now()
	node.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeworldReady", LastHeartbeatTime: now, LastTransitionTime: now,
	}}
	node, err = w.Client.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("set node %s ready: %v", node.Name, err)
	}
	return node
}

// Pod creates a pod already bound to node (spec.nodeName set, so no
// scheduler is needed) with one container. It stays Pending until
// [World.SetPodReady]; it goes away with its namespace or [World.ForceDeletePod].
func (w *World) Pod(t testing.TB, ns, name, node string, labels, annotations map[string]string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels, Annotations: annotations},
		Spec: corev1.PodSpec{
			NodeName: node,
			Containers: []corev1.Container{{
				Name: "app",
				// Never pulled: no kubelet runs here.
				Image: "kubeworld.invalid/app:1",
			}},
		},
	}
	pod, err := w.Client.CoreV1().Pods(ns).Create(Context(t), pod, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod %s/%s: %v", ns, name, err)
	}
	return pod
}

// SetPodReady writes what a kubelet would once the pod runs: phase Running,
// the pod IP (and the node's host IP if hostIP is not empty), a running,
// ready container and Ready conditions. It returns the updated pod.
func (w *World) SetPodReady(t testing.TB, pod *corev1.Pod, podIP, hostIP string) *corev1.Pod {
	t.Helper()
	if net.ParseIP(podIP) == nil {
		t.Fatalf("set pod %s/%s ready: pod IP %q is not an IP address", pod.Namespace, pod.Name, podIP)
	}
	ctx := Context(t)
	var out *corev1.Pod
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := w.Client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		cur.Status.Phase = corev1.PodRunning
		cur.Status.PodIP = podIP
		cur.Status.PodIPs = []corev1.PodIP{{IP: podIP}}
		if hostIP != "" {
			cur.Status.HostIP = hostIP
			cur.Status.HostIPs = []corev1.HostIP{{IP: hostIP}}
		}
		cur.Status.StartTime = &now
		cur.Status.Conditions = nil
		for _, c := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
			cur.Status.Conditions = append(cur.Status.Conditions, corev1.PodCondition{Type: c, Status: corev1.ConditionTrue, LastTransitionTime: now})
		}
		cur.Status.ContainerStatuses = nil
		for _, c := range cur.Spec.Containers {
			cur.Status.ContainerStatuses = append(cur.Status.ContainerStatuses, corev1.ContainerStatus{
				Name: c.Name, Image: c.Image, Ready: true, Started: new(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
			})
		}
		out, err = w.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("set pod %s/%s ready: %v", pod.Namespace, pod.Name, err)
	}
	return out
}

// ForceDeletePod deletes a pod at once (grace period 0, like kubectl
// delete --force): with no kubelet to confirm, a graceful delete would leave
// the pod terminating forever.
func (w *World) ForceDeletePod(t testing.TB, ns, name string) {
	t.Helper()
	err := w.Client.CoreV1().Pods(ns).Delete(Context(t), name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	if err != nil {
		t.Fatalf("force delete pod %s/%s: %v", ns, name, err)
	}
}

// Service creates a ClusterIP Service; the apiserver allocates its address
// from [ServiceCIDR]. It goes away with its namespace.
func (w *World) Service(t testing.TB, ns, name string, selector map[string]string, ports ...corev1.ServicePort) *corev1.Service {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: withManaged(nil)},
		Spec:       corev1.ServiceSpec{Selector: selector, Ports: ports},
	}
	svc, err := w.Client.CoreV1().Services(ns).Create(Context(t), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create service %s/%s: %v", ns, name, err)
	}
	return svc
}

// EndpointSlice writes the slice the endpointslice controller would for svc
// (which does not run here): labelled with the service name, ports taken from
// the Service with numeric target ports. The address type follows the first
// endpoint (IPv4 if none). It goes away with its namespace.
func (w *World) EndpointSlice(t testing.TB, svc *corev1.Service, endpoints ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	t.Helper()
	addrType := discoveryv1.AddressTypeIPv4
	if len(endpoints) > 0 && len(endpoints[0].Addresses) > 0 {
		if ip := net.ParseIP(endpoints[0].Addresses[0]); ip != nil && ip.To4() == nil {
			addrType = discoveryv1.AddressTypeIPv6
		}
	}
	var ports []discoveryv1.EndpointPort
	for _, p := range svc.Spec.Ports {
		port := p.Port
		switch {
		case p.TargetPort.Type == intstr.String:
			t.Fatalf("endpoint slice for %s/%s: port %q has named target port %q; give the Service a numeric targetPort",
				svc.Namespace, svc.Name, p.Name, p.TargetPort.StrVal)
		case p.TargetPort.IntVal != 0:
			port = p.TargetPort.IntVal
		}
		ports = append(ports, discoveryv1.EndpointPort{
			Name: new(p.Name), Protocol: new(p.Protocol), Port: new(port), AppProtocol: p.AppProtocol,
		})
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			GenerateName: svc.Name + "-",
			Labels: withManaged(map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   "kubeworld.weir.dev",
			}),
		},
		AddressType: addrType,
		Endpoints:   endpoints,
		Ports:       ports,
	}
	slice, err := w.Client.DiscoveryV1().EndpointSlices(svc.Namespace).Create(Context(t), slice, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create endpoint slice for %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return slice
}

// PodEndpoint describes a ready pod as an EndpointSlice endpoint, the way
// the endpointslice controller would. The pod must have an IP
// ([World.SetPodReady]); otherwise the apiserver rejects the slice.
func PodEndpoint(pod *corev1.Pod) discoveryv1.Endpoint {
	ready := true
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			ready = c.Status == corev1.ConditionTrue
		}
	}
	var addrs []string
	if pod.Status.PodIP != "" {
		addrs = []string{pod.Status.PodIP}
	}
	ep := discoveryv1.Endpoint{
		Addresses:  addrs,
		Conditions: discoveryv1.EndpointConditions{Ready: new(ready), Serving: new(ready), Terminating: new(false)},
		TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: pod.Namespace, Name: pod.Name, UID: pod.UID},
	}
	if pod.Spec.NodeName != "" {
		ep.NodeName = new(pod.Spec.NodeName)
	}
	return ep
}

// ServiceAccountClient returns a client that authenticates as the
// ServiceAccount ns/name with a bound token from the TokenRequest API, as
// an in-cluster agent would; RBAC decides what it may do. The
// ServiceAccount must exist.
func (w *World) ServiceAccountClient(t testing.TB, ns, name string) (kubernetes.Interface, *rest.Config) {
	t.Helper()
	tr, err := w.Client.CoreV1().ServiceAccounts(ns).CreateToken(Context(t), name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: new(int64(3600))},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("request token for service account %s/%s: %v", ns, name, err)
	}
	cfg := &rest.Config{
		Host:            w.Config.Host,
		BearerToken:     tr.Status.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: w.Config.CAData},
		QPS:             w.Config.QPS,
		Burst:           w.Config.Burst,
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("build client for service account %s/%s: %v", ns, name, err)
	}
	return client, cfg
}

// Kubectl runs kubectl against the world as the admin user (for example
// "apply -f manifests/...") and returns its combined output; a non-zero
// exit fails the test with that output.
func (w *World) Kubectl(t testing.TB, args ...string) string {
	t.Helper()
	argv := append(append([]string(nil), w.opts.Wrap...), w.BinDir+"/kubectl", "--kubeconfig="+w.Kubeconfig)
	cmd := exec.CommandContext(Context(t), argv[0], append(argv[1:], args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func withManaged(labels map[string]string) map[string]string {
	out := map[string]string{ManagedByLabel: "true"}
	for k, v := range labels {
		out[k] = v
	}
	return out
}
