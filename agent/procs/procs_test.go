package procs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// feed drives a state with a load held for d: cpu cores busy, and per
// interval waits goroutine waits of which slow were slow. It returns the
// changes it saw, in order.
type feed struct {
	t   *testing.T
	st  *state
	now Sample
}

func newFeed(t *testing.T, set Settings) *feed {
	t.Helper()
	set, err := set.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	f := &feed{t: t, st: &state{set: set, procs: set.Max}, now: Sample{At: time.Unix(1000, 0)}}
	f.st.step(f.now)
	return f
}

func (f *feed) hold(d time.Duration, cpu float64, waits, slow uint64) []int {
	var changes []int
	for end := f.now.At.Add(d); f.now.At.Before(end); {
		iv := f.st.set.Interval
		f.now.At = f.now.At.Add(iv)
		f.now.CPU += time.Duration(cpu * float64(iv))
		f.now.Waits += waits
		f.now.SlowWaits += slow
		from := f.st.procs
		dec := f.st.step(f.now)
		if dec.next != from {
			if dec.reason == "" {
				f.t.Errorf("change %d -> %d without a reason", from, dec.next)
			}
			changes = append(changes, dec.next)
		}
	}
	return changes
}

// settle holds a light load for d and checks the count it ends at.
func (f *feed) settle(d time.Duration, cpu float64, want int) {
	f.t.Helper()
	f.hold(d, cpu, 100, 0)
	if f.st.procs != want {
		f.t.Fatalf("after %s at %.2f cores: %d Ps, want %d", d, cpu, f.st.procs, want)
	}
}

