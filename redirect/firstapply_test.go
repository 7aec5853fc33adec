package redirect

import (
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// A pod's first Apply in an iptables flavour runs one restore per family
// and no save: a namespace with no weir chain holds nothing to read. A
// second Apply, with the rules there, reads them before it compares, and
// changes nothing; the rules of both are what Verify expects.
func TestFirstApplyReadsNothing(t *testing.T) {
	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			requireBackend(t, backend)
			n := newNS(t)
			s := fullSpec(backend)
			var mu sync.Mutex
			var ran []string
			runHook = func(argv []string) {
				mu.Lock()
				defer mu.Unlock()
				ran = append(ran, filepath.Base(argv[0])+" "+strings.Join(argv[1:], " "))
			}
			t.Cleanup(func() { runHook = nil })
			count := func(suffix string) int {
				mu.Lock()
				defer mu.Unlock()
				c := 0
				for _, r := range ran {
					if prog, _, _ := strings.Cut(r, " "); strings.HasSuffix(prog, suffix) {
						c++
					}
				}
				return c
			}

			apply := func(which string, wantSaves, wantRestores int) {
				t.Helper()
				mu.Lock()
				ran = nil
				mu.Unlock()
				if err := Apply(n.Path(), s); err != nil {
					t.Fatalf("%s Apply: %v", which, err)
				}
				if saves, restores := count("-save"), count("-restore"); saves != wantSaves || restores != wantRestores {
					t.Fatalf("%s Apply ran %d save and %d restore programs, want %d and %d: %q", which, saves, restores, wantSaves, wantRestores, ran)
				}
				if err := Verify(n.Path(), s); err != nil {
					t.Fatalf("rules after the %s Apply: %v", which, err)
				}
			}
			apply("first", 0, 2)  // a restore per family, nothing read
			apply("second", 2, 0) // both families read, nothing to change
		})
	}
}
