package kube

// These tests run the Source against a real kube-apiserver and etcd
// (integration/kubeworld), as the agent's ServiceAccount bound to exactly
// PolicyRules, so they also prove that those rules are enough.

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"

	"github.com/weir-mesh/weir/agent/podconfig"
	"github.com/weir-mesh/weir/integration/kubeworld"
	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

func TestMain(m *testing.M) { kubeworld.Main(m) }

// waitTimeout bounds every wait for the watch or the event recorder; a
// healthy local apiserver answers in milliseconds.
const waitTimeout = 20 * time.Second

// eventually polls check until it returns nil, failing the test with the
// last error when waitTimeout passes.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// agentClient returns a client for a fresh ServiceAccount bound, through a
// ClusterRole, to PolicyRules and nothing else, once RBAC admits it.
func agentClient(t *testing.T, w *kubeworld.World, namespace string) kubernetes.Interface {
	t.Helper()
	client, _ := agentClientWith(t, w, namespace, "weir-agent", PolicyRules())
	return client
}

// agentClientWith is agentClient for the ServiceAccount sa bound to rules
// (and LeaseRules); it also returns the client's rest config.
func agentClientWith(t *testing.T, w *kubeworld.World, namespace, sa string, rules []rbacv1.PolicyRule) (kubernetes.Interface, *rest.Config) {
	t.Helper()
	ctx := kubeworld.Context(t)
	w.ServiceAccount(t, namespace, sa)
	name := sa + "-test-" + namespace
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}, Rules: rules}
	if _, err := w.Client.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create cluster role %s: %v", name, err)
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: sa}},
	}
	if _, err := w.Client.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create cluster role binding %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Client.RbacV1().ClusterRoleBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = w.Client.RbacV1().ClusterRoles().Delete(ctx, name, metav1.DeleteOptions{})
	})
	// The route status lease: a Role in the agent's namespace, as in
	// manifests/weir.yaml.
	lease := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: namespace}, Rules: LeaseRules()}
	if _, err := w.Client.RbacV1().Roles(namespace).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create role %s/%s: %v", namespace, sa, err)
	}
	leaseBinding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: namespace},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: sa},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: namespace, Name: sa}},
	}
	if _, err := w.Client.RbacV1().RoleBindings(namespace).Create(ctx, leaseBinding, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create role binding %s/%s: %v", namespace, sa, err)
	}
	client, cfg := w.ServiceAccountClient(t, namespace, sa)
	eventually(t, "RBAC to admit the agent's service account", func() error {
		_, err := client.CoreV1().Nodes().Get(ctx, "does-not-exist", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("get node as the agent: %v", err)
	})
	return client, cfg
}

// testLog writes the source's logs to the test log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// world is what most tests need: a node, the agent's namespace and a
// client with the agent's rights.
type world struct {
	*kubeworld.World
	node     *corev1.Node
	agentNS  string
	agentCli kubernetes.Interface
}

func newWorld(t *testing.T) *world {
	t.Helper()
	w := kubeworld.Start(t)
	agentNS := w.Namespace(t, "weir-system", map[string]string{LabelCapture: CaptureEnabled}).Name
	return &world{World: w, node: w.Node(t, "node"), agentNS: agentNS, agentCli: agentClient(t, w, agentNS)}
}