func equal(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestIdleComesDownToTheFloorByHalvings(t *testing.T) {
	f := newFeed(t, Settings{Min: 1, Max: 8})
	// Just short of one quiet period: nothing yet.
	if got := f.hold(Defaults.Quiet-2*Defaults.Interval, 0.05, 100, 0); len(got) != 0 {
		t.Fatalf("lowered before a full quiet period: %v", got)
	}
	got := f.hold(4*Defaults.Quiet, 0.05, 100, 0)
	if !equal(got, []int{4, 2, 1}) {
		t.Fatalf("changes %v, want halvings 4 2 1", got)
	}
	if got := f.hold(3*Defaults.Quiet, 0, 0, 0); len(got) != 0 {
		t.Fatalf("went below the floor: %v", got)
	}
}

func TestFloorAboveOne(t *testing.T) {
	f := newFeed(t, Settings{Min: 3, Max: 8})
	if got := f.hold(5*Defaults.Quiet, 0, 0, 0); !equal(got, []int{4, 3}) {
		t.Fatalf("changes %v, want 4 3 (floor 3)", got)
	}
}

func TestBusyRaisesAtOnceAndCapsAtMax(t *testing.T) {
	f := newFeed(t, Settings{Min: 1, Max: 4})
	f.settle(5*Defaults.Quiet, 0.1, 1)
	// 0.85 cores on 1 P: above RaiseBusy (0.8) of it; the first interval
	// raises, the next (0.85 of 2 Ps) does not.
	if got := f.hold(Defaults.Interval, 0.85, 10, 0); !equal(got, []int{2}) {
		t.Fatalf("one busy interval at 1 P: %v, want [2]", got)
	}
	if got := f.hold(10*Defaults.Interval, 0.85, 10, 0); len(got) != 0 {
		t.Fatalf("0.85 cores at 2 Ps: %v, want no change", got)
	}
	// A CPU-bound burst: doubling, capped at Max, then nothing.
	if got := f.hold(10*Defaults.Interval, 3.9, 10, 0); !equal(got, []int{4}) {
		t.Fatalf("3.9 cores: %v, want [4]", got)
	}
}

func TestWaitsRaiseWithoutCPU(t *testing.T) {
	f := newFeed(t, Settings{Min: 1, Max: 2})
	f.settle(3*Defaults.Quiet, 0, 1)
	// One slow wait per interval is below MinSlow (2): a stray reading.
	if got := f.hold(10*Defaults.Interval, 0.2, 100, 1); len(got) != 0 {
		t.Fatalf("one slow wait per interval raised: %v", got)
	}
	// Two slow of 1000 is below WaitShare (1 %).
	if got := f.hold(10*Defaults.Interval, 0.2, 1000, 2); len(got) != 0 {
		t.Fatalf("0.2 %% slow waits raised: %v", got)
	}
	// Five of 100: Ps are short, though the CPU reading is low (the one
	// P's thread may itself be waiting for a CPU).
	if got := f.hold(Defaults.Interval, 0.2, 100, 5); !equal(got, []int{2}) {
		t.Fatalf("5 %% slow waits: %v, want [2]", got)
	}
}

func TestHysteresisDoesNotFlap(t *testing.T) {
	f := newFeed(t, Settings{Min: 1, Max: 2})
	f.hold(3*Defaults.Quiet, 0, 0, 0)
	f.hold(Defaults.Interval, 1.5, 0, 0)
	if f.st.procs != 2 {
		t.Fatalf("after a burst: %d Ps, want 2", f.st.procs)
	}
	// 0.6 cores: above LowerBusy of one P (0.5), below RaiseBusy of two
	// (1.6): the count stays, however long.
	if got := f.hold(20*Defaults.Quiet, 0.6, 100, 0); len(got) != 0 {
		t.Fatalf("0.6 cores on 2 Ps changed the count: %v", got)
	}
}

func TestSpikeRestartsTheQuietPeriod(t *testing.T) {
	f := newFeed(t, Settings{Min: 1, Max: 2})
	// Most of a quiet period, then one interval of slow waits (at Max: no
	// raise, but the period starts over), then most of a period again.
	f.hold(Defaults.Quiet-4*Defaults.Interval, 0.1, 100, 0)
	f.hold(Defaults.Interval, 0.1, 100, 50)
	if got := f.hold(Defaults.Quiet-4*Defaults.Interval, 0.1, 100, 0); len(got) != 0 {
		t.Fatalf("lowered within a quiet period restarted by a spike: %v", got)
	}
	if got := f.hold(8*Defaults.Interval, 0.1, 100, 0); !equal(got, []int{1}) {
		t.Fatalf("after a full quiet period: %v, want [1]", got)
	}
}

func TestAverageOverTheQuietPeriod(t *testing.T) {
	// Bursts that never reach a raise threshold but average above what one
	// P should carry keep two Ps: 1.4 cores one interval in two averages
	// 0.7 > LowerBusy (0.5).
	f := newFeed(t, Settings{Min: 1, Max: 2})
	for range 200 {
		if got := f.hold(Defaults.Interval, 1.4, 100, 0); len(got) != 0 {
			t.Fatalf("bursty load changed the count: %v", got)
		}
		if got := f.hold(Defaults.Interval, 0, 100, 0); len(got) != 0 {
			t.Fatalf("bursty load changed the count: %v", got)
		}
	}
}

func TestIdleIntervalsAreMarked(t *testing.T) {
	f := newFeed(t, Settings{Min: 1, Max: 2})
	for _, tc := range []struct {
		cpu      float64
		waits    uint64
		slow     uint64
		wantIdle bool
		what     string
	}{
		{0.01, 10, 0, true, "1 % of a CPU, no slow wait"},
		{0.2, 10, 0, false, "20 % of a CPU"},
		{0.01, 10, 1, false, "one slow wait"},
	} {
		f.now.At = f.now.At.Add(Defaults.Interval)
		f.now.CPU += time.Duration(tc.cpu * float64(Defaults.Interval))
		f.now.Waits += tc.waits
		f.now.SlowWaits += tc.slow
		if d := f.st.step(f.now); d.idle != tc.wantIdle {
			t.Errorf("%s: idle %v, want %v", tc.what, d.idle, tc.wantIdle)
		}
	}
}

func TestSettings(t *testing.T) {
	s, err := Settings{Min: 4, Max: 2}.withDefaults()
	if err != nil || s.Min != 2 {
		t.Fatalf("min above max: %+v, %v; want min clamped to 2", s, err)
	}
	for _, bad := range []Settings{
		{Min: -1, Max: 2},
		{Max: -1},
		{Max: 2, LowerBusy: 0.9},
		{Max: 2, Interval: time.Second, Quiet: time.Millisecond},
		{Max: 2, Interval: time.Second, IdleInterval: time.Millisecond},
	} {
		if _, err := bad.withDefaults(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// script is a Source that plays samples and then reports the end.
type script struct {
	mu      sync.Mutex
	samples []Sample
	done    chan struct{}
}

func (s *script) Read() (Sample, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		select {
		case <-s.done:
		default:
			close(s.done)
		}
		return Sample{}, errors.New("script over")
	}
	x := s.samples[0]
	s.samples = s.samples[1:]
	return x, nil
}

func TestRunAppliesChangesAndRestoresMax(t *testing.T) {
	set, err := Settings{Min: 1, Max: 2, Interval: time.Millisecond, IdleInterval: time.Millisecond, Quiet: 10 * time.Millisecond}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	// Samples on their own clock: 20 quiet intervals, 1 busy, 20 quiet.
	src := &script{done: make(chan struct{})}
	s := Sample{At: time.Unix(0, 0)}
	add := func(n int, cpu float64) {
		for range n {
			s.At = s.At.Add(set.Interval)
			s.CPU += time.Duration(cpu * float64(set.Interval))
			src.samples = append(src.samples, s)
		}
	}
	add(20, 0)
	add(1, 1.9)
	add(20, 0)
	var mu sync.Mutex
	var applied []int
	c := newController(set, src, func(n int) { mu.Lock(); applied = append(applied, n); mu.Unlock() },
		time.Now, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan struct{})
	go func() { c.Run(ctx); close(ran) }()
	select {
	case <-src.done:
	case <-time.After(time.Minute):
		t.Fatal("the controller did not read every sample within a minute")
	}
	if c.Procs() != 1 {
		t.Errorf("after the last quiet stretch: %d Ps, want 1", c.Procs())
	}
	cancel()
	<-ran
	mu.Lock()
	defer mu.Unlock()
	if !equal(applied, []int{1, 2, 1, 2}) {
		t.Fatalf("applied %v, want 1 (quiet), 2 (busy), 1 (quiet), 2 (restored on return)", applied)
	}
}

// TestRuntimeSourceSeesWaits checks the real source against the real
// runtime: with one P and a goroutine that never blocks, a goroutine coming
// back from a blocking system call waits for the P, and the source counts
// slow waits. (A goroutine woken by a timer would not show: timers fire
// only when the P schedules, so its wait is not a runnable one. Network
// readiness found by sysmon's poll is, like a system call's return.)
func TestRuntimeSourceSeesWaits(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	src, err := newRuntimeSource(time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	before, err := src.Read()
	if err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		x := 0
		for {
			select {
			case <-stop:
				return
			default:
			}
			for i := range 1 << 16 {
				x += i
			}
		}
	}()
	// Bounded: at most 2000 short blocking sleeps, each followed by a wait
	// of up to a time slice (10 ms) for the spinner's P, stopping once
	// enough slow waits were seen (the runtime records one transition in
	// eight, so about 30 rounds).
	var after Sample
	for i := range 2000 {
		ts := syscall.NsecToTimespec(int64(100 * time.Microsecond))
		syscall.Nanosleep(&ts, nil)
		if i%10 == 9 {
			if after, err = src.Read(); err != nil {
				t.Fatal(err)
			}
			if after.SlowWaits-before.SlowWaits >= 3 {
				break
			}
		}
	}
	close(stop)
	wg.Wait()
	if after.CPU <= before.CPU {
		t.Errorf("CPU did not grow: %s then %s", before.CPU, after.CPU)
	}
	if after.Waits <= before.Waits {
		t.Errorf("no scheduling latencies recorded: %d then %d", before.Waits, after.Waits)
	}
	if after.SlowWaits-before.SlowWaits < 3 {
		t.Errorf("slow waits %d -> %d: the source did not see goroutines kept from the one P by a spinning one", before.SlowWaits, after.SlowWaits)
	}
}
