package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weir-mesh/weir/integration/nodeworld"
	"github.com/weir-mesh/weir/redirect"
)

// realNode is one real node (nodeworld) with weir's shipped manifests, and
// the objects the TestRealNode steps share.
type realNode struct {
	*nodeworld.Node
	repo string
	// The captured namespace's echo Service and client pod.
	appNS, plainNS string
	clusterIP      string
	client         *corev1.Pod
}

// TestRealNode runs weir's shipped DaemonSet on a real node (containerd,
// runc, kubelet, controller-manager, scheduler) and walks issue 14's
// must-shows in order, each step relying on the one before.
func TestRealNode(t *testing.T) {
	r := &realNode{Node: nodeworld.Start(t), repo: repoRoot(t)}
	for _, step := range []struct {
		name string
		run  func(*testing.T)
	}{
		{"Install", r.install},
		{"CaptureThroughRuntime", r.capture},
		{"OnboardAndRelease", r.onboard},
		{"AgentKilled", r.agentKilled},
		{"RollingUpdate", r.rollingUpdate},
		{"Uninstall", r.uninstall},
	} {
		if !t.Run(step.name, step.run) {
			return
		}
	}
}

func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd) // the integration package's parent
}

func (r *realNode) ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// Must show 1: the shipped manifest, applied unchanged on a node whose
// runtime already has a bridge conflist: the DaemonSet's pod becomes Ready,
// weir-cni is chained last into that conflist, the node's taint is lifted.
func (r *realNode) install(t *testing.T) {
	ctx := r.ctx(t)
	node, err := r.Kube.Client.CoreV1().Nodes().Get(ctx, r.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !hasTaint(node, "weir.dev/agent-not-ready") {
		t.Fatalf("node registered without the weir.dev/agent-not-ready taint: %v", node.Spec.Taints)
	}
	r.Kubectl(t, "apply", "-f", filepath.Join(r.repo, "manifests", "weir.yaml"))
	agent := r.waitAgentReady(t, "", 4*time.Minute)
	t.Logf("agent pod %s Ready", agent.Name)

	b, err := os.ReadFile(filepath.Join(r.ConfDir, nodeworld.PrimaryConflist))
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []map[string]any `json:"plugins"`
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("conflist after install: %v\n%s", err, b)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, fmt.Sprint(p["type"]))
	}
	if strings.Join(types, ",") != "bridge,portmap,weir-cni" {
		t.Fatalf("conflist plugins after install = %v, want bridge,portmap,weir-cni\n%s", types, b)
	}
	if _, err := os.Stat(filepath.Join(r.BinDir, "weir-cni")); err != nil {
		t.Fatalf("weir-cni not installed in the CNI bin dir: %v", err)
	}
	waitUntil(t, time.Minute, "the agent lifts the node's taint", func() error {
		node, err := r.Kube.Client.CoreV1().Nodes().Get(ctx, r.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if hasTaint(node, "weir.dev/agent-not-ready") {
			return fmt.Errorf("taints %v", node.Spec.Taints)
		}
		return nil
	})
}

