package gwroute

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// MergeParents keeps other controllers' entries, writes nothing when
// weir's entries already say the same, keeps a condition's transition time
// while its status holds, and drops weir's entries no longer wanted.
func TestMergeParents(t *testing.T) {
	old := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	other := gwv1.RouteParentStatus{ParentRef: gwv1.ParentReference{Name: "gw"}, ControllerName: "example.net/gateway"}
	parent := serviceParentRef("front", 80)
	accepted := metav1.Condition{Type: "Accepted", Status: metav1.ConditionTrue, Reason: "Accepted", Message: "attached", ObservedGeneration: 1}
	have := []gwv1.RouteParentStatus{other, {ParentRef: parent, ControllerName: ControllerName, Conditions: []metav1.Condition{withTime(accepted, old)}}}

	if _, changed := MergeParents(have, []ParentStatus{{Ref: parent, Conditions: []metav1.Condition{accepted}}}); changed {
		t.Error("same conditions reported as a change")
	}
	moved := accepted
	moved.Message, moved.ObservedGeneration = "attached elsewhere", 2
	got, changed := MergeParents(have, []ParentStatus{{Ref: parent, Conditions: []metav1.Condition{moved}}})
	if !changed || len(got) != 2 || got[0].ControllerName != other.ControllerName {
		t.Fatalf("message change: changed=%v %+v", changed, got)
	}
	if c := got[1].Conditions[0]; c.Message != moved.Message || c.ObservedGeneration != 2 || !c.LastTransitionTime.Equal(&old) {
		t.Errorf("condition %+v: want the new message and generation, the old transition time", c)
	}
	refused := accepted
	refused.Status, refused.Reason = metav1.ConditionFalse, "UnsupportedValue"
	got, _ = MergeParents(have, []ParentStatus{{Ref: parent, Conditions: []metav1.Condition{refused}}})
	if c := got[1].Conditions[0]; c.Status != metav1.ConditionFalse || c.LastTransitionTime.Equal(&old) {
		t.Errorf("status flip kept the old transition time: %+v", c)
	}
	got, changed = MergeParents(have, nil)
	if !changed || len(got) != 1 || got[0].ControllerName != other.ControllerName {
		t.Errorf("weir's entry not dropped: changed=%v %+v", changed, got)
	}
}

func withTime(c metav1.Condition, at metav1.Time) metav1.Condition {
	c.LastTransitionTime = at
	return c
}
