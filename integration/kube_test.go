package integration

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weir-mesh/weir/bpf/capture"
	"github.com/weir-mesh/weir/integration/kubeworld"
	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// kubeNode is a test-world node whose agent watches a real API server.
type kubeNode struct {
	*testworld.Node
	w        world
	kw       *kubeworld.World
	nodeName string
	agentCfg map[string]any
	agent    *testworld.Agent
}

const captureLabel = "weir.dev/capture"

// newKubeNode starts an API server, a node netns that reaches it through a
// relay, a Node object, and (unless noAgent) the agent in Kubernetes mode.
func newKubeNode(t *testing.T, noAgent bool) *kubeNode {
	t.Helper()
	return newKubeNodeMode(t, noAgent, "redirect")
}

// newKubeNodeMode is newKubeNode with the CNI plugin's capture mode.
func newKubeNodeMode(t *testing.T, noAgent bool, mode string) *kubeNode {
	t.Helper()
	kw := kubeworld.Start(t)
	w := world{"1.1.0", mode, "v4", ""}
	k := &kubeNode{Node: testworld.NewNode(t, w.nodeOptions()), w: w, kw: kw}
	k.nodeName = kw.Node(t, "weir-node").Name
	// The agent runs in the node netns: give it a kubeconfig pointing at a
	// relay into the test's namespace.
	local := k.Forward(t, strings.TrimPrefix(kw.Host, "https://"))
	kc, err := clientcmd.LoadFromFile(kw.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + local
	}
	path := filepath.Join(k.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	k.agentCfg = map[string]any{
		"kubernetes":        map[string]any{"enabled": true, "kubeconfig": path, "nodeName": k.nodeName, "namespace": "weir-system"},
		"reconcileInterval": "1s",
	}
	if !noAgent {
		k.agent = k.StartAgent(t, k.agentCfg)
	}
	return k
}

// namespace creates a namespace, labelled for capture when enabled.
func (k *kubeNode) namespace(t *testing.T, enabled bool) string {
	labels := map[string]string{}
	if enabled {
		labels[captureLabel] = "enabled"
	}
	return k.kw.Namespace(t, "ns", labels).Name
}

// pod creates the pod object, runs the CNI chain as the kubelet's runtime
// would, then reports the pod running with its IP.
func (k *kubeNode) pod(t *testing.T, ns, name string, labels map[string]string) (*testworld.Pod, *corev1.Pod, error) {
	t.Helper()
	obj := k.kw.Pod(t, ns, name, k.nodeName, labels, nil)
	p := k.NewPodNetns(t, ns, name)
	p.UID = string(obj.UID)
	if err := k.Add(t, p); err != nil {
		return p, obj, err
	}
	obj = k.kw.SetPodReady(t, obj, p.IP4.String(), "")
	return p, obj, nil
}

func (k *kubeNode) mustPod(t *testing.T, ns, name string, labels map[string]string) *testworld.Pod {
	t.Helper()
	p, _, err := k.pod(t, ns, name, labels)
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", ns, name, err)
	}
	return p
}

// captured reports whether p holds weir's capture (rules, or an enrolment
// in the node's pinned eBPF capture) and the agent's outbound listener.
func (k *kubeNode) captured(t *testing.T, p *testworld.Pod) bool {
	t.Helper()
	return installed(t, k.Node, p) && strings.Contains(p.MustRun(t, "ss", "-Hltn"), ":15001")
}