// source builds a Source for the world's node as the agent; run starts it
// and waits for its caches.
func (w *world) source(t *testing.T, run bool) *Source {
	t.Helper()
	s, err := New(Options{Client: w.agentCli, NodeName: w.node.Name, AgentNamespace: w.agentNS, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	if run {
		// The informers live as long as Run's context: until the test
		// ends, or at once if the caches do not sync in time.
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		bound := time.AfterFunc(waitTimeout, cancel)
		err := s.Run(ctx)
		bound.Stop()
		if err != nil {
			t.Fatalf("run source: %v", err)
		}
	}
	return s
}

func TestEnrolmentAgainstAPIServer(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	other := w.Node(t, "other")

	enabled := w.Namespace(t, "shop", map[string]string{LabelCapture: CaptureEnabled}).Name
	plain := w.Namespace(t, "plain", nil).Name
	ensureDefaultServiceAccount(t, w.World, KubeSystem)
	labelNamespace(t, w.World, KubeSystem, CaptureEnabled)

	pod := func(ns, name, node string, labels, ann map[string]string) {
		w.Pod(t, ns, name, node, labels, ann)
	}
	pod(enabled, "app", w.node.Name, nil, nil)
	pod(enabled, "optout", w.node.Name, map[string]string{LabelCapture: CaptureDisabled}, nil)
	pod(enabled, "tuned", w.node.Name, nil, map[string]string{
		podconfig.AnnotationMode:                 "tproxy",
		podconfig.AnnotationExcludeInboundPorts:  "15090,8081",
		podconfig.AnnotationExcludeOutboundCIDRs: "169.254.169.254/32",
	})
	pod(enabled, "badann", w.node.Name, nil, map[string]string{podconfig.AnnotationExcludeOutboundPorts: "53,dns"})
	pod(enabled, "elsewhere", other.Name, nil, nil)
	pod(plain, "app", w.node.Name, nil, nil)
	pod(w.agentNS, "agent", w.node.Name, nil, nil)
	sysName := "weir-test-" + w.node.Name
	pod(KubeSystem, sysName, w.node.Name, nil, nil)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Client.CoreV1().Pods(KubeSystem).Delete(ctx, sysName, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
	})
	hostNet := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "hostnet"},
		Spec: corev1.PodSpec{NodeName: w.node.Name, HostNetwork: true,
			Containers: []corev1.Container{{Name: "app", Image: "kubeworld.invalid/app:1"}}},
	}
	if _, err := w.Client.CoreV1().Pods(enabled).Create(ctx, hostNet, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create hostNetwork pod: %v", err)
	}
	ready := w.Pod(t, enabled, "ready", w.node.Name, nil, nil)
	w.SetPodReady(t, ready, "10.244.0.7", "")

	s := w.source(t, true)

	tests := []struct {
		ns, name  string
		captured  bool
		reason    string
		invalid   string
		overrides podconfig.Overrides
		ips       []netip.Addr
	}{
		{ns: enabled, name: "app", captured: true, reason: "is labelled"},
		{ns: enabled, name: "ready", captured: true, ips: []netip.Addr{netip.MustParseAddr("10.244.0.7")}},
		{ns: enabled, name: "optout", reason: "opted out"},
		{ns: enabled, name: "tuned", captured: true, overrides: podconfig.Overrides{
			Mode: "tproxy", ExcludeInboundPorts: []uint16{8081, 15090}, ExcludeOutboundCIDRs: []string{"169.254.169.254/32"},
		}},
		{ns: enabled, name: "badann", invalid: "annotation weir.dev/exclude-outbound-ports"},
		{ns: enabled, name: "hostnet", reason: "hostNetwork"},
		{ns: enabled, name: "elsewhere", reason: "bound to node"},
		{ns: enabled, name: "missing", reason: "does not exist"},
		{ns: plain, name: "app", reason: "not labelled"},
		{ns: w.agentNS, name: "agent", reason: "agent's own"},
		{ns: KubeSystem, name: sysName, reason: "never captured"},
	}
	for _, tc := range tests {
		t.Run(tc.ns+"/"+tc.name, func(t *testing.T) {
			d := s.Decide(ctx, tc.ns, tc.name)
			if d.Err != nil {
				t.Fatalf("Decide: Err = %v", d.Err)
			}
			if d.Captured != tc.captured || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("Decide = captured %v, %q; want %v, containing %q", d.Captured, d.Reason, tc.captured, tc.reason)
			}
			if (tc.invalid == "") != (d.Invalid == nil) || (d.Invalid != nil && !strings.Contains(d.Invalid.Error(), tc.invalid)) {
				t.Errorf("Invalid = %v, want %q", d.Invalid, tc.invalid)
			}
			if !reflect.DeepEqual(d.Overrides, tc.overrides) {
				t.Errorf("Overrides = %+v, want %+v", d.Overrides, tc.overrides)
			}
			if !slices.Equal(d.IPs, tc.ips) {
				t.Errorf("IPs = %v, want %v", d.IPs, tc.ips)
			}
			if tc.name != "missing" && d.UID == "" {
				t.Errorf("UID is empty")
			}
		})
	}

	t.Run("Pods", func(t *testing.T) {
		var got []string
		for _, p := range s.Pods() {
			if p.UID == "" || p.UID != p.Decision.UID {
				t.Errorf("pod %s/%s: UID %q, decision UID %q", p.Namespace, p.Name, p.UID, p.Decision.UID)
			}
			got = append(got, fmt.Sprintf("%s/%s=%v", p.Namespace, p.Name, p.Decision.Captured))
		}
		want := []string{
			KubeSystem + "/" + sysName + "=false",
			plain + "/app=false",
			enabled + "/app=true",
			enabled + "/badann=false",
			enabled + "/optout=false",
			enabled + "/ready=true",
			enabled + "/tuned=true",
			w.agentNS + "/agent=false",
		}
		slices.Sort(want)
		// Pods lists only this node's pods (other tests' nodes have other
		// names), without hostNetwork ones.
		if !slices.Equal(got, want) {
			t.Errorf("Pods:\n got %v\nwant %v", got, want)
		}
	})

	t.Run("EnabledNamespaces", func(t *testing.T) {
		got := s.EnabledNamespaces()
		if !slices.Contains(got, enabled) || slices.Contains(got, plain) || slices.Contains(got, w.agentNS) || slices.Contains(got, KubeSystem) {
			t.Errorf("EnabledNamespaces = %v; want %s in it, not %s, %s, %s", got, enabled, plain, w.agentNS, KubeSystem)
		}
		if !slices.IsSorted(got) {
			t.Errorf("EnabledNamespaces not sorted: %v", got)
		}
	})

	t.Run("InvalidEvent", func(t *testing.T) {
		// The bad pod's Warning, written by the agent's recorder with the
		// agent's rights; once, although the pod was looked at twice.
		var ev corev1.Event
		eventually(t, "the InvalidCaptureConfig event", func() error {
			list, err := w.Client.CoreV1().Events(enabled).List(ctx, metav1.ListOptions{
				FieldSelector: fields.Set{"involvedObject.name": "badann", "reason": ReasonInvalidCaptureConfig}.String(),
			})
			if err != nil {
				return err
			}
			if len(list.Items) != 1 {
				return fmt.Errorf("%d events", len(list.Items))
			}
			ev = list.Items[0]
			return nil
		})
		if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Message, "weir.dev/exclude-outbound-ports") || ev.Count != 1 {
			t.Errorf("event = type %s, count %d, message %q; want a Warning naming weir.dev/exclude-outbound-ports, count 1", ev.Type, ev.Count, ev.Message)
		}
		if ev.Source.Component != "weir-agent" || ev.Source.Host != w.node.Name {
			t.Errorf("event source = %+v, want weir-agent on %s", ev.Source, w.node.Name)
		}
		// No Warning for the pod with good annotations.
		list, err := w.Client.CoreV1().Events(enabled).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=tuned"})
		if err != nil || len(list.Items) != 0 {
			t.Errorf("events for a valid pod: %v, %v", list, err)
		}
	})
}

