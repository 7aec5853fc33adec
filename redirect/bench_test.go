package redirect

import "testing"

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
