package redirect

import (
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The benchmarks time each verb per backend on a real netns:
//
//	go test -run - -bench . ./redirect/
//
// ApplyFresh is what a CNI ADD pays, Remove a DEL, Verify a CHECK, Apply
// the agent's reconcile of a pod that needs nothing.

// BenchmarkApply measures one Apply of the full REDIRECT rule set into a
// netns that already holds it (the agent's reconcile case: read every
// backend, nothing to write).
func BenchmarkApply(b *testing.B) {
	for _, backend := range allBackends {
		b.Run(backend, func(b *testing.B) {
			requireBackend(b, backend)
			n := newNS(b)
			s := fullSpec(backend)
			if err := Apply(n.Path(), s); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if err := Apply(n.Path(), s); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkApplyFresh measures Apply into a netns holding nothing of weir's,
// as at a pod's CNI ADD (the Remove in between is not timed).
func BenchmarkApplyFresh(b *testing.B) {
	forBackendsAndModes(b, func(b *testing.B, s Spec) {
		n := newNS(b)
		for b.Loop() {
			if err := Apply(n.Path(), s); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			if err := Remove(n.Path()); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	})
}

// BenchmarkRemove measures Remove of a captured pod's rules, as at its CNI
// DEL (the Apply in between is not timed).
func BenchmarkRemove(b *testing.B) {
	forBackendsAndModes(b, func(b *testing.B, s Spec) {
		n := newNS(b)
		for b.Loop() {
			b.StopTimer()
			if err := Apply(n.Path(), s); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			if err := Remove(n.Path()); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkVerify measures a CNI CHECK.
func BenchmarkVerify(b *testing.B) {
	forBackendsAndModes(b, func(b *testing.B, s Spec) {
		n := newNS(b)
		if err := Apply(n.Path(), s); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := Verify(n.Path(), s); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func forBackendsAndModes(b *testing.B, f func(b *testing.B, s Spec)) {
	for _, backend := range allBackends {
		for _, mode := range []Mode{ModeRedirect, ModeTPROXY} {
			b.Run(backend+"/"+string(mode), func(b *testing.B) {
				requireBackend(b, backend)
				s := fullSpec(backend)
				s.Mode = mode
				f(b, s)
			})
		}
	}
}

// BenchmarkApplyNewPods measures Apply into one new network namespace
// after another, keeping every one (a node gaining pods, as weir-addbench
// does through the real plugin), to tell whether a pod's ADD costs more
// the more namespaces the node has:
//
//	go test -run - -bench ApplyNewPods -benchtime 500x ./redirect/
//
// Besides ns/op it reports the medians of the first and the last 50
// Applies, in wall time and in CPU time (this process's and the iptables
// programs it ran, user and system, kernel work included; steadier than
// wall time on a busy machine). Creating the namespaces is not timed.
func BenchmarkApplyNewPods(b *testing.B) {
	for _, backend := range allBackends {
		b.Run(backend, func(b *testing.B) {
			requireBackend(b, backend)
			s := fullSpec(backend)
			var wall, cpu []time.Duration
			for b.Loop() {
				b.StopTimer()
				n := newNS(b)
				b.StartTimer()
				start, cpu0 := time.Now(), processCPU()
				if err := Apply(n.Path(), s); err != nil {
					b.Fatal(err)
				}
				wall = append(wall, time.Since(start))
				cpu = append(cpu, processCPU()-cpu0)
			}
			if len(wall) < 100 {
				return // too few to compare ends: use -benchtime 500x
			}
			for _, m := range []struct {
				name string
				ds   []time.Duration
			}{{"wall", wall}, {"cpu", cpu}} {
				first, last := medianOf(m.ds[:50]), medianOf(m.ds[len(m.ds)-50:])
				b.ReportMetric(float64(first.Microseconds()), m.name+"-first50-µs")
				b.ReportMetric(float64(last.Microseconds()), m.name+"-last50-µs")
			}
		})
	}
}

// processCPU is the CPU time so far of this process, every thread, and of
// the programs it ran (iptables-restore and -save).
func processCPU() time.Duration {
	var total time.Duration
	for _, who := range []int{unix.RUSAGE_SELF, unix.RUSAGE_CHILDREN} {
		var ru unix.Rusage
		if unix.Getrusage(who, &ru) == nil {
			total += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return total
}

func medianOf(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