// TestDecideBeforeCache: a CNI ADD can come before the watch delivers the
// pod; Decide then asks the API. The source here never ran, so its caches
// are empty and every answer must come from a GET.
func TestDecideBeforeCache(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	ns := w.Namespace(t, "early", map[string]string{LabelCapture: CaptureEnabled}).Name
	w.Pod(t, ns, "app", w.node.Name, nil, map[string]string{podconfig.AnnotationMode: "redirect"})
	s := w.source(t, false)
	d := s.Decide(ctx, ns, "app")
	if !d.Captured || d.Err != nil || d.Overrides.Mode != "redirect" || d.UID == "" {
		t.Fatalf("Decide before cache = %+v; want captured with mode redirect", d)
	}
	if d := s.Decide(ctx, ns, "nope"); d.Captured || d.Err != nil {
		t.Fatalf("Decide of a missing pod = %+v; want not captured, no error", d)
	}
	// An API the agent cannot reach is no decision: Err is set.
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if d := s.Decide(cancelled, ns, "app"); d.Captured || d.Err == nil {
		t.Fatalf("Decide with the API unreachable = %+v; want Err set", d)
	}
}

// TestDecideStaleCache: the cache still holds an earlier pod of the same
// name (a StatefulSet pod deleted and recreated) when the new pod's CNI ADD
// comes; DecideUID notices the UID and asks the API.
func TestDecideStaleCache(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	ns := w.Namespace(t, "sts", map[string]string{LabelCapture: CaptureEnabled}).Name
	pod := w.Pod(t, ns, "db-0", w.node.Name, nil, nil)
	s := w.source(t, false)
	old := pod.DeepCopy()
	old.UID = "uid-of-the-deleted-pod"
	old.Labels = map[string]string{LabelCapture: CaptureDisabled}
	if err := s.podFactory.Core().V1().Pods().Informer().GetIndexer().Add(old); err != nil {
		t.Fatal(err)
	}
	if d := s.Decide(ctx, ns, "db-0"); d.Captured || d.UID != string(old.UID) {
		t.Fatalf("Decide without a UID reads the cache: %+v; want the cached, opted-out pod", d)
	}
	if d := s.DecideUID(ctx, ns, "db-0", string(pod.UID)); !d.Captured || d.UID != string(pod.UID) || d.Err != nil {
		t.Fatalf("DecideUID(new UID) = %+v; want the API's pod, captured", d)
	}
	if d := s.DecideUID(ctx, ns, "db-0", "uid-of-a-pod-never-seen"); d.Captured || d.Err != nil || !strings.Contains(d.Reason, "replaced") {
		t.Fatalf("DecideUID(unknown UID) = %+v; want not captured: replaced", d)
	}
}

