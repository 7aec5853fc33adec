package agent

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy/netns"
)

func stateAgent(t testing.TB) *Agent {
	a := &Agent{cfg: Config{StateDir: t.TempDir()}, log: slog.Default(), pods: newRegistry()}
	a.ownsState.Store(true)
	return a
}

func testPod(i int) *pod {
	return &pod{att: api.Attachment{ContainerID: fmt.Sprintf("c%04d", i), IfName: "eth0"},
		meta: api.Pod{Namespace: "demo", Name: fmt.Sprintf("p%04d", i)}, netnsPath: "/run/netns/x", cniIPs: []string{"10.0.0.1/24"}}
}

func podFiles(t testing.TB, a *Agent) int {
	ents, err := os.ReadDir(filepath.Join(a.cfg.StateDir, podsDir))
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestSaveStateWritesOnlyChanges: one file per pod; a save after one pod
// changed writes that pod's file only, and a forgotten pod's file goes.
func TestSaveStateWritesOnlyChanges(t *testing.T) {
	a := stateAgent(t)
	for i := 0; i < 20; i++ {
		a.pods.swap(testPod(i))
	}
	if err := a.saveState(nil); err != nil {
		t.Fatal(err)
	}
	if n := podFiles(t, a); n != 20 {
		t.Fatalf("%d pod files, want 20", n)
	}
	// Delete an unchanged pod's file behind the agent's back: a save that
	// rewrote everything would bring it back.
	if err := os.Remove(a.podFile(testPod(3).att)); err != nil {
		t.Fatal(err)
	}
	changed := testPod(7)
	changed.meta.Name = "renamed"
	a.pods.swap(changed)
	a.pods.remove(testPod(9).att)
	touched := a.pods.get(testPod(11).att)
	touched.touched.Add(1)
	os.Remove(a.podFile(touched.att))
	if err := a.saveState(nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(a.podFile(testPod(3).att)); !os.IsNotExist(err) {
		t.Error("an unchanged pod's file was written again")
	}
	if _, err := os.Stat(a.podFile(testPod(9).att)); !os.IsNotExist(err) {
		t.Error("a forgotten pod's file is still there")
	}
	if _, err := os.Stat(a.podFile(touched.att)); err != nil {
		t.Errorf("a touched pod's file was not written: %v", err)
	}
	loaded, err := a.loadState()
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded) != 18 {
		t.Errorf("loaded %d pods, want 18", len(loaded))
	}
	for _, sp := range loaded {
		if sp.Attachment == changed.att && sp.Pod.Name != "renamed" {
			t.Errorf("changed pod saved as %+v", sp.Pod)
		}
	}
}

// TestSaveStateNamed: a save naming attachments (what a CNI call does)
// writes or deletes those only, and leaves every other change to a later
// full save.
func TestSaveStateNamed(t *testing.T) {
	a := stateAgent(t)
	for i := 0; i < 10; i++ {
		a.pods.swap(testPod(i))
	}
	if err := a.saveState(nil); err != nil {
		t.Fatal(err)
	}
	added, other := testPod(10), testPod(11)
	a.pods.swap(added)
	a.pods.swap(other)
	a.pods.remove(testPod(2).att)
	a.pods.remove(testPod(3).att)
	if err := a.saveState([]api.Attachment{added.att, testPod(2).att}); err != nil {
		t.Fatal(err)
	}
	exists := func(att api.Attachment) bool {
		_, err := os.Stat(a.podFile(att))
		return err == nil
	}
	if !exists(added.att) || exists(testPod(2).att) {
		t.Errorf("named attachments: added written %v, removed deleted %v", exists(added.att), !exists(testPod(2).att))
	}
	if exists(other.att) || !exists(testPod(3).att) {
		t.Errorf("unnamed attachments touched: other written %v, removed deleted %v", exists(other.att), !exists(testPod(3).att))
	}
	if err := a.saveState(nil); err != nil {
		t.Fatal(err)
	}
	if !exists(other.att) || exists(testPod(3).att) {
		t.Errorf("full save after a named one: other written %v, removed deleted %v", exists(other.att), !exists(testPod(3).att))
	}
}

// TestRegistryNetnsIndex: pods are found by namespace, and a swap or a
// removal keeps the index in step.
func TestRegistryNetnsIndex(t *testing.T) {
	r := newRegistry()
	a, b := testPod(1), testPod(2)
	a.nsID, b.nsID = netns.ID{Dev: 4, Ino: 100}, netns.ID{Dev: 4, Ino: 100}
	r.swap(a)
	r.swap(b)
	if got := r.inNetns(a.nsID); len(got) != 2 || got[0] != a || got[1] != b {
		t.Fatalf("inNetns = %v, want both pods", got)
	}
	moved := testPod(1)
	moved.nsID = netns.ID{Dev: 4, Ino: 200}
	r.swap(moved)
	if got := r.inNetns(a.nsID); len(got) != 1 || got[0] != b {
		t.Fatalf("after the swap the old namespace holds %v, want pod 2 only", got)
	}
	if got := r.inNetns(moved.nsID); len(got) != 1 || got[0] != moved {
		t.Fatalf("after the swap the new namespace holds %v", got)
	}
	r.remove(b.att)
	r.remove(moved.att)
	if len(r.byNS) != 0 {
		t.Fatalf("index not empty after every pod went: %v", r.byNS)
	}
}

// TestLegacyStateFileMigrates: a state.json of an older agent is read, its
// pods move to per-pod files, and it is deleted.
func TestLegacyStateFileMigrates(t *testing.T) {
	a := stateAgent(t)
	legacy := savedState{Version: 1}
	for i := 0; i < 3; i++ {
		p := testPod(i)
		legacy.Pods = append(legacy.Pods, savedPod{Attachment: p.att, Pod: p.meta, Netns: p.netnsPath, IPs: p.cniIPs})
	}
	if err := writeJSONFile(filepath.Join(a.cfg.StateDir, stateFile), legacy); err != nil {
		t.Fatal(err)
	}
	loaded, err := a.loadState()
	if err != nil || len(loaded) != 3 {
		t.Fatalf("loadState = %d pods, %v", len(loaded), err)
	}
	for i := 0; i < 3; i++ {
		a.pods.swap(testPod(i))
	}
	if err := a.saveState(nil); err != nil {
		t.Fatal(err)
	}
	if n := podFiles(t, a); n != 3 {
		t.Errorf("%d pod files, want 3", n)
	}
	// state.json stays, as the mirror older agents read, marked as such.
	var mirror savedState
	if b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, stateFile)); err != nil || json.Unmarshal(b, &mirror) != nil || !mirror.Mirror || len(mirror.Pods) != 3 {
		t.Errorf("state.json after the move: %+v, %v; want a mirror of 3 pods", mirror, err)
	}
}

