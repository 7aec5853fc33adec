package kube

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weir-mesh/weir/agent/podconfig"
)

func TestDecide(t *testing.T) {
	enabled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{LabelCapture: CaptureEnabled}}}
	plain := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop"}}
	off := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{LabelCapture: "disabled"}}}
	sys := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: KubeSystem, Labels: map[string]string{LabelCapture: CaptureEnabled}}}
	agentNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "weir", Labels: map[string]string{LabelCapture: CaptureEnabled}}}

	type podOpt func(*corev1.Pod)
	pod := func(ns string, opts ...podOpt) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p", UID: "u-1"}}
		p.Status.PodIPs = []corev1.PodIP{{IP: "10.1.0.5"}, {IP: "fd00::5"}}
		for _, o := range opts {
			o(p)
		}
		return p
	}
	label := func(v string) podOpt {
		return func(p *corev1.Pod) { p.Labels = map[string]string{LabelCapture: v} }
	}
	ann := func(kv ...string) podOpt {
		return func(p *corev1.Pod) {
			p.Annotations = map[string]string{}
			for i := 0; i < len(kv); i += 2 {
				p.Annotations[kv[i]] = kv[i+1]
			}
		}
	}
	hostNet := func(p *corev1.Pod) { p.Spec.HostNetwork = true }
	phase := func(ph corev1.PodPhase) podOpt { return func(p *corev1.Pod) { p.Status.Phase = ph } }

	tests := []struct {
		name      string
		ns        *corev1.Namespace
		pod       *corev1.Pod
		captured  bool
		invalid   string // substring of Invalid; "" means nil
		reason    string // substring of Reason
		overrides podconfig.Overrides
	}{
		{name: "labelled namespace", ns: enabled, pod: pod("shop"), captured: true, reason: "labelled weir.dev/capture=enabled"},
		{name: "unlabelled namespace", ns: plain, pod: pod("shop"), reason: "not labelled"},
		{name: "namespace label other value", ns: off, pod: pod("shop"), reason: "not labelled"},
		{name: "pod cannot opt in", ns: plain, pod: pod("shop", label(CaptureEnabled)), reason: "cannot opt in"},
		{name: "pod opts out", ns: enabled, pod: pod("shop", label(CaptureDisabled)), reason: "opted out"},
		{name: "pod label enabled in enabled namespace", ns: enabled, pod: pod("shop", label(CaptureEnabled)), captured: true},
		{name: "pod label typo", ns: plain, pod: pod("shop", label("off")), invalid: `label weir.dev/capture="off"`},
		{name: "kube-system", ns: sys, pod: pod(KubeSystem), reason: "never captured"},
		{name: "agent namespace", ns: agentNS, pod: pod("weir"), reason: "agent's own"},
		{name: "hostNetwork", ns: enabled, pod: pod("shop", hostNet), reason: "hostNetwork"},
		{name: "namespace gone", ns: nil, pod: pod("shop"), reason: "does not exist"},
		{name: "completed", ns: enabled, pod: pod("shop", phase(corev1.PodSucceeded)), reason: "completed"},
		{name: "failed", ns: enabled, pod: pod("shop", phase(corev1.PodFailed)), reason: "completed"},
		{
			name: "overrides", ns: enabled, captured: true,
			pod: pod("shop", ann(
				podconfig.AnnotationMode, "tproxy",
				podconfig.AnnotationExcludeInboundPorts, "9090, 8080",
				podconfig.AnnotationExcludeOutboundPorts, "5432",
				podconfig.AnnotationExcludeOutboundCIDRs, "169.254.0.0/16,fd00::/8",
				"weir.dev/captured", "true", // our own record is not an override
			)),
			overrides: podconfig.Overrides{
				Mode:                 "tproxy",
				ExcludeInboundPorts:  []uint16{8080, 9090},
				ExcludeOutboundPorts: []uint16{5432},
				ExcludeOutboundCIDRs: []string{"169.254.0.0/16", "fd00::/8"},
			},
		},
		{name: "bad port", ns: enabled, pod: pod("shop", ann(podconfig.AnnotationExcludeOutboundPorts, "80,http")), invalid: "annotation weir.dev/exclude-outbound-ports"},
		{name: "bad mode", ns: enabled, pod: pod("shop", ann(podconfig.AnnotationMode, "ebpf-magic")), invalid: `annotation weir.dev/mode="ebpf-magic"`},
		{name: "bad cidr", ns: enabled, pod: pod("shop", ann(podconfig.AnnotationExcludeOutboundCIDRs, "10.0.0.0/33")), invalid: `annotation weir.dev/exclude-outbound-cidrs="10.0.0.0/33"`},
		{
			name: "conflicting annotations", ns: enabled,
			pod:     pod("shop", ann(podconfig.AnnotationExcludeInboundPorts, "80", podconfig.AnnotationIncludeInboundPorts, "81")),
			invalid: "annotations weir.dev/exclude-inbound-ports=\"80\", weir.dev/include-inbound-ports=\"81\"",
		},
		// Annotations of a pod that is not captured anyway are not judged.
		{name: "bad annotation, unlabelled namespace", ns: plain, pod: pod("shop", ann(podconfig.AnnotationMode, "x")), reason: "not labelled"},
		{name: "bad annotation, opted out", ns: enabled, pod: pod("shop", label(CaptureDisabled), ann(podconfig.AnnotationMode, "x")), reason: "opted out"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := decide(tc.ns, tc.pod, "weir")
			if d.Captured != tc.captured {
				t.Errorf("Captured = %v, want %v (reason %q)", d.Captured, tc.captured, d.Reason)
			}
			switch {
			case tc.invalid == "" && d.Invalid != nil:
				t.Errorf("Invalid = %v, want nil", d.Invalid)
			case tc.invalid != "" && (d.Invalid == nil || !strings.Contains(d.Invalid.Error(), tc.invalid)):
				t.Errorf("Invalid = %v, want it to contain %q", d.Invalid, tc.invalid)
			case tc.invalid != "" && d.Captured:
				t.Errorf("invalid pod is captured")
			}
			if tc.invalid != "" && !strings.Contains(d.Reason, tc.invalid) {
				t.Errorf("Reason %q does not name the problem %q", d.Reason, tc.invalid)
			}
			if !strings.Contains(d.Reason, tc.reason) || d.Reason == "" {
				t.Errorf("Reason = %q, want it to contain %q", d.Reason, tc.reason)
			}
			if !reflect.DeepEqual(d.Overrides, tc.overrides) {
				t.Errorf("Overrides = %+v, want %+v", d.Overrides, tc.overrides)
			}
			if d.UID != "u-1" {
				t.Errorf("UID = %q, want u-1", d.UID)
			}
			want := []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5")}
			if !reflect.DeepEqual(d.IPs, want) {
				t.Errorf("IPs = %v, want %v", d.IPs, want)
			}
		})
	}
}