// TestResyncWakes: with a ResyncPeriod, Changed fires after each replay
// although nothing changed, so the agent reconciles periodically.
func TestResyncWakes(t *testing.T) {
	w := newWorld(t)
	s, err := New(Options{Client: w.agentCli, NodeName: w.node.Name, ResyncPeriod: time.Second, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := s.Run(ctx); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		drain(s.Changed())
		waitChanged(t, s, fmt.Sprintf("resync %d", i))
	}
}

func TestChangedOnLabels(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	ns := w.Namespace(t, "flip", nil).Name
	w.Pod(t, ns, "app", w.node.Name, nil, nil)
	s := w.source(t, true)
	if d := s.Decide(ctx, ns, "app"); d.Captured {
		t.Fatalf("pod captured before its namespace is labelled: %+v", d)
	}

	step := func(what string, change func(), captured bool) {
		t.Helper()
		drain(s.Changed())
		change()
		waitChanged(t, s, what)
		eventually(t, what, func() error {
			if d := s.Decide(ctx, ns, "app"); d.Captured != captured {
				return fmt.Errorf("captured = %v (%s)", d.Captured, d.Reason)
			}
			if got := slices.Contains(s.EnabledNamespaces(), ns); got != (captured || what == "pod opt-out") {
				return fmt.Errorf("EnabledNamespaces has %s: %v", ns, got)
			}
			return nil
		})
	}
	step("namespace label added", func() { labelNamespace(t, w.World, ns, CaptureEnabled) }, true)
	step("pod opt-out", func() { labelPod(t, w.World, ns, "app", CaptureDisabled) }, false)
	step("pod opt-out removed", func() { labelPod(t, w.World, ns, "app", "") }, true)
	step("namespace label removed", func() { labelNamespace(t, w.World, ns, "") }, false)
}

func TestServicesFromEndpointSlices(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	ns := w.Namespace(t, "svc", nil).Name
	s := w.source(t, true)

	web := w.Service(t, ns, "web", map[string]string{"app": "web"},
		corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
		corev1.ServicePort{Name: "admin", Port: 9000},
		corev1.ServicePort{Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP},
	)
	yes, no := new(true), new(false)
	endpoint := func(addr, zone string, ready, serving, terminating *bool) discoveryv1.Endpoint {
		e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: ready, Serving: serving, Terminating: terminating}}
		if zone != "" {
			e.Zone = &zone
		}
		return e
	}
	v4 := w.EndpointSlice(t, web,
		endpoint("10.244.1.1", "zone-a", yes, yes, no),
		endpoint("10.244.1.2", "zone-b", no, no, no),   // not ready
		endpoint("10.244.1.3", "zone-b", no, no, yes),  // terminating, not serving
		endpoint("10.244.1.4", "zone-a", no, yes, yes), // terminating, still serving
	)
	w.EndpointSlice(t, web, endpoint("fd00:244::1", "zone-a", yes, yes, no))

	headless := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "headless"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 80}}},
	}
	headless, err := w.Client.CoreV1().Services(ns).Create(ctx, headless, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create headless service: %v", err)
	}
	w.EndpointSlice(t, headless, endpoint("10.244.1.9", "", yes, yes, no))
	ext := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "ext"},
		Spec:       corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "example.invalid"},
	}
	if _, err := w.Client.CoreV1().Services(ns).Create(ctx, ext, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ExternalName service: %v", err)
	}
	bad := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "bad", Annotations: map[string]string{AnnotationBalancer: "fastest"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 7000}}},
	}
	if bad, err = w.Client.CoreV1().Services(ns).Create(ctx, bad, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create service with a bad annotation: %v", err)
	}

	vip := netip.MustParseAddr(web.Spec.ClusterIP)
	ap := netip.AddrPortFrom
	mine := func() []route.Service {
		var out []route.Service
		for _, rs := range s.Services() {
			if strings.HasPrefix(rs.Name, ns+"/") {
				out = append(out, rs)
			}
		}
		return out
	}
	zone := func(z string) map[string]string { return map[string]string{LabelZone: z} }
	want := []route.Service{
		{Name: ns + "/bad:7000", Addresses: []netip.AddrPort{ap(netip.MustParseAddr(bad.Spec.ClusterIP), 7000)}},
		{Name: ns + "/web:80", Addresses: []netip.AddrPort{ap(vip, 80)}, Endpoints: []cluster.Endpoint{
			{Addr: netip.MustParseAddrPort("10.244.1.1:8080"), Labels: zone("zone-a")},
			{Addr: netip.MustParseAddrPort("10.244.1.4:8080"), Labels: zone("zone-a"), Health: cluster.Draining},
			{Addr: netip.MustParseAddrPort("[fd00:244::1]:8080"), Labels: zone("zone-a")},
		}, Protocol: route.HTTP}, // the port is named "http"
		{Name: ns + "/web:9000", Addresses: []netip.AddrPort{ap(vip, 9000)}, Endpoints: []cluster.Endpoint{
			{Addr: netip.MustParseAddrPort("10.244.1.1:9000"), Labels: zone("zone-a")},
			{Addr: netip.MustParseAddrPort("10.244.1.4:9000"), Labels: zone("zone-a"), Health: cluster.Draining},
			{Addr: netip.MustParseAddrPort("[fd00:244::1]:9000"), Labels: zone("zone-a")},
		}},
	}
	eventually(t, "services from the API", func() error {
		if got := mine(); !reflect.DeepEqual(got, want) {
			return fmt.Errorf("\n got %+v\nwant %+v", got, want)
		}
		return nil
	})
	eventually(t, "the InvalidClusterConfig event", func() error {
		list, err := w.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{
			FieldSelector: fields.Set{"involvedObject.name": "bad", "reason": ReasonInvalidClusterConfig}.String(),
		})
		if err != nil {
			return err
		}
		if len(list.Items) != 1 || !strings.Contains(list.Items[0].Message, AnnotationBalancer) {
			return fmt.Errorf("events: %+v", list.Items)
		}
		return nil
	})

	// The not-ready endpoint becomes ready: Changed fires and Services
	// has it; the unchanged Service keeps the very same values, so the
	// route rebuild reuses its cluster.
	badAddrs := func() *netip.AddrPort {
		for _, rs := range mine() {
			if rs.Name == ns+"/bad:7000" {
				return &rs.Addresses[0]
			}
		}
		t.Fatal("no bad:7000")
		return nil
	}
	before := badAddrs()
	drain(s.Changed())
	cur, err := w.Client.DiscoveryV1().EndpointSlices(ns).Get(ctx, v4.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Endpoints[1].Conditions = discoveryv1.EndpointConditions{Ready: yes, Serving: yes, Terminating: no}
	if _, err := w.Client.DiscoveryV1().EndpointSlices(ns).Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update endpoint slice: %v", err)
	}
	waitChanged(t, s, "endpoint ready")
	eventually(t, "the newly ready endpoint", func() error {
		for _, rs := range mine() {
			if rs.Name == ns+"/web:80" {
				if len(rs.Endpoints) == 4 && rs.Endpoints[1].Addr == netip.MustParseAddrPort("10.244.1.2:8080") && rs.Endpoints[1].Health == cluster.Healthy {
					return nil
				}
				return fmt.Errorf("web:80 endpoints %+v", rs.Endpoints)
			}
		}
		return fmt.Errorf("no web:80")
	})
	if badAddrs() != before {
		t.Error("an unchanged Service was derived anew after another Service's slice changed")
	}

	// Deleting the Service removes its entries.
	drain(s.Changed())
	if err := w.Client.CoreV1().Services(ns).Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitChanged(t, s, "service deleted")
	eventually(t, "the deleted service to go", func() error {
		if got := mine(); len(got) != 1 {
			return fmt.Errorf("services %+v", got)
		}
		return nil
	})
}