// TestStateMirrorForOlderAgents: the mirror follows the per-pod files (off
// the CNI path), an older agent can read it, this agent ignores it while
// its per-pod files are the truth, and a state.json an older agent wrote
// afterwards wins over them.
func TestStateMirrorForOlderAgents(t *testing.T) {
	a := stateAgent(t)
	for i := 0; i < 3; i++ {
		a.pods.swap(testPod(i))
	}
	if err := a.saveState(nil); err != nil {
		t.Fatal(err)
	}
	readMirror := func() savedState {
		t.Helper()
		var st savedState
		b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, stateFile))
		if err != nil {
			t.Fatalf("no state.json: %v", err)
		}
		if err := json.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	if _, err := os.Stat(filepath.Join(a.cfg.StateDir, stateFile)); !os.IsNotExist(err) {
		t.Fatal("the CNI path wrote the mirror")
	}
	if err := a.writeMirror(false); err != nil {
		t.Fatal(err)
	}
	if st := readMirror(); !st.Mirror || len(st.Pods) != 3 {
		t.Fatalf("mirror %+v, want 3 pods", st)
	}
	// What an agent before per-pod files decodes: version and pods.
	var old struct {
		Version int `json:"version"`
		Pods    []struct {
			Attachment api.Attachment `json:"attachment"`
			Netns      string         `json:"netns"`
		} `json:"pods"`
	}
	b, _ := os.ReadFile(filepath.Join(a.cfg.StateDir, stateFile))
	if err := json.Unmarshal(b, &old); err != nil || old.Version != 1 || len(old.Pods) != 3 || old.Pods[0].Netns != "/run/netns/x" {
		t.Fatalf("an older agent reads %+v, %v", old, err)
	}
	// Per-pod files are the truth while the mirror is marked.
	a.pods.remove(testPod(0).att)
	if err := a.saveState([]api.Attachment{testPod(0).att}); err != nil {
		t.Fatal(err)
	}
	if got, err := a.loadState(); err != nil || len(got) != 2 {
		t.Fatalf("loadState with a stale mirror = %d pods, %v; want the 2 per-pod files", len(got), err)
	}
	if err := a.writeMirror(false); err != nil {
		t.Fatal(err)
	}
	if st := readMirror(); len(st.Pods) != 2 {
		t.Fatalf("mirror after a change: %d pods, want 2", len(st.Pods))
	}
	// An older agent ran after this one and wrote its own state.json.
	p := testPod(7)
	legacy := savedState{Version: 1, Pods: []savedPod{{Attachment: p.att, Pod: p.meta, Netns: p.netnsPath, IPs: p.cniIPs}}}
	if err := writeJSONFile(filepath.Join(a.cfg.StateDir, stateFile), legacy); err != nil {
		t.Fatal(err)
	}
	b2 := stateAgent(t)
	b2.cfg.StateDir = a.cfg.StateDir
	got, err := b2.loadState()
	if err != nil || len(got) != 1 || got[0].Attachment != p.att {
		t.Fatalf("loadState after an older agent = %+v, %v; want its one pod", got, err)
	}
	if _, err := os.Stat(filepath.Join(a.cfg.StateDir, podsDir)); !os.IsNotExist(err) {
		t.Fatal("per-pod files older than the older agent's state.json are still there")
	}
}

// BenchmarkSaveStateOneChange is the state cost of one CNI ADD on a node
// with 500 pods: it must not grow with the number of pods.
func BenchmarkSaveStateOneChange(b *testing.B) {
	for _, n := range []int{50, 500} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			a := stateAgent(b)
			for i := 0; i < n; i++ {
				a.pods.swap(testPod(i))
			}
			if err := a.saveState(nil); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				p := testPod(i % n)
				a.pods.swap(p)
				i++
				if err := a.saveState([]api.Attachment{p.att}); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// A standby watching the agent learns of every change: the channel it
// waits on closes, and the next one carries a higher generation.
func TestWatchersWake(t *testing.T) {
	var w watchers
	gen, ch := w.current()
	select {
	case <-ch:
		t.Fatal("woken before any change")
	default:
	}
	w.changed()
	select {
	case <-ch:
	default:
		t.Fatal("not woken by a change")
	}
	if g, _ := w.current(); g != gen+1 {
		t.Fatalf("generation %d after one change, want %d", g, gen+1)
	}
}