// Must show 2: pods kubelet creates in a labelled namespace are captured at
// ADD; a client pod reaches a ClusterIP Service (no kube-proxy: only weir
// can) and a pod IP; a pod of an unlabelled namespace has no rule and
// cannot reach the ClusterIP.
func (r *realNode) capture(t *testing.T) {
	ctx := r.ctx(t)
	r.appNS = r.namespace(t, "app", true)
	r.plainNS = r.namespace(t, "plain", false)
	r.deployment(t, r.appNS, "echo", 2)
	r.deployment(t, r.appNS, "client", 1)
	r.deployment(t, r.plainNS, "plain", 1)
	svc, err := r.Kube.Client.CoreV1().Services(r.appNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "echo"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	r.clusterIP = svc.Spec.ClusterIP

	echo := r.readyPods(t, r.appNS, "echo", 2)
	r.client = r.readyPods(t, r.appNS, "client", 1)[0]
	plain := r.readyPods(t, r.plainNS, "plain", 1)[0]
	for _, p := range append(echo, r.client) {
		if p.Annotations["weir.dev/captured"] != "true" {
			t.Errorf("pod %s/%s: weir.dev/captured = %q, want true (annotations %v)", p.Namespace, p.Name, p.Annotations["weir.dev/captured"], p.Annotations)
		}
		if !r.hasRules(t, p) {
			t.Errorf("pod %s/%s: no weir rules in its netns", p.Namespace, p.Name)
		}
	}
	if r.hasRules(t, plain) {
		t.Errorf("pod %s/%s of an unlabelled namespace has weir rules", plain.Namespace, plain.Name)
	}

	// Through the Service: both replicas answer.
	seen := map[string]bool{}
	url := "http://" + r.clusterIP + "/"
	waitUntil(t, time.Minute, "the client reaches both echo pods through "+url, func() error {
		body, err := r.Fetch(r.client.Status.PodIP, url)
		if err != nil {
			return err
		}
		seen[strings.TrimSpace(body)] = true
		if len(seen) < 2 {
			return fmt.Errorf("answers so far: %v", seen)
		}
		return nil
	})
	if body, err := r.Fetch(r.client.Status.PodIP, "http://"+echo[0].Status.PodIP+":8080/"); err != nil || !strings.Contains(body, echo[0].Name) {
		t.Errorf("client to pod IP %s: %q, %v", echo[0].Status.PodIP, body, err)
	}
	// The contrast: the same ClusterIP from an uncaptured pod goes nowhere.
	if body, err := r.Fetch(plain.Status.PodIP, url); err == nil {
		t.Errorf("an uncaptured pod reached ClusterIP %s (%q): something other than weir serves Services", r.clusterIP, body)
	}
	if _, err := r.Fetch(plain.Status.PodIP, "http://"+echo[0].Status.PodIP+":8080/"); err != nil {
		t.Errorf("uncaptured pod to pod IP: %v", err)
	}
}

// Must show 3: labelling a namespace captures its running pod, unlabelling
// releases it, with no restart; the ClusterIP works exactly while captured.
func (r *realNode) onboard(t *testing.T) {
	plain := r.readyPods(t, r.plainNS, "plain", 1)[0]
	restarts := plain.Status.ContainerStatuses[0].RestartCount
	url := "http://" + r.clusterIP + "/"

	r.label(t, r.plainNS, "enabled")
	waitUntil(t, time.Minute, "the running pod is captured", func() error {
		if !r.hasRules(t, plain) {
			return fmt.Errorf("no rules in %s", plain.Name)
		}
		_, err := r.Fetch(plain.Status.PodIP, url)
		return err
	})
	r.label(t, r.plainNS, "")
	waitUntil(t, time.Minute, "the pod is released", func() error {
		if r.hasRules(t, plain) {
			return fmt.Errorf("rules still in %s", plain.Name)
		}
		return nil
	})
	if body, err := r.Fetch(plain.Status.PodIP, url); err == nil {
		t.Errorf("released pod still reaches ClusterIP: %q", body)
	}
	now := r.readyPods(t, r.plainNS, "plain", 1)[0]
	if now.UID != plain.UID || now.Status.ContainerStatuses[0].RestartCount != restarts {
		t.Errorf("the pod was restarted or replaced: uid %s→%s, restarts %d→%d", plain.UID, now.UID, restarts, now.Status.ContainerStatuses[0].RestartCount)
	}
}

// Must show 4: the agent container killed, then the agent pod deleted:
// kubelet (and the DaemonSet) bring it back; captured pods are served again
// within 2 s of the new agent being ready; a pod of an enabled namespace
// created while the agent is down waits, then starts captured.
func (r *realNode) agentKilled(t *testing.T) {
	ctx := r.ctx(t)
	url := "http://" + r.clusterIP + "/"
	agent := r.waitAgentReady(t, "", time.Minute)
	var agentCID string
	for _, cs := range agent.Status.ContainerStatuses {
		if cs.Name == "agent" {
			agentCID = cs.ContainerID
		}
	}
	if err := r.KillContainer(agentCID); err != nil {
		t.Fatal(err)
	}
	r.servedAfterReady(t, "agent container killed", url)

	// The agent must really be gone while the late pod is created. A
	// deleted pod alone does not make sure of it: the DaemonSet controller
	// creates the replacement at once (a terminating pod does not count),
	// and when it is ready before the old agent has finished its drain it
	// takes the listeners over with no gap at all (seen once under load:
	// 127.0.0.1:15020 answered 200 for the whole two minutes). So the
	// DaemonSet is kept off the node (a node selector no node has) until
	// the late pod exists; the controller deletes the agent pod itself.
	pause := func(on bool) {
		patch := []string{"--type=merge", "-p", `{"spec":{"template":{"spec":{"nodeSelector":{"weir.dev/test-agent-paused":"true"}}}}}`}
		if !on {
			patch = []string{"--type=json", "-p", `[{"op":"remove","path":"/spec/template/spec/nodeSelector/weir.dev~1test-agent-paused"}]`}
		}
		r.Kubectl(t, append([]string{"-n", "weir-system", "patch", "daemonset", "weir-agent"}, patch...)...)
	}
	pause(true)
	paused := true
	t.Cleanup(func() {
		if paused {
			pause(false)
		}
	})
	waitUntil(t, 2*time.Minute, "the agent pod to go", func() error {
		list, err := r.Kube.Client.CoreV1().Pods(agent.Namespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		if err != nil {
			return err
		}
		if n := len(list.Items); n > 0 {
			return fmt.Errorf("%d agent pods left", n)
		}
		return nil
	})
	waitUntil(t, 2*time.Minute, "the agent to stop serving", func() error {
		if code, _, err := r.Get("http://127.0.0.1:15020/readyz", time.Second); err == nil && code == 200 {
			return fmt.Errorf("still ready")
		}
		return nil
	})
	r.deployment(t, r.appNS, "late", 1)
	waitUntil(t, time.Minute, "the late pod to be bound to the node", func() error {
		list, err := r.Kube.Client.CoreV1().Pods(r.appNS).List(ctx, metav1.ListOptions{LabelSelector: "app=late"})
		if err != nil {
			return err
		}
		if len(list.Items) != 1 || list.Items[0].Spec.NodeName == "" {
			return fmt.Errorf("%d late pods, none bound", len(list.Items))
		}
		return nil
	})
	time.Sleep(2 * time.Second) // kubelet tries its sandbox with no agent
	pause(false)
	paused = false
	r.servedAfterReady(t, "agent pod deleted", url)
	late := r.readyPods(t, r.appNS, "late", 1)[0]
	if late.Annotations["weir.dev/captured"] != "true" || !r.hasRules(t, late) {
		t.Errorf("pod created while the agent was down: captured=%q rules=%v", late.Annotations["weir.dev/captured"], r.hasRules(t, late))
	}
	events, err := r.Kube.Client.CoreV1().Events(r.appNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + late.Name})
	if err == nil {
		for _, e := range events.Items {
			if e.Reason == "FailedCreatePodSandBox" {
				t.Logf("late pod waited: %s (x%d): %.200s", e.Reason, e.Count, e.Message)
			}
		}
	}
	if body, err := r.Fetch(late.Status.PodIP, url); err != nil {
		t.Errorf("late pod to ClusterIP: %q %v", body, err)
	}
}

// servedAfterReady waits for the agent's readiness on the node and then
// measures how long until the captured client is served through the
// ClusterIP again; more than 2 s fails.
func (r *realNode) servedAfterReady(t *testing.T, what, url string) {
	t.Helper()
	began := time.Now()
	waitUntil(t, 3*time.Minute, what+": agent ready on 127.0.0.1:15020", func() error {
		code, body, err := r.Get("http://127.0.0.1:15020/readyz", time.Second)
		if err != nil {
			return err
		}
		if code != 200 {
			return fmt.Errorf("HTTP %d %s", code, body)
		}
		return nil
	})
	agentReady := time.Now()
	// The echo pods are captured: while no agent runs, their readiness
	// probes fail too (documented), and after a long enough outage the
	// Service has no ready endpoint until kubelet and the EndpointSlice
	// controller say so again, which no agent can hurry. The bound counts
	// from when both the agent and an endpoint are ready.
	waitUntil(t, 3*time.Minute, what+": a ready endpoint of the echo Service", func() error {
		list, err := r.Kube.Client.DiscoveryV1().EndpointSlices(r.appNS).List(context.Background(), metav1.ListOptions{LabelSelector: "kubernetes.io/service-name=echo"})
		if err != nil {
			return err
		}
		for _, sl := range list.Items {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready == nil || *ep.Conditions.Ready {
					return nil
				}
			}
		}
		return fmt.Errorf("no ready endpoint in %d slices", len(list.Items))
	})
	ready := time.Now()
	if d := ready.Sub(agentReady); d > 100*time.Millisecond {
		t.Logf("%s: the echo Service had no ready endpoint until %v after the agent was ready", what, d.Round(time.Millisecond))
	}
	var lastErr error
	for time.Since(ready) < 10*time.Second {
		if _, lastErr = r.Fetch(r.client.Status.PodIP, url); lastErr == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	served := time.Since(ready)
	t.Logf("%s: agent ready %v after the event; client served %v after the agent and an endpoint were ready", what, agentReady.Sub(began).Round(time.Millisecond), served.Round(time.Millisecond))
	if lastErr != nil || served > 2*time.Second {
		t.Errorf("%s: captured client served %v after the agent and an endpoint were ready (want ≤ 2 s); last error %v", what, served, lastErr)
	}
}

// Must show 5: a rolling update of the DaemonSet to a second image tag,
// driven by the DaemonSet controller and kubelet, under a client load
// through the ClusterIP: zero failed requests.
func (r *realNode) rollingUpdate(t *testing.T) {
	ctx := r.ctx(t)
	old := r.waitAgentReady(t, "", time.Minute)
	type result struct {
		OK     int64    `json:"ok"`
		Failed int64    `json:"failed"`
		Errors []string `json:"errors"`
	}
	base := "http://" + r.client.Status.PodIP + ":8080/load"
	if code, body, err := r.Get(base+"?conns=4&for=100s&url=http://"+r.clusterIP+"/", 10*time.Second); err != nil || code != 202 {
		t.Fatalf("start load: HTTP %d %v %s", code, err, body)
	}
	time.Sleep(3 * time.Second)
	// Every agent pod's readiness is watched through the rollout: none may
	// turn unready while it is not being deleted. A flap (an HTTP probe of
	// one pod answered by the other pod's agent on the shared admin
	// address) can leave the DaemonSet controller waiting for a re-sync
	// that never comes: the rollout then stalls with the old pod kept.
	flaps := r.watchAgentReadiness(t, ctx)
	began := time.Now()
	t.Logf("rollout starts at %s", began.UTC().Format("15:04:05.000"))
	r.Kubectl(t, "-n", "weir-system", "set", "image", "daemonset/weir-agent",
		"install-cni="+nodeworld.WeirImageNext, "agent="+nodeworld.WeirImageNext, "cni-watch="+nodeworld.WeirImageNext)
	r.Kubectl(t, "-n", "weir-system", "rollout", "status", "daemonset/weir-agent", "--timeout=90s")
	t.Logf("rollout finished in %v, at %s", time.Since(began).Round(time.Millisecond), time.Now().UTC().Format("15:04:05.000"))
	// The load must have covered the whole rollout, old pod's exit included.
	if code, _, err := r.Get(base+"/result", 5*time.Second); err != nil || code != 202 {
		t.Fatalf("the load ended before the rollout did (result: HTTP %d %v): nothing was measured across it", code, err)
	}
	var res result
	waitUntil(t, 2*time.Minute, "the load's result", func() error {
		code, body, err := r.Get(base+"/result", 5*time.Second)
		if err != nil || code != 200 {
			return fmt.Errorf("HTTP %d %v", code, err)
		}
		return json.Unmarshal([]byte(body), &res)
	})
	t.Logf("load through the rollout: %d ok, %d failed", res.OK, res.Failed)
	if res.Failed != 0 || res.OK == 0 {
		t.Errorf("rolling update under load: %d ok, %d failed: %v", res.OK, res.Failed, res.Errors)
	}
	if f := flaps(); len(f) > 0 {
		t.Errorf("agent pods turned unready during the rollout while not being deleted: %v", f)
	}
	now := r.waitAgentReady(t, nodeworld.WeirImageNext, time.Minute)
	if now.UID == old.UID {
		t.Errorf("agent pod %s was not replaced", old.Name)
	}
	if _, err := r.Kube.Client.CoreV1().Pods("weir-system").Get(ctx, old.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("old agent pod %s still exists (%v)", old.Name, err)
	}
}

// Must show 6: uninstall as docs/install.md says: the DaemonSet goes, the
// cleanup DaemonSet removes weir from the conflist; a new pod of a
// labelled namespace starts uncaptured. Running captured pods keep their
// rules with no agent behind them, so their TCP connections (readiness
// probes included) fail until they are restarted: the test shows it and
// that a restart heals them; docs/install.md says it.
func (r *realNode) uninstall(t *testing.T) {
	r.Kubectl(t, "-n", "weir-system", "delete", "daemonset", "weir-agent", "--wait=true", "--timeout=2m")
	r.Kubectl(t, "apply", "-f", filepath.Join(r.repo, "manifests", "weir-uninstall.yaml"))
	r.Kubectl(t, "-n", "weir-system", "rollout", "status", "daemonset/weir-cni-cleanup", "--timeout=2m")
	b, err := os.ReadFile(filepath.Join(r.ConfDir, nodeworld.PrimaryConflist))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "weir-cni") {
		t.Fatalf("conflist still names weir-cni after uninstall:\n%s", b)
	}
	r.deployment(t, r.appNS, "after", 1)
	after := r.readyPods(t, r.appNS, "after", 1)[0]
	if r.hasRules(t, after) {
		t.Errorf("pod created after uninstall has weir rules")
	}
	// The pod of the unlabelled namespace was released before: it and the
	// new pod talk directly.
	plain := r.readyPods(t, r.plainNS, "plain", 1)[0]
	if _, err := r.Fetch(after.Status.PodIP, "http://"+plain.Status.PodIP+":8080/"); err != nil {
		t.Errorf("uncaptured pod after uninstall to pod IP: %v", err)
	}
	// A pod captured before the uninstall keeps its rules with nothing
	// behind them: its connections, in and out, fail until it is
	// restarted; kubelet's readiness probe (inbound) fails too, so it
	// leaves its Services' endpoints.
	if !r.hasRules(t, r.client) {
		t.Errorf("captured client lost its rules without an agent: expected them to stay until the pod is deleted")
	}
	if _, _, err := r.Get("http://"+r.client.Status.PodIP+":8080/", 3*time.Second); err == nil {
		t.Errorf("reached a captured pod with no agent: expected inbound connections to fail until it is restarted")
	}
	waitUntil(t, time.Minute, "captured pods to turn unready with no agent", func() error {
		list, err := r.Kube.Client.CoreV1().Pods(r.appNS).List(context.Background(), metav1.ListOptions{LabelSelector: "app=echo"})
		if err != nil {
			return err
		}
		for i := range list.Items {
			if podReady(&list.Items[i]) {
				return fmt.Errorf("%s still Ready", list.Items[i].Name)
			}
		}
		return nil
	})
	// Restarting (here: replacing) a captured pod brings it back uncaptured.
	r.Kubectl(t, "-n", r.appNS, "rollout", "restart", "deployment/echo")
	for _, p := range r.readyPods(t, r.appNS, "echo", 2) {
		if r.hasRules(t, p) {
			t.Errorf("echo pod %s recreated after uninstall has weir rules", p.Name)
		}
	}
	r.Kubectl(t, "delete", "--ignore-not-found", "-f", filepath.Join(r.repo, "manifests", "weir-uninstall.yaml"), "-f", filepath.Join(r.repo, "manifests", "weir.yaml"), "--wait=false")
}

