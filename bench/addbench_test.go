package bench

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

func TestPercentile(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{50, 50 * time.Millisecond}, {90, 90 * time.Millisecond}, {99, 99 * time.Millisecond}, {100, 100 * time.Millisecond}, {1, time.Millisecond}} {
		if got := Percentile(ds, c.p); got != c.want {
			t.Errorf("p%v = %v, want %v", c.p, got, c.want)
		}
	}
	if Percentile(nil, 50) != 0 {
		t.Error("percentile of nothing is not 0")
	}
}

// TestMeasureADDSmoke runs weir-addbench's measurement on a few pods per
// backend, so a broken timer, log parse or chain fails CI; the figures are
// for the program itself.
func TestMeasureADDSmoke(t *testing.T) {
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "ip", "nft")
	for _, backend := range []string{"nftables", "nft", "legacy"} {
		t.Run(backend, func(t *testing.T) {
			r := MeasureADD(t, backend, ADDOptions{Pods: 5})
			s := r.Summarize()
			if s.Pods != 5 || s.Wall.P50 <= 0 || s.Start <= 0 || s.CPU.P50 <= 0 || len(r.Del) != 5 || s.Del.P50 <= 0 {
				t.Fatalf("summary %+v", s)
			}
			// Every phase the plugin and the agent report is there, once per ADD
			// (the agent programs the rules, so their phases are the agent's).
			for _, ph := range []string{"plugin.exec", "plugin.start", "plugin.skel", "plugin.exit", "plugin.agent", "plugin.rules", "agent.listen", "agent.state", "agent.total", "cpu.agent", "agent.apply", "agent.rules.enter", "agent.rules.program", "agent.rules.leave"} {
				if n := len(r.Phases[ph]); n != 5 {
					t.Errorf("phase %s timed %d times, want 5", ph, n)
				}
			}
			if main := s.Phase("plugin.main"); main.P50 >= s.Wall.P99 {
				t.Errorf("in-process time %v not below the wall time %v", main.P50, s.Wall.P99)
			}
		})
	}
}

// TestMeasureADDBaseline: with a baseline plugin, every other ADD runs it,
// and each binary's ADDs are summarised on their own.
func TestMeasureADDBaseline(t *testing.T) {
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "ip", "nft")
	base := filepath.Join(t.TempDir(), "weir-cni-base")
	if err := os.Link(filepath.Join(testworld.Binaries(t), "weir-cni"), base); err != nil {
		t.Fatal(err)
	}
	r := MeasureADD(t, "nftables", ADDOptions{Pods: 4, BaselinePlugin: base})
	if r.Baseline == nil || len(r.Wall) != 2 || len(r.Baseline.Wall) != 2 || len(r.Baseline.Phases["plugin.start"]) != 2 || len(r.Baseline.Start) == 0 {
		t.Fatalf("main %d ADDs, baseline %+v", len(r.Wall), r.Baseline)
	}
	if s := r.Baseline.Summarize(); s.Backend != "nftables-base" || s.Wall.P50 <= 0 {
		t.Fatalf("baseline summary %+v", s)
	}
}

// TestMeasureADDNoLinkIPv6: with the pods' links and the bridge's ports
// given no IPv6, the ADDs still pass and the bridge carries no frame
// while they run (the pods send nothing of their own).
func TestMeasureADDNoLinkIPv6(t *testing.T) {
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "ip", "nft", "sysctl")
	r := MeasureADD(t, "nftables", ADDOptions{Pods: 4, NoLinkIPv6: true, Gap: time.Millisecond})
	if s := r.Summarize(); s.Pods != 4 || !s.NoLinkIPv6 || s.BridgeFrames != 0 {
		t.Fatalf("want 4 ADDs with no IPv6 on their links and a silent bridge; got %d ADDs, NoLinkIPv6 %v, %d bridge frames", s.Pods, s.NoLinkIPv6, s.BridgeFrames)
	}
}

// TestPairedDrift: a series that grows only as fast as its pair shows no
// drift; one that grows on its own shows its own growth.
func TestPairedDrift(t *testing.T) {
	ms := func(v float64) time.Duration { return time.Duration(v * float64(time.Millisecond)) }
	var a, b, c []time.Duration
	for i := 0; i < 200; i++ {
		machine := 1 + float64(i)/200 // the machine slows by up to 2× over the run
		a = append(a, ms(3*machine))
		b = append(b, ms(2*machine))
		c = append(c, ms(3*machine*(1+0.2*float64(i)/199)))
	}
	if d := pairedDrift(a, b); d < -0.001 || d > 0.001 {
		t.Errorf("same growth as the pair: drift %.4f, want 0", d)
	}
	// Over the run c grows by 20 % of its own; the medians of the first
	// and the last 50 sit at pairs 24 and 174: 1.1749/1.0241 - 1.
	if d := pairedDrift(c, b); d < 0.14 || d > 0.155 {
		t.Errorf("20 %% own growth over the run: drift %.4f, want 0.147", d)
	}
	if d := DistOf(a).Drift(); d < 0.5 {
		t.Errorf("unpaired drift %.3f should show the machine's slowing", d)
	}
}

// TestMeasureADDEmptyNode: with an empty node, every ADD on the measured
// node has a timed ADD on the other node after it, and the empty node
// keeps no pod: each pod's namespace is gone once the run returns.
func TestMeasureADDEmptyNode(t *testing.T) {
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "ip", "nft")
	r := MeasureADD(t, "nftables", ADDOptions{Pods: 4, EmptyNode: true})
	s := r.Summarize()
	if len(r.Empty) != 4 || !s.HasEmpty || s.Empty.P50 <= 0 {
		t.Fatalf("want 4 timed ADDs on the empty node; got %d (%+v)", len(r.Empty), s.Empty)
	}
	if len(r.EmptyNetns) != 4 {
		t.Fatalf("the empty node made %d pods, want 4", len(r.EmptyNetns))
	}
	for _, path := range r.EmptyNetns {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("the empty node's pod namespace %s is still there (stat: %v)", path, err)
		}
	}
}