func TestRecordCapture(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	ns := w.Namespace(t, "rec", map[string]string{LabelCapture: CaptureEnabled}).Name
	w.Pod(t, ns, "app", w.node.Name, nil, map[string]string{"keep": "me"})
	s := w.source(t, true)

	get := func() *corev1.Pod {
		p, err := w.Client.CoreV1().Pods(ns).Get(ctx, "app", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if err := s.RecordCapture(ctx, ns, "app", true, "namespace is labelled"); err != nil {
		t.Fatalf("RecordCapture: %v", err)
	}
	p := get()
	if p.Annotations[AnnotationCaptured] != "true" || p.Annotations[AnnotationCaptureReason] != "namespace is labelled" || p.Annotations["keep"] != "me" {
		t.Fatalf("annotations after RecordCapture = %v", p.Annotations)
	}
	// Once the cache has caught up, the same record writes nothing.
	eventually(t, "the cache to see the annotation", func() error {
		cp, err := s.pods.Pods(ns).Get("app")
		if err != nil || cp.ResourceVersion != p.ResourceVersion {
			return fmt.Errorf("cached pod: %v", err)
		}
		return nil
	})
	if err := s.RecordCapture(ctx, ns, "app", true, "namespace is labelled"); err != nil {
		t.Fatalf("RecordCapture again: %v", err)
	}
	if rv := get().ResourceVersion; rv != p.ResourceVersion {
		t.Errorf("unchanged RecordCapture wrote the pod: resourceVersion %s -> %s", p.ResourceVersion, rv)
	}
	if err := s.RecordCapture(ctx, ns, "app", false, ""); err != nil {
		t.Fatalf("RecordCapture false: %v", err)
	}
	p = get()
	if _, has := p.Annotations[AnnotationCaptureReason]; p.Annotations[AnnotationCaptured] != "false" || has {
		t.Fatalf("annotations after RecordCapture(false, \"\") = %v", p.Annotations)
	}
	long := strings.Repeat("é", 200) // 400 bytes, cut inside a rune
	if err := s.RecordCapture(ctx, ns, "app", false, long); err != nil {
		t.Fatalf("RecordCapture with a long reason: %v", err)
	}
	if got := get().Annotations[AnnotationCaptureReason]; len(got) > maxReasonLen || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") {
		t.Errorf("long reason recorded as %q (%d bytes), want at most %d valid UTF-8 bytes ending in ...", got, len(got), maxReasonLen)
	}
	if err := s.RecordCapture(ctx, ns, "gone", true, "x"); err != nil {
		t.Fatalf("RecordCapture of a missing pod = %v, want nil", err)
	}
}

func TestSetNodeReady(t *testing.T) {
	w := newWorld(t)
	ctx := kubeworld.Context(t)
	dedicated := corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}
	node := w.Node(t, "tainted", dedicated)
	s, err := New(Options{Client: w.agentCli, NodeName: node.Name, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	ours := corev1.Taint{Key: TaintKey, Effect: corev1.TaintEffectNoSchedule}
	get := func() *corev1.Node {
		n, err := w.Client.CoreV1().Nodes().Get(ctx, node.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// The apiserver adds node.kubernetes.io/not-ready to a new node
	// (admission plugin TaintNodesByCondition): another writer's taint
	// that must survive as dedicated does.
	base := get().Spec.Taints
	if !slices.Contains(base, dedicated) {
		t.Fatalf("new node's taints %v lack %v", base, dedicated)
	}
	withOurs := append(slices.Clone(base), ours)
	steps := []struct {
		ready bool
		want  []corev1.Taint
		write bool
	}{
		{ready: false, want: withOurs, write: true},
		{ready: false, want: withOurs, write: false},
		{ready: true, want: base, write: true},
		{ready: true, want: base, write: false},
	}
	for i, st := range steps {
		before := get().ResourceVersion
		if err := s.SetNodeReady(ctx, st.ready); err != nil {
			t.Fatalf("step %d: SetNodeReady(%v): %v", i, st.ready, err)
		}
		n := get()
		if !reflect.DeepEqual(n.Spec.Taints, st.want) {
			t.Errorf("step %d: SetNodeReady(%v): taints %v, want %v", i, st.ready, n.Spec.Taints, st.want)
		}
		if wrote := n.ResourceVersion != before; wrote != st.write {
			t.Errorf("step %d: SetNodeReady(%v) wrote the node: %v, want %v", i, st.ready, wrote, st.write)
		}
	}

	// Concurrent writers of other taints lose nothing: each patch carries
	// the resourceVersion it was computed from, and conflicts are retried.
	errs := make(chan error, 2)
	go func() {
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			err = s.SetNodeReady(ctx, i%2 == 1)
		}
		errs <- err
	}()
	go func() {
		var err error
		for i := 0; i < 10 && err == nil; i++ {
			err = addTaint(ctx, w.Client, node.Name, corev1.Taint{Key: fmt.Sprintf("other-%d", i), Effect: corev1.TaintEffectPreferNoSchedule})
		}
		errs <- err
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent taint writers: %v", err)
		}
	}
	n := get()
	for i := 0; i < 10; i++ {
		if !slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == fmt.Sprintf("other-%d", i) }) {
			t.Errorf("taint other-%d lost: %v", i, n.Spec.Taints)
		}
	}
	if slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == TaintKey }) {
		t.Errorf("taint %s present after the last SetNodeReady(true): %v", TaintKey, n.Spec.Taints)
	}

	missing, err := New(Options{Client: w.agentCli, NodeName: "no-such-node"})
	if err != nil {
		t.Fatal(err)
	}
	if err := missing.SetNodeReady(ctx, false); err == nil || !strings.Contains(err.Error(), "no-such-node") {
		t.Errorf("SetNodeReady on a missing node = %v, want an error naming it", err)
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	client := fake.NewClientset()
	for _, o := range []Options{
		{NodeName: "n"},
		{Client: client},
		{Client: client, NodeName: "n", ResyncPeriod: -time.Second},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) = nil error", o)
		}
	}
}