func eventually(t *testing.T, within time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > within {
			t.Fatalf("not within %v: %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

// Must show 1 (issue 5): a labelled namespace's pod is captured; an
// unlabelled namespace's pod is not; a pod with the opt-out label is not;
// the agent records its decision on the pod.
func TestKubeEnablement(t *testing.T) {
	k := newKubeNode(t, false)
	on, off := k.namespace(t, true), k.namespace(t, false)
	in := k.mustPod(t, on, "in", nil)
	out := k.mustPod(t, off, "out", nil)
	optOut := k.mustPod(t, on, "opt-out", map[string]string{captureLabel: "disabled"})
	if !k.captured(t, in) {
		t.Fatal("pod of a labelled namespace not captured")
	}
	if k.captured(t, out) || k.captured(t, optOut) {
		t.Fatalf("captured: unlabelled namespace %v, opted-out pod %v", k.captured(t, out), k.captured(t, optOut))
	}
	eventually(t, 10*time.Second, "weir.dev/captured=true on the pod", func() bool {
		p, err := k.kw.Client.CoreV1().Pods(on).Get(kubeworld.Context(t), "in", metav1.GetOptions{})
		return err == nil && p.Annotations["weir.dev/captured"] == "true"
	})
}

// Must show 2 (issue 5): labelling the namespace of a running pod captures
// it, same netns, no restart; unlabelling releases it: its requests go
// through the agent, then around it.
//
// Must show 3 (issue 12): in ebpf mode the same happens by map update alone:
// the pod gets no rule and no policy route, and the node cgroup keeps the
// same number of BPF links (nothing is attached per pod).
func TestKubeOnboardRunningPod(t *testing.T) {
	for _, mode := range []string{"redirect", "ebpf"} {
		t.Run(mode, func(t *testing.T) { kubeOnboardRunningPod(t, mode) })
	}
}

func kubeOnboardRunningPod(t *testing.T, mode string) {
	k := newKubeNodeMode(t, false, mode)
	ns := k.namespace(t, false)
	srvNS := k.namespace(t, false)
	app := k.mustPod(t, ns, "app", nil)
	srv := k.mustPod(t, srvNS, "server", nil)
	srv.StartNginx(t, 8080, "server")
	if k.captured(t, app) {
		t.Fatal("pod captured before its namespace was labelled")
	}
	// The pod's own process: it must outlive onboarding and release.
	resident := app.Start(t, "sleep", "600")
	// Another pod already captured, so the node's eBPF capture is loaded
	// and attached before the app is onboarded (the agent loads it at the
	// first pod that asks for it).
	k.mustPod(t, k.namespace(t, true), "other", nil)
	links := func() int {
		if mode != "ebpf" {
			return 0
		}
		n, err := capture.CgroupLinks(k.Cgroup)
		if err != nil {
			t.Fatalf("count cgroup links: %v", err)
		}
		return n
	}
	linksBefore := links()
	if mode == "ebpf" && linksBefore != 5 {
		t.Fatalf("node cgroup holds %d BPF links with one pod captured, want 5", linksBefore)
	}
	request := func(what string, wantAgent bool) {
		t.Helper()
		before := outbound(t, k.agent)
		if body, err := app.Curl(t, url(netip.AddrPortFrom(srv.IP4, 8080))); err != nil || strings.TrimSpace(body) != "server" {
			t.Fatalf("request from the %s pod: %v: %q", what, err, body)
		}
		if got := outbound(t, k.agent) - before; (got == 1) != wantAgent || got > 1 {
			t.Fatalf("request from the %s pod: agent counted %v outbound connections, want through the agent: %v", what, got, wantAgent)
		}
	}
	request("not yet onboarded", false)
	label := func(v string) {
		n, err := k.kw.Client.CoreV1().Namespaces().Get(kubeworld.Context(t), ns, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if v == "" {
			delete(n.Labels, captureLabel)
		} else {
			n.Labels[captureLabel] = v
		}
		if _, err := k.kw.Client.CoreV1().Namespaces().Update(kubeworld.Context(t), n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	label("enabled")
	d := eventually(t, 10*time.Second, "running pod captured after the label", func() bool { return k.captured(t, app) })
	t.Logf("onboarded %v after the label", d)
	k.w.assertNoRulesIn(t, app)
	request("onboarded", true)
	// REDIRECT pods run without random timestamp offsets while captured
	// (capture.tcpTimestamps, TestRedirectTimeWaitNoStall); other modes
	// keep the kernel's default.
	wantStamps := map[string]string{"redirect": "2"}[mode]
	if wantStamps == "" {
		wantStamps = "1"
	}
	if got := timestampsIn(t, app); got != wantStamps {
		t.Fatalf("net.ipv4.tcp_timestamps in the onboarded %s pod is %s, want %s", mode, got, wantStamps)
	}
	if n := links(); n != linksBefore {
		t.Fatalf("onboarding changed the node cgroup's BPF links from %d to %d; enrolment must be a map update", linksBefore, n)
	}
	label("")
	eventually(t, 10*time.Second, "pod released after the label is removed", func() bool { return !k.captured(t, app) })
	request("released", false)
	k.w.assertNoRulesIn(t, app)
	if got := timestampsIn(t, app); got != "1" {
		t.Fatalf("net.ipv4.tcp_timestamps in the released pod is %s, want the kernel default 1 back", got)
	}
	if n := links(); n != linksBefore {
		t.Fatalf("release changed the node cgroup's BPF links from %d to %d", linksBefore, n)
	}
	if err := resident.Process.Signal(syscall.Signal(0)); err != nil || resident.ProcessState != nil {
		t.Fatalf("the pod's process did not survive onboarding and release: %v", err)
	}
}

// Must show 3 (issue 5): the agent killed and restarted with captured pods
// running: within 2 s all are captured again, a pod whose netns vanished
// meanwhile is dropped, and no rule is duplicated. In ebpf mode the pinned
// programs are re-used (the node cgroup keeps its links) and the pods hold
// no rule.
func TestKubeRestartReconciles(t *testing.T) {
	for _, mode := range []string{"redirect", "ebpf"} {
		t.Run(mode, func(t *testing.T) { kubeRestartReconciles(t, mode) })
	}
}

func kubeRestartReconciles(t *testing.T, mode string) {
	k := newKubeNodeMode(t, false, mode)
	ns := k.namespace(t, true)
	srvNS := k.namespace(t, false)
	srv := k.mustPod(t, srvNS, "server", nil)
	srv.StartNginx(t, 8080, "server")
	var pods []*testworld.Pod
	for i := 0; i < 5; i++ {
		pods = append(pods, k.mustPod(t, ns, fmt.Sprintf("p%d", i), nil))
	}
	stale := k.mustPod(t, ns, "stale", nil)
	k.agent.Kill(t)
	stale.MustRunDelete(t)
	start := time.Now()
	k.agent.Restart(t)
	for _, p := range pods {
		eventually(t, 2*time.Second-time.Since(start), "pod "+p.Name+" captured again after restart", func() bool { return k.captured(t, p) })
	}
	t.Logf("all pods captured again %v after the restart began", time.Since(start))
	for _, p := range pods {
		if err := k.Check(p); err != nil {
			t.Fatalf("CHECK %s after restart (duplicate or missing rules): %v", p.Name, err)
		}
		before := outbound(t, k.agent)
		if body, err := p.Curl(t, url(netip.AddrPortFrom(srv.IP4, 8080))); err != nil || strings.TrimSpace(body) != "server" {
			t.Fatalf("request from %s after restart: %v: %q", p.Name, err, body)
		}
		if outbound(t, k.agent)-before != 1 {
			t.Fatalf("%s: request after restart did not go through the agent", p.Name)
		}
	}
	if n := k.agent.Metric(t, "weir_pods_captured"); n != float64(len(pods)) {
		t.Fatalf("agent captures %v pods, want %d (the stale one dropped)", n, len(pods))
	}
	k.w.assertNoRulesIn(t, pods...)
	if mode == "ebpf" {
		if n, err := capture.CgroupLinks(k.Cgroup); err != nil || n != 5 {
			t.Fatalf("node cgroup links after the restart: %d (err %v), want 5: attached twice", n, err)
		}
	}
}

// weir-cni's DEL comes first in the chain's DEL, while the pod's namespace
// still holds its address and the pod object is still enabled: reconciles
// in that window must not take the namespace for a pod added while the
// agent was away and capture it again.
func TestKubeDelNotRediscovered(t *testing.T) {
	k := newKubeNode(t, false)
	ns := k.namespace(t, true)
	p := k.mustPod(t, ns, "leaving", nil)
	eventually(t, 5*time.Second, "pod captured", func() bool { return k.captured(t, p) })
	if err := k.DelWeirOnly(p); err != nil {
		t.Fatalf("weir-cni DEL: %v", err)
	}
	// reconcileInterval is 1s: several reconciles, each with the pod
	// object enabled and its address in a namespace on this node.
	time.Sleep(3500 * time.Millisecond)
	if n := k.agent.Metric(t, "weir_pods_captured"); n != 0 {
		t.Fatalf("after weir-cni's DEL the agent captures %v pods, want 0: the leaving pod was rediscovered", n)
	}
	if installed, err := redirect.Installed(p.Path); err != nil || installed {
		t.Fatalf("the leaving pod's namespace holds weir rules again (installed=%v err=%v)", installed, err)
	}
}

// Must show 4 (issue 5): with the agent down, a pod of an unlabelled
// namespace still starts; one of a labelled namespace does not.
func TestKubeAgentDownOnlyBlocksEnabled(t *testing.T) {
	k := newKubeNode(t, false)
	on, off := k.namespace(t, true), k.namespace(t, false)
	eventually(t, 10*time.Second, "enablement file lists the labelled namespace", func() bool {
		b, err := os.ReadFile(filepath.Join(k.Dir, "enablement.json"))
		return err == nil && strings.Contains(string(b), on)
	})
	k.agent.Stop(t)
	if _, _, err := k.pod(t, off, "free", nil); err != nil {
		t.Fatalf("ADD in an unlabelled namespace with the agent down: %v", err)
	}
	if _, _, err := k.pod(t, on, "blocked", nil); err == nil {
		t.Fatal("ADD in a labelled namespace succeeded with the agent down")
	}
}

// Must show 5 (issue 5): a Service and EndpointSlice in the API are reached
// by ClusterIP through the agent; an endpoint turning not-ready stops
// receiving traffic.
func TestKubeServiceByClusterIP(t *testing.T) {
	k := newKubeNode(t, false)
	ns := k.namespace(t, true)
	backNS := k.namespace(t, false)
	client := k.mustPod(t, ns, "client", nil)
	a, aObj, _ := k.pod(t, backNS, "a", nil)
	b, bObj, _ := k.pod(t, backNS, "b", nil)
	a.StartNginx(t, 8080, "a")
	b.StartNginx(t, 8080, "b")
	svc := k.kw.Service(t, backNS, "web", map[string]string{"app": "web"}, corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP})
	epA, epB := kubeworld.PodEndpoint(aObj), kubeworld.PodEndpoint(bObj)
	slice := k.kw.EndpointSlice(t, svc, epA, epB)
	vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
	seen := map[string]int{}
	eventually(t, 10*time.Second, "both endpoints answer on the ClusterIP", func() bool {
		body, err := client.Get(url(vip))
		if err == nil {
			seen[strings.TrimSpace(body)]++
		}
		return seen["a"] > 0 && seen["b"] > 0
	})
	// b turns not ready.
	notReady := false
	slice.Endpoints[1].Conditions.Ready = &notReady
	if _, err := k.kw.Client.DiscoveryV1().EndpointSlices(backNS).Update(kubeworld.Context(t), slice, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "not-ready endpoint leaves the rotation", func() bool {
		for i := 0; i < 10; i++ {
			if body, err := client.Get(url(vip)); err != nil || strings.TrimSpace(body) != "a" {
				return false
			}
		}
		return true
	})
	for i := 0; i < 20; i++ {
		if body, err := client.Get(url(vip)); err != nil || strings.TrimSpace(body) != "a" {
			t.Fatalf("request %d after b turned not ready: %v: %q", i, err, body)
		}
	}
	_ = discoveryv1.AddressTypeIPv4
}

// Must show 7 (issue 5): the agent taints its node not-ready until it
// serves, then lifts the taint.
func TestKubeNodeTaint(t *testing.T) {
	k := newKubeNode(t, true)
	w, err := k.kw.Client.CoreV1().Nodes().Watch(kubeworld.Context(t), metav1.ListOptions{FieldSelector: "metadata.name=" + k.nodeName})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	k.agent = k.StartAgent(t, k.agentCfg)
	sawTaint, lifted := false, false
	timeout := time.After(20 * time.Second)
	for !lifted {
		select {
		case ev := <-w.ResultChan():
			if ev.Type != watch.Modified && ev.Type != watch.Added {
				continue
			}
			n := ev.Object.(*corev1.Node)
			has := false
			for _, tt := range n.Spec.Taints {
				if tt.Key == "weir.dev/agent-not-ready" && tt.Effect == corev1.TaintEffectNoSchedule {
					has = true
				}
			}
			if has {
				sawTaint = true
			} else if sawTaint {
				lifted = true
			}
		case <-timeout:
			t.Fatalf("taint seen %v, lifted %v after 20s", sawTaint, lifted)
		}
	}
}

// labelNamespace sets or (v == "") removes the capture label.
func (k *kubeNode) labelNamespace(t *testing.T, ns, v string) {
	t.Helper()
	n, err := k.kw.Client.CoreV1().Namespaces().Get(kubeworld.Context(t), ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if n.Labels == nil {
		n.Labels = map[string]string{}
	}
	if v == "" {
		delete(n.Labels, captureLabel)
	} else {
		n.Labels[captureLabel] = v
	}
	if _, err := k.kw.Client.CoreV1().Namespaces().Update(kubeworld.Context(t), n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// A pod added while the agent was away (its namespace not enabled, so the
// ADD went ahead) is found by its IP once its namespace is enabled, and
// captured. A namespace of another node on the same machine holding the
// same IP is never touched.
func TestKubeDiscoversPodsOfThisNodeOnly(t *testing.T) {
	k := newKubeNode(t, false)
	ns := k.namespace(t, false)
	eventually(t, 10*time.Second, "enablement file written", func() bool {
		_, err := os.Stat(filepath.Join(k.Dir, "enablement.json"))
		return err == nil
	})
	k.agent.Stop(t)
	// Another node on this machine, with a pod holding the same IP the
	// next pod of this node will get (host-local starts both at .2).
	other := testworld.NewNode(t, world{"1.1.0", "redirect", "v4", ""}.nodeOptions())
	other.StartAgent(t, map[string]any{})
	twin := other.MustAddPod(t, "elsewhere", "twin")
	away := k.mustPod(t, ns, "away", nil)
	if twin.IP4 != away.IP4 {
		t.Fatalf("twin %s and away %s differ; the test needs equal IPs", twin.IP4, away.IP4)
	}
	k.agent.Restart(t)
	k.labelNamespace(t, ns, "enabled")
	eventually(t, 10*time.Second, "pod added while the agent was away captured", func() bool { return k.captured(t, away) })
	time.Sleep(2 * time.Second) // several reconciles
	if installed, err := redirect.Installed(twin.Path); err != nil || installed {
		t.Fatalf("the other node's pod with the same IP got weir rules (installed=%v err=%v)", installed, err)
	}
}