func hasTaint(n *corev1.Node, key string) bool {
	for _, tt := range n.Spec.Taints {
		if tt.Key == key {
			return true
		}
	}
	return false
}

// waitAgentReady waits for exactly one weir-agent pod, Ready, running image
// (any image when empty), and returns it.
func (r *realNode) waitAgentReady(t *testing.T, image string, timeout time.Duration) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	waitUntil(t, timeout, "one Ready weir-agent pod", func() error {
		list, err := r.Kube.Client.CoreV1().Pods("weir-system").List(context.Background(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
		if err != nil {
			return err
		}
		if len(list.Items) != 1 {
			return fmt.Errorf("%d agent pods", len(list.Items))
		}
		p := &list.Items[0]
		if image != "" && p.Spec.Containers[0].Image != image {
			return fmt.Errorf("agent pod %s runs %s", p.Name, p.Spec.Containers[0].Image)
		}
		if !podReady(p) {
			return fmt.Errorf("agent pod %s: phase %s, %s", p.Name, p.Status.Phase, podBrief(p))
		}
		pod = p
		return nil
	})
	return pod
}

// watchAgentReadiness watches weir-system's agent pods until the test
// ends; the returned func lists the Ready→unready transitions seen so far
// of pods that were not being deleted.
func (r *realNode) watchAgentReadiness(t *testing.T, ctx context.Context) func() []string {
	t.Helper()
	w, err := r.Kube.Client.CoreV1().Pods("weir-system").Watch(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=agent"})
	if err != nil {
		t.Fatalf("watch agent pods: %v", err)
	}
	t.Cleanup(w.Stop)
	var mu sync.Mutex
	var flaps []string
	ready := map[string]bool{}
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if !ok || p.DeletionTimestamp != nil {
				continue
			}
			now := podReady(p)
			mu.Lock()
			if was, seen := ready[p.Name]; seen && was && !now {
				flaps = append(flaps, fmt.Sprintf("%s at %s", p.Name, time.Now().UTC().Format("15:04:05.000")))
			}
			ready[p.Name] = now
			mu.Unlock()
		}
	}()
	return func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), flaps...)
	}
}