// addTaint is another writer of the node's taints, the way kubectl taint
// writes: read, add, update with the read resourceVersion, retry on
// conflict.
func addTaint(ctx context.Context, c kubernetes.Interface, node string, taint corev1.Taint) error {
	for {
		n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Spec.Taints = append(n.Spec.Taints, taint)
		_, err = c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

func drain(ch <-chan struct{}) {
	select {
	case <-ch:
	default:
	}
}

func waitChanged(t *testing.T, s *Source, what string) {
	t.Helper()
	select {
	case <-s.Changed():
	case <-time.After(waitTimeout):
		t.Fatalf("no Changed after %s", what)
	}
}

func labelNamespace(t *testing.T, w *kubeworld.World, name, value string) {
	t.Helper()
	patchLabel(t, func(p []byte) error {
		_, err := w.Client.CoreV1().Namespaces().Patch(kubeworld.Context(t), name, "application/merge-patch+json", p, metav1.PatchOptions{})
		return err
	}, value)
	if name == KubeSystem && value != "" {
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, _ = w.Client.CoreV1().Namespaces().Patch(ctx, name, "application/merge-patch+json", []byte(`{"metadata":{"labels":{"weir.dev/capture":null}}}`), metav1.PatchOptions{})
		})
	}
}

func labelPod(t *testing.T, w *kubeworld.World, ns, name, value string) {
	t.Helper()
	patchLabel(t, func(p []byte) error {
		_, err := w.Client.CoreV1().Pods(ns).Patch(kubeworld.Context(t), name, "application/merge-patch+json", p, metav1.PatchOptions{})
		return err
	}, value)
}

// patchLabel sets (or, with value "", removes) weir.dev/capture.
func patchLabel(t *testing.T, patch func([]byte) error, value string) {
	t.Helper()
	v := `null`
	if value != "" {
		v = `"` + value + `"`
	}
	if err := patch([]byte(`{"metadata":{"labels":{"weir.dev/capture":` + v + `}}}`)); err != nil {
		t.Fatalf("label weir.dev/capture=%s: %v", value, err)
	}
}

// ensureDefaultServiceAccount creates the "default" ServiceAccount of a
// namespace the harness did not make (no controller-manager runs), which
// pod admission requires.
func ensureDefaultServiceAccount(t *testing.T, w *kubeworld.World, ns string) {
	t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}
	_, err := w.Client.CoreV1().ServiceAccounts(ns).Create(kubeworld.Context(t), sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatalf("create service account %s/default: %v", ns, err)
	}
}
