package agent

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/weir-mesh/weir/agent/api"
)

func stateAgent(t testing.TB) *Agent {
	return &Agent{cfg: Config{StateDir: t.TempDir()}, log: slog.Default(), pods: newRegistry()}
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
	if err := a.saveState(); err != nil {
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
	if err := a.saveState(); err != nil {
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
	if err := a.saveState(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(a.cfg.StateDir, stateFile)); !os.IsNotExist(err) {
		t.Error("state.json still there after its pods moved")
	}
	if n := podFiles(t, a); n != 3 {
		t.Errorf("%d pod files, want 3", n)
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
			if err := a.saveState(); err != nil {
				b.Fatal(err)
			}
			i := 0
			for b.Loop() {
				a.pods.swap(testPod(i % n))
				i++
				if err := a.saveState(); err != nil {
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
