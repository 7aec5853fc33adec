package kube

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/weir-mesh/weir/agent/podconfig"
)

// Decision is whether one pod is captured and how.
type Decision struct {
	// Captured is true when the agent should enrol the pod.
	Captured bool
	// Reason is a short human sentence saying why, fit for logs, the
	// weir.dev/capture-reason annotation and CNI errors.
	Reason string
	// Overrides are the pod's weir.dev/* annotations; zero unless Captured.
	Overrides podconfig.Overrides
	// Invalid is non-nil when the pod's weir.dev/* labels or annotations
	// are bad. Captured is then false and a Warning Event was recorded on
	// the pod (asynchronously, once per distinct problem).
	Invalid error
	// Err is non-nil when no decision could be made: the pod or its
	// namespace is not cached and the API could not be asked. Captured is
	// false, but the caller must not treat the pod as released: a CNI ADD
	// must fail (so the runtime retries) rather than start a pod of an
	// enabled namespace uncaptured.
	Err error
	// UID is the pod's UID, empty when the pod was not found.
	UID string
	// IPs are the pod's status.podIPs (empty until the kubelet reported
	// them, which is after the CNI ADD).
	IPs []netip.Addr
}

// Pod is one pod on the agent's node with its decision.
type Pod struct {
	Namespace, Name, UID string
	IPs                  []netip.Addr
	Decision             Decision
}

// Decide says whether the pod namespace/name is captured. It reads the
// informer caches; a pod (or namespace) they do not hold yet is fetched with
// one GET, because a CNI ADD can arrive before the watch delivers the pod.
// A pod that does not exist, or is bound to another node, is not captured.
func (s *Source) Decide(ctx context.Context, namespace, name string) Decision {
	return s.DecideUID(ctx, namespace, name, "")
}

// DecideUID is Decide for the pod with the given UID (a CNI ADD carries
// it): when the cached pod namespace/name has another UID, the cache still
// holds an earlier pod of that name (a StatefulSet pod recreated), so the
// pod is fetched from the API instead. An empty uid accepts any.
func (s *Source) DecideUID(ctx context.Context, namespace, name, uid string) Decision {
	pod, err := s.pods.Pods(namespace).Get(name)
	if err == nil && uid != "" && string(pod.UID) != uid {
		err = apierrors.NewNotFound(corev1.Resource("pods"), name)
	}
	if apierrors.IsNotFound(err) {
		pod, err = s.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return Decision{Reason: fmt.Sprintf("pod %s/%s does not exist", namespace, name)}
		}
	}
	if err != nil {
		return Decision{Reason: "cannot read the pod from Kubernetes", Err: fmt.Errorf("get pod %s/%s: %w", namespace, name, err)}
	}
	if uid != "" && string(pod.UID) != uid {
		d := Decision{Reason: fmt.Sprintf("pod %s/%s has UID %s, not %s: it was replaced", namespace, name, pod.UID, uid)}
		d.UID, d.IPs = string(pod.UID), podIPs(pod)
		return d
	}
	if pod.Spec.NodeName != s.node {
		d := Decision{Reason: fmt.Sprintf("pod is bound to node %q, not to this node %q", pod.Spec.NodeName, s.node)}
		d.UID, d.IPs = string(pod.UID), podIPs(pod)
		return d
	}
	ns, err := s.namespace(ctx, namespace)
	if err != nil {
		d := Decision{Reason: "cannot read the pod's namespace from Kubernetes", Err: err}
		d.UID, d.IPs = string(pod.UID), podIPs(pod)
		return d
	}
	return s.report(pod, decide(ns, pod, s.agentN))
}

// namespace reads a namespace from the cache, or from the API when the
// cache does not hold it (yet). A namespace that does not exist is nil.
func (s *Source) namespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	ns, err := s.namespaces.Get(name)
	if apierrors.IsNotFound(err) {
		ns, err = s.client.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
	}
	if err != nil {
		return nil, fmt.Errorf("get namespace %s: %w", name, err)
	}
	return ns, nil
}

// EnabledNamespaces lists the namespaces labelled weir.dev/capture=enabled,
// minus those never captured, sorted.
func (s *Source) EnabledNamespaces() []string {
	sel := labels.SelectorFromSet(labels.Set{LabelCapture: CaptureEnabled})
	list, err := s.namespaces.List(sel)
	if err != nil {
		// A cache lister fails only on a bad selector, which this is not.
		s.log.Error("list namespaces from cache", "err", err)
		return nil
	}
	var out []string
	for _, ns := range list {
		if !s.neverCaptured(ns.Name) {
			out = append(out, ns.Name)
		}
	}
	sort.Strings(out)
	return out
}

