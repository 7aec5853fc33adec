package integration

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weir-mesh/weir/agent/kube"
	"github.com/weir-mesh/weir/integration/kubeworld"
)

// TestKubeKernelService is issue 12's kernel balancing from Kubernetes: a
// Service annotated weir.dev/dataplane: kernel, port declared tcp by its
// appProtocol, is balanced by the connect program from its EndpointSlice
// against a real API server. Connections from a captured pod reach both
// endpoints on the ClusterIP without the agent; an endpoint that turns not
// ready leaves the kernel's table; removing the annotation hands the
// Service back to the agent.
func TestKubeKernelService(t *testing.T) {
	k := newKubeNodeMode(t, false, "ebpf")
	ns := k.namespace(t, true)
	backNS := k.namespace(t, false)
	client := k.mustPod(t, ns, "client", nil)
	a, aObj, _ := k.pod(t, backNS, "a", nil)
	b, bObj, _ := k.pod(t, backNS, "b", nil)
	a.StartNginx(t, 8080, "a")
	b.StartNginx(t, 8080, "b")
	tcp := "tcp"
	svc := k.kw.Service(t, backNS, "web", map[string]string{"app": "web"},
		corev1.ServicePort{Name: "web", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP, AppProtocol: &tcp})
	svc.Annotations = map[string]string{kube.AnnotationDataplane: "kernel"}
	svc, err := k.kw.Client.CoreV1().Services(backNS).Update(kubeworld.Context(t), svc, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("annotate service: %v", err)
	}
	slice := k.kw.EndpointSlice(t, svc, kubeworld.PodEndpoint(aObj), kubeworld.PodEndpoint(bObj))
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	waitMetric(t, k.agent, "weir_kernel_lb_endpoints", 2, 10*time.Second)
	if got := k.agent.Metric(t, "weir_kernel_lb_services"); got != 1 {
		t.Fatalf("weir_kernel_lb_services = %v, want 1", got)
	}

	get := func() string {
		t.Helper()
		body, err := client.Curl(t, url(vip))
		if err != nil {
			t.Fatalf("GET %s from the captured pod: %v", vip, err)
		}
		return strings.TrimSpace(body)
	}
	before := outbound(t, k.agent)
	seen := map[string]int{}
	for range 30 {
		seen[get()]++
	}
	if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 30 {
		t.Fatalf("answers over the ClusterIP %v: %v; want both endpoints and nothing else", vip, seen)
	}
	if after := outbound(t, k.agent); after != before {
		t.Fatalf("the agent's outbound connections went from %v to %v: kernel-balanced connections passed the agent", before, after)
	}

	// b turns not ready: the kernel's table loses it.
	notReady := false
	slice.Endpoints[1].Conditions.Ready = &notReady
	if _, err := k.kw.Client.DiscoveryV1().EndpointSlices(backNS).Update(kubeworld.Context(t), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, k.agent, "weir_kernel_lb_endpoints", 1, 10*time.Second)
	for i := range 10 {
		if got := get(); got != "a" {
			t.Fatalf("request %d after b turned not ready: answered by %q", i, got)
		}
	}
	if after := outbound(t, k.agent); after != before {
		t.Fatalf("the agent's outbound connections went from %v to %v after the update", before, after)
	}

	// Without the annotation the agent balances the Service again.
	svc, err = k.kw.Client.CoreV1().Services(backNS).Get(kubeworld.Context(t), "web", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	delete(svc.Annotations, kube.AnnotationDataplane)
	if _, err := k.kw.Client.CoreV1().Services(backNS).Update(kubeworld.Context(t), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, k.agent, "weir_kernel_lb_services", 0, 10*time.Second)
	if got := get(); got != "a" {
		t.Fatalf("through the agent after the annotation went: answered by %q", got)
	}
	if after := outbound(t, k.agent); after != before+1 {
		t.Fatalf("through the agent after the annotation went: outbound %v -> %v, want one more", before, after)
	}
}