func podReady(p *corev1.Pod) bool {
	if p.DeletionTimestamp != nil {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podBrief says why a pod is not ready, from its container states.
func podBrief(p *corev1.Pod) string {
	var parts []string
	for _, cs := range append(p.Status.InitContainerStatuses, p.Status.ContainerStatuses...) {
		switch {
		case cs.State.Waiting != nil:
			parts = append(parts, cs.Name+" waiting "+cs.State.Waiting.Reason+" "+cs.State.Waiting.Message)
		case cs.State.Terminated != nil:
			parts = append(parts, fmt.Sprintf("%s terminated %s (%d)", cs.Name, cs.State.Terminated.Reason, cs.State.Terminated.ExitCode))
		default:
			parts = append(parts, fmt.Sprintf("%s running ready=%v restarts=%d", cs.Name, cs.Ready, cs.RestartCount))
		}
	}
	return strings.Join(parts, "; ")
}

// namespace creates a namespace (labelled for capture or not), deleted
// when the test ends; the controller-manager gives it its ServiceAccount.
func (r *realNode) namespace(t *testing.T, prefix string, captured bool) string {
	t.Helper()
	labels := map[string]string{}
	if captured {
		labels[captureLabel] = "enabled"
	}
	ns, err := r.Kube.Client.CoreV1().Namespaces().Create(r.ctx(t), &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-", Labels: labels},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitUntil(t, time.Minute, "ServiceAccount default in "+ns.Name, func() error {
		_, err := r.Kube.Client.CoreV1().ServiceAccounts(ns.Name).Get(context.Background(), "default", metav1.GetOptions{})
		return err
	})
	return ns.Name
}

func (r *realNode) label(t *testing.T, ns, v string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, captureLabel, v)
	if v == "" {
		patch = fmt.Sprintf(`{"metadata":{"labels":{%q:null}}}`, captureLabel)
	}
	r.Kubectl(t, "patch", "namespace", ns, "--type=merge", "-p", patch)
}

