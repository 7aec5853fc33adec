package gwroute

import (
	"slices"

	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// MergeParents returns have with weir's entries replaced by want, and
// whether that differs from have. A condition keeps its
// lastTransitionTime while its status stays the same.
func MergeParents(have []gwv1.RouteParentStatus, want []ParentStatus) ([]gwv1.RouteParentStatus, bool) {
	var out []gwv1.RouteParentStatus
	var ours []gwv1.RouteParentStatus
	for _, p := range have {
		if p.ControllerName == ControllerName {
			ours = append(ours, p)
		} else {
			out = append(out, p)
		}
	}
	now := metav1.Now()
	var next []gwv1.RouteParentStatus
	for _, w := range want {
		entry := gwv1.RouteParentStatus{ParentRef: w.Ref, ControllerName: ControllerName}
		if i := slices.IndexFunc(ours, func(p gwv1.RouteParentStatus) bool { return equality.Semantic.DeepEqual(p.ParentRef, w.Ref) }); i >= 0 {
			entry.Conditions = slices.Clone(ours[i].Conditions)
		}
		for _, c := range w.Conditions {
			c.LastTransitionTime = now
			meta.SetStatusCondition(&entry.Conditions, c)
		}
		next = append(next, entry)
	}
	changed := len(next) != len(ours)
	for i := 0; !changed && i < len(next); i++ {
		changed = !sameParentStatus(next[i], ours[i])
	}
	if !changed {
		return have, false
	}
	return append(out, next...), true
}

// sameParentStatus compares two entries, ignoring condition times (a
// condition whose status is unchanged keeps its time anyway).
func sameParentStatus(a, b gwv1.RouteParentStatus) bool {
	if !equality.Semantic.DeepEqual(a.ParentRef, b.ParentRef) || len(a.Conditions) != len(b.Conditions) {
		return false
	}
	for i := range a.Conditions {
		ca, cb := a.Conditions[i], b.Conditions[i]
		ca.LastTransitionTime, cb.LastTransitionTime = metav1.Time{}, metav1.Time{}
		if ca != cb {
			return false
		}
	}
	return true
}
