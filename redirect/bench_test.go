package redirect

import "testing"

// BenchmarkApply measures one Apply of the full REDIRECT rule set into a
// netns that already holds it (the agent's reconcile case: read both
// families and both backends, nothing to write).
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

// BenchmarkApplyRemove measures a pod's life cycle: program a fresh netns
// and tear it down again.
func BenchmarkApplyRemove(b *testing.B) {
	for _, backend := range allBackends {
		for _, mode := range []Mode{ModeRedirect, ModeTPROXY} {
			b.Run(backend+"/"+string(mode), func(b *testing.B) {
				requireBackend(b, backend)
				n := newNS(b)
				s := fullSpec(backend)
				s.Mode = mode
				for b.Loop() {
					if err := Apply(n.Path(), s); err != nil {
						b.Fatal(err)
					}
					if err := Remove(n.Path()); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkVerify measures a CNI CHECK.
func BenchmarkVerify(b *testing.B) {
	for _, backend := range allBackends {
		b.Run(backend, func(b *testing.B) {
			requireBackend(b, backend)
			n := newNS(b)
			s := fullSpec(backend)
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
}