// deployment creates a Deployment of nodetest servers labelled app=name.
func (r *realNode) deployment(t *testing.T, ns, name string, replicas int32) {
	t.Helper()
	labels := map[string]string{"app": name}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{
						Name:            "app",
						Image:           nodeworld.TestImage,
						ImagePullPolicy: corev1.PullNever,
						Command:         []string{"/nodetest", "serve", ":8080"},
						ReadinessProbe: &corev1.Probe{
							ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}},
							PeriodSeconds: 1,
						},
					}},
				},
			},
		},
	}
	if _, err := r.Kube.Client.AppsV1().Deployments(ns).Create(r.ctx(t), d, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment %s/%s: %v", ns, name, err)
	}
}

// readyPods waits for count Ready pods labelled app=name and returns them.
func (r *realNode) readyPods(t *testing.T, ns, name string, count int) []*corev1.Pod {
	t.Helper()
	var pods []*corev1.Pod
	waitUntil(t, 3*time.Minute, fmt.Sprintf("%d Ready pods app=%s in %s", count, name, ns), func() error {
		list, err := r.Kube.Client.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "app=" + name})
		if err != nil {
			return err
		}
		pods = pods[:0]
		var why []string
		for i := range list.Items {
			p := &list.Items[i]
			if podReady(p) {
				pods = append(pods, p)
			} else if p.DeletionTimestamp == nil {
				why = append(why, p.Name+": "+string(p.Status.Phase)+" "+podBrief(p))
			}
		}
		if len(pods) != count {
			return fmt.Errorf("%d ready; %v", len(pods), why)
		}
		return nil
	})
	return pods
}

// hasRules tells whether weir's redirect is installed in the pod's netns.
func (r *realNode) hasRules(t *testing.T, p *corev1.Pod) bool {
	t.Helper()
	path, err := r.PodNetns(p)
	if err != nil {
		t.Fatal(err)
	}
	ok, err := redirect.Installed(path)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func waitUntil(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	if err := nodeworld.Poll(timeout, f); err != nil {
		t.Fatalf("waiting for %s: %v", what, err)
	}
}
