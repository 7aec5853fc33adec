package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// maxReasonLen bounds the capture-reason annotation: reasons quote
// annotation values, which a pod's author controls.
const maxReasonLen = 256

// RecordCapture writes the enrolment on the pod: weir.dev/captured "true"
// or "false" and weir.dev/capture-reason (removed when reason is empty).
// It patches only when the cached pod shows other values, and a pod that no
// longer exists is not an error: there is nothing left to describe.
func (s *Source) RecordCapture(ctx context.Context, namespace, name string, captured bool, reason string) error {
	if len(reason) > maxReasonLen {
		reason = strings.ToValidUTF8(reason[:maxReasonLen-3], "") + "..."
	}
	want := "false"
	if captured {
		want = "true"
	}
	if pod, err := s.pods.Pods(namespace).Get(name); err == nil {
		gotReason, hasReason := pod.Annotations[AnnotationCaptureReason]
		if pod.Annotations[AnnotationCaptured] == want && gotReason == reason && (hasReason || reason == "") {
			return nil
		}
	}
	var reasonValue any = reason
	if reason == "" {
		reasonValue = nil // JSON merge patch: null deletes the key
	}
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{
			"annotations": map[string]any{
				AnnotationCaptured:      want,
				AnnotationCaptureReason: reasonValue,
			},
		},
	})
	if err != nil {
		return fmt.Errorf("record capture on pod %s/%s: encode patch: %w", namespace, name, err)
	}
	// A merge patch of two keys needs no resourceVersion: it cannot undo
	// anybody else's change, so there is no conflict to retry.
	_, err = s.client.CoreV1().Pods(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("record capture on pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// fieldManager names weir's writes in managedFields.
const fieldManager = "weir-agent"

// SetNodeReady removes (ready) or adds (not ready) the NoSchedule taint
// TaintKey on the agent's node. It does nothing when the node already is as
// asked, and retries when another writer changed the node meanwhile: the
// patch carries the resourceVersion it was computed from, so it never
// overwrites taints it did not see.
func (s *Source) SetNodeReady(ctx context.Context, ready bool) error {
	err := retry.RetryOnConflict(nodeBackoff, func() error {
		node, err := s.client.CoreV1().Nodes().Get(ctx, s.node, metav1.GetOptions{})
		if err != nil {
			return err
		}
		taints, changed := withTaint(node.Spec.Taints, !ready)
		if !changed {
			return nil
		}
		if taints == nil {
			taints = []corev1.Taint{} // an empty list, not null: "remove all"
		}
		patch, err := json.Marshal(map[string]any{
			"metadata": map[string]any{"resourceVersion": node.ResourceVersion},
			"spec":     map[string]any{"taints": taints},
		})
		if err != nil {
			return fmt.Errorf("encode patch: %w", err)
		}
		_, err = s.client.CoreV1().Nodes().Patch(ctx, s.node, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: fieldManager})
		if err == nil {
			s.log.Info("node taint updated", "node", s.node, "taint", TaintKey, "present", !ready)
		}
		return err
	})
	if err != nil {
		verb := "add"
		if ready {
			verb = "remove"
		}
		return fmt.Errorf("%s taint %s on node %s: %w", verb, TaintKey, s.node, err)
	}
	return nil
}

// nodeBackoff outlasts busy node writers (kubelet status, other agents'
// taints): ten tries spread over about ten seconds, jittered so competing
// writers fall out of step.
var nodeBackoff = wait.Backoff{Steps: 10, Duration: 10 * time.Millisecond, Factor: 2, Jitter: 0.5}

// withTaint returns taints with TaintKey:NoSchedule present (want) or with
// every taint of key TaintKey gone, and whether that differs from taints.
func withTaint(taints []corev1.Taint, want bool) ([]corev1.Taint, bool) {
	if want {
		for _, t := range taints {
			if t.Key == TaintKey && t.Effect == corev1.TaintEffectNoSchedule {
				return taints, false
			}
		}
		out := slices.Clone(taints)
		return append(out, corev1.Taint{Key: TaintKey, Effect: corev1.TaintEffectNoSchedule}), true
	}
	out := slices.DeleteFunc(slices.Clone(taints), func(t corev1.Taint) bool { return t.Key == TaintKey })
	return out, len(out) != len(taints)
}