// Pods lists the pods bound to this node, except hostNetwork pods, with
// their decisions, sorted by namespace and name. It reads only the caches:
// a pod whose namespace is not cached yet gets a Decision with Err set
// (leave such a pod as it is until the next Changed).
func (s *Source) Pods() []Pod {
	list, err := s.pods.List(labels.Everything())
	if err != nil {
		s.log.Error("list pods from cache", "err", err)
		return nil
	}
	out := make([]Pod, 0, len(list))
	for _, p := range list {
		if p.Spec.HostNetwork {
			continue
		}
		var d Decision
		ns, err := s.namespaces.Get(p.Namespace)
		switch {
		case apierrors.IsNotFound(err):
			d = Decision{Reason: "the pod's namespace is not known yet", Err: fmt.Errorf("namespace %s is not in the cache", p.Namespace)}
			d.UID, d.IPs = string(p.UID), podIPs(p)
		case err != nil:
			d = Decision{Reason: "cannot read the pod's namespace", Err: fmt.Errorf("get namespace %s from cache: %w", p.Namespace, err)}
			d.UID, d.IPs = string(p.UID), podIPs(p)
		default:
			d = s.report(p, decide(ns, p, s.agentN))
		}
		out = append(out, Pod{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID), IPs: d.IPs, Decision: d})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// report records the Event an invalid pod deserves and passes d on.
func (s *Source) report(pod *corev1.Pod, d Decision) Decision {
	if d.Invalid != nil {
		s.warnOnce(pod, ReasonInvalidCaptureConfig, d.Reason)
	} else {
		// Fixed: the same mistake made again deserves a new Event.
		s.repMu.Lock()
		delete(s.reported, pod.UID)
		s.repMu.Unlock()
	}
	return d
}

func (s *Source) neverCaptured(namespace string) bool {
	return namespace == KubeSystem || (s.agentN != "" && namespace == s.agentN)
}

// decide applies the enrolment rules (see the package comment) to a pod and
// its namespace (nil when the namespace does not exist). It reads nothing
// else and records nothing.
func decide(ns *corev1.Namespace, pod *corev1.Pod, agentNamespace string) Decision {
	d := Decision{UID: string(pod.UID), IPs: podIPs(pod)}
	no := func(format string, args ...any) Decision {
		d.Reason = fmt.Sprintf(format, args...)
		return d
	}
	switch {
	case pod.Spec.HostNetwork:
		return no("hostNetwork pods are never captured")
	case pod.Namespace == KubeSystem:
		return no("namespace %s is never captured", KubeSystem)
	case agentNamespace != "" && pod.Namespace == agentNamespace:
		return no("namespace %s is the agent's own and is never captured", pod.Namespace)
	case ns == nil:
		return no("namespace %s does not exist", pod.Namespace)
	}
	podLabel, podLabelled := pod.Labels[LabelCapture]
	if podLabelled && podLabel != CaptureEnabled && podLabel != CaptureDisabled {
		// Checked before the namespace label: a typo meant to opt a pod
		// out must not go unnoticed until its namespace is enabled.
		d.Invalid = fmt.Errorf("label %s=%q: want %s or %s", LabelCapture, podLabel, CaptureEnabled, CaptureDisabled)
		return no("not captured: invalid %v", d.Invalid)
	}
	if v := ns.Labels[LabelCapture]; v != CaptureEnabled {
		if podLabel == CaptureEnabled {
			return no("namespace %s is not labelled %s=%s (a pod label cannot opt in)", ns.Name, LabelCapture, CaptureEnabled)
		}
		return no("namespace %s is not labelled %s=%s", ns.Name, LabelCapture, CaptureEnabled)
	}
	if podLabel == CaptureDisabled {
		return no("pod opted out with label %s=%s", LabelCapture, CaptureDisabled)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return no("pod has completed (phase %s)", pod.Status.Phase)
	}
	o, err := parseOverrides(pod.Annotations)
	if err != nil {
		d.Invalid = err
		return no("not captured: invalid %v", err)
	}
	d.Captured = true
	d.Overrides = o
	d.Reason = fmt.Sprintf("namespace %s is labelled %s=%s", ns.Name, LabelCapture, CaptureEnabled)
	return d
}

// podIPs parses status.podIPs (status.podIP when the list is empty),
// skipping anything that is not an address.
func podIPs(pod *corev1.Pod) []netip.Addr {
	raw := make([]string, 0, 2)
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = append(raw, pod.Status.PodIP)
	}
	var out []netip.Addr
	for _, r := range raw {
		if a, err := netip.ParseAddr(r); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// overrideAnnotations are the pod annotations podconfig reads.
var overrideAnnotations = []string{
	podconfig.AnnotationMode,
	podconfig.AnnotationExcludeInboundPorts,
	podconfig.AnnotationIncludeInboundPorts,
	podconfig.AnnotationExcludeOutboundPorts,
	podconfig.AnnotationExcludeOutboundCIDRs,
}

// parseOverrides reads a pod's overrides through podconfig. podconfig names
// the annotation when a value does not parse, but a value that parses and
// then fails validation is named by its config field; so, on error, find
// the annotations that are at fault (alone, or together) and name them.
func parseOverrides(a map[string]string) (podconfig.Overrides, error) {
	o, err := podconfig.FromAnnotations(a)
	if err == nil {
		return o, nil
	}
	if strings.Contains(err.Error(), "annotation weir.dev/") {
		return podconfig.Overrides{}, err
	}
	var culprits []string
	for _, k := range overrideAnnotations {
		if v, ok := a[k]; ok {
			if _, e := podconfig.FromAnnotations(map[string]string{k: v}); e != nil {
				culprits = append(culprits, fmt.Sprintf("%s=%q", k, v))
			}
		}
	}
	if len(culprits) == 0 {
		// No annotation is wrong alone: they conflict with each other.
		for _, k := range overrideAnnotations {
			if v, ok := a[k]; ok {
				culprits = append(culprits, fmt.Sprintf("%s=%q", k, v))
			}
		}
	}
	what := "annotation"
	if len(culprits) > 1 {
		what = "annotations"
	}
	inner := errors.Unwrap(err)
	if inner == nil {
		inner = err
	}
	return podconfig.Overrides{}, fmt.Errorf("%s %s: %w", what, strings.Join(culprits, ", "), inner)
}
