package agent

import (
	"encoding/json"
	"maps"
	"testing"
	"time"

	"github.com/weir-mesh/weir/agent/api"
)

// TestPhaseTimesJSON checks that the timer's list reaches the wire as the
// same object the map it replaced gave: phases recorded twice add up,
// redirect steps are prefixed, keys come out sorted, and weir-cni's
// decoding of api.AddResponse reads every phase back.
func TestPhaseTimesJSON(t *testing.T) {
	tm := getTimer()
	tm.begin(nil)
	want := map[string]int64{}
	for i, phase := range []string{phaseVet, phaseLock, "zeta", phaseApply, phaseVet, "a-b_c.9"} {
		tm.record(phase, time.Duration(i+1)*time.Millisecond)
		want[phase] += int64(i+1) * 1000
	}
	tm.trace("enter", 7*time.Microsecond)
	tm.trace("enter", 3*time.Microsecond)
	want["rules.enter"] = 10
	tm.record(`odd "name"`, time.Microsecond)
	want[`odd "name"`] = 1

	got, err := json.Marshal(addResp{AddResponse: api.AddResponse{Captured: true, Applied: true}, Timings: &tm.phases})
	if err != nil {
		t.Fatal(err)
	}
	ref, err := json.Marshal(api.AddResponse{Captured: true, Applied: true, Timings: want})
	if err != nil {
		t.Fatal(err)
	}
	// The same keys with the same bytes (the shadowing field comes last
	// among the object's keys, which no decoder minds).
	var gotKeys, refKeys map[string]json.RawMessage
	if err := json.Unmarshal(got, &gotKeys); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ref, &refKeys); err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(gotKeys, refKeys, func(a, b json.RawMessage) bool { return string(a) == string(b) }) {
		t.Fatalf("wire form\n got %s\nwant %s", got, ref)
	}
	var back api.AddResponse
	if err := json.Unmarshal(got, &back); err != nil || !maps.Equal(back.Timings, want) || !back.Applied {
		t.Fatalf("decoded %v (%v), want %v", back.Timings, err, want)
	}
	// No phases: no timings key, as with a nil map.
	got, _ = json.Marshal(addResp{AddResponse: api.AddResponse{Captured: true}})
	ref, _ = json.Marshal(api.AddResponse{Captured: true})
	if string(got) != string(ref) {
		t.Fatalf("without phases: got %s, want %s", got, ref)
	}
	// A timer given back and taken again starts empty.
	releaseTimer(tm)
	tm = getTimer()
	tm.begin(nil)
	tm.record(phaseLock, time.Millisecond)
	again, err := json.Marshal(addResp{AddResponse: api.AddResponse{Captured: true}, Timings: &tm.phases})
	if err != nil || string(again) != `{"captured":true,"timings":{"lock":1000}}` {
		t.Fatalf("reused timer: %s, %v", again, err)
	}
}
