package bench

import "testing"

func TestParseMachineBusy(t *testing.T) {
	got, err := parseMachineBusy([]byte("cpu  100 2 30 900 50 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8 9 10\n"))
	if err != nil {
		t.Fatal(err)
	}
	// user+nice+system+irq+softirq+steal = 100+2+30+4+5+6 ticks.
	if want := 147 * clockTick; got != want {
		t.Fatalf("busy %v, want %v", got, want)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 x 4 5 6 7 8\n", "cpu 1 2\n"} {
		if _, err := parseMachineBusy([]byte(bad)); err == nil {
			t.Errorf("parseMachineBusy(%q): no error", bad)
		}
	}
}

func FuzzParseMachineBusy(f *testing.F) {
	f.Add([]byte("cpu  100 2 30 900 50 4 5 6 7 8\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		d, err := parseMachineBusy(b)
		if err == nil && d < 0 {
			t.Fatalf("negative busy time %v from %q", d, b)
		}
	})
}