func TestPodIPsFallsBackToPodIP(t *testing.T) {
	p := &corev1.Pod{Status: corev1.PodStatus{PodIP: "10.0.0.9"}}
	if got := podIPs(p); len(got) != 1 || got[0] != netip.MustParseAddr("10.0.0.9") {
		t.Fatalf("podIPs = %v, want [10.0.0.9]", got)
	}
	p.Status.PodIP = "garbage"
	if got := podIPs(p); len(got) != 0 {
		t.Fatalf("podIPs of a bad address = %v, want none", got)
	}
}

func TestWithTaint(t *testing.T) {
	other := corev1.Taint{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoExecute}
	ours := corev1.Taint{Key: TaintKey, Effect: corev1.TaintEffectNoSchedule}
	oursExec := corev1.Taint{Key: TaintKey, Effect: corev1.TaintEffectNoExecute}
	tests := []struct {
		name    string
		in      []corev1.Taint
		want    bool
		out     []corev1.Taint
		changed bool
	}{
		{"add to none", nil, true, []corev1.Taint{ours}, true},
		{"add keeps others", []corev1.Taint{other}, true, []corev1.Taint{other, ours}, true},
		{"add present", []corev1.Taint{other, ours}, true, []corev1.Taint{other, ours}, false},
		{"add next to another effect", []corev1.Taint{oursExec}, true, []corev1.Taint{oursExec, ours}, true},
		{"remove", []corev1.Taint{ours, other}, false, []corev1.Taint{other}, true},
		{"remove every effect", []corev1.Taint{ours, oursExec}, false, []corev1.Taint{}, true},
		{"remove absent", []corev1.Taint{other}, false, []corev1.Taint{other}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := append([]corev1.Taint(nil), tc.in...)
			out, changed := withTaint(tc.in, tc.want)
			if changed != tc.changed || len(out) != len(tc.out) || (len(out) > 0 && !reflect.DeepEqual(out, tc.out)) {
				t.Fatalf("withTaint(%v, %v) = %v, %v; want %v, %v", tc.in, tc.want, out, changed, tc.out, tc.changed)
			}
			if !reflect.DeepEqual(in, tc.in) {
				t.Fatalf("withTaint changed its input: %v, was %v", tc.in, in)
			}
		})
	}
}
