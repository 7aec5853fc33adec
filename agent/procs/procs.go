// Package procs sizes the agent's GOMAXPROCS to its load: few Ps while the
// agent is lightly loaded, the runtime's default as soon as goroutines wait
// for one.
//
// Why: with two or more Ps an idle P spins and polls, goroutines are handed
// between threads through futexes, and a connection's goroutine moves
// between CPUs, dragging its socket's cache lines along. On this project's
// benchmarks one P made HTTP/1.1 keep-alive 8–15 % cheaper per request
// (docs/benchmarks.md, "What one Go P would save"). A node agent must still
// use every core it is given when its load needs them, and with one P a
// CPU-bound goroutine (a config rebuild, the GC) holds up every connection
// for up to a 10 ms time slice. So the P count follows the load, between a
// floor and the runtime's default.
//
// The Controller samples often and cheaply: the process's CPU time
// (getrusage) and the runtime's histogram of how long runnable goroutines
// waited for a P (runtime/metrics /sched/latencies:seconds). It raises the
// count at once when goroutines wait too long or the CPU used approaches
// the P count, and lowers it only after a sustained quiet period, one
// halving at most per period, so it does not flap. runtime.GOMAXPROCS stops
// the world: the controller calls it only on a change and counts every
// call.
package procs

import (
	"fmt"
	"log/slog"
	"math"
	"time"
)

// Sample is one reading of the process. Counters are cumulative since the
// process started; the controller works on differences between readings.
type Sample struct {
	// At is when the sample was taken (monotonic).
	At time.Time
	// CPU is the process's CPU time, user and system, all threads.
	CPU time.Duration
	// Waits counts the goroutine scheduling latencies the runtime recorded
	// (it records a sample of them, not every one).
	Waits uint64
	// SlowWaits counts those of Waits at or above the controller's
	// WaitThreshold.
	SlowWaits uint64
}

// Source reads a Sample. Read runs on the controller's goroutine only.
type Source interface {
	Read() (Sample, error)
}

// Settings are the controller's thresholds. The zero value of a field means
// its default (see Defaults), so Settings{Min: 1, Max: n} is a working
// controller.
type Settings struct {
	// Min and Max bound the P count. Max is normally the runtime's default
	// (runtime.GOMAXPROCS(0) at start: the CPUs or the cgroup limit).
	Min, Max int
	// Interval is the sampling period while the agent is busy.
	Interval time.Duration
	// IdleInterval is the sampling period after an interval in which the
	// process used less than IdleBusy of a CPU and no goroutine waited
	// long. Every sample wakes the idle process (and the runtime's sysmon
	// behind it): at 20 ms that was measured at 5.8 ms of CPU a second on
	// an idle agent, against 0.1–0.4 ms without the controller.
	IdleInterval time.Duration
	// IdleBusy is the CPU share below which an interval counts as idle.
	IdleBusy float64
	// WaitThreshold is the scheduling latency that counts as a goroutine
	// kept from running for want of a P.
	WaitThreshold time.Duration
	// WaitShare is the share of recorded waits at or above WaitThreshold,
	// within one interval, that raises the count (with at least MinSlow
	// such waits, so one stray reading does not).
	WaitShare float64
	// MinSlow is the least number of slow waits in one interval that
	// raises the count.
	MinSlow uint64
	// RaiseBusy raises the count when the CPU used over one interval
	// reaches this share of the current P count.
	RaiseBusy float64
	// LowerBusy lets the count drop to n' once the CPU used over the whole
	// quiet period is below LowerBusy × n' (never below Min, never more
	// than a halving at once).
	LowerBusy float64
	// Quiet is how long the load must stay below the raise thresholds, and
	// its average below LowerBusy, before the count is lowered.
	Quiet time.Duration
	// LogEvery rate-limits the log line a change writes: changes within it
	// are counted and reported with the next line.
	LogEvery time.Duration
}

// Defaults are the thresholds the agent runs with.
var Defaults = Settings{
	Min:           1,
	Interval:      20 * time.Millisecond,
	IdleInterval:  100 * time.Millisecond,
	IdleBusy:      0.05,
	WaitThreshold: time.Millisecond,
	WaitShare:     0.01,
	MinSlow:       2,
	RaiseBusy:     0.8,
	LowerBusy:     0.5,
	Quiet:         1500 * time.Millisecond,
	LogEvery:      10 * time.Second,
}

// withDefaults fills the zero fields from Defaults and checks the bounds.
func (s Settings) withDefaults() (Settings, error) {
	d := Defaults
	orDefault(&s.Min, d.Min)
	orDefault(&s.Interval, d.Interval)
	orDefault(&s.IdleInterval, d.IdleInterval)
	orDefault(&s.IdleBusy, d.IdleBusy)
	orDefault(&s.WaitThreshold, d.WaitThreshold)
	orDefault(&s.WaitShare, d.WaitShare)
	orDefault(&s.MinSlow, d.MinSlow)
	orDefault(&s.RaiseBusy, d.RaiseBusy)
	orDefault(&s.LowerBusy, d.LowerBusy)
	orDefault(&s.Quiet, d.Quiet)
	orDefault(&s.LogEvery, d.LogEvery)
	switch {
	case s.Min < 1:
		return s, fmt.Errorf("procs: min %d: want at least 1", s.Min)
	case s.Max < 1:
		return s, fmt.Errorf("procs: max %d: want at least 1", s.Max)
	case s.Interval <= 0 || s.IdleInterval < s.Interval || s.Quiet < s.IdleInterval:
		return s, fmt.Errorf("procs: interval %s, idle interval %s, quiet %s: want 0 < interval <= idle interval <= quiet", s.Interval, s.IdleInterval, s.Quiet)
	case s.LowerBusy >= s.RaiseBusy:
		// Without the gap the count would drop into a state that raises it
		// again at once.
		return s, fmt.Errorf("procs: lowerBusy %v must be below raiseBusy %v", s.LowerBusy, s.RaiseBusy)
	}
	if s.Min > s.Max {
		s.Min = s.Max
	}
	return s, nil
}

// orDefault sets *v to d when it is the zero value.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// decision is what one step concluded.
type decision struct {
	next   int
	reason string
	// idle says the interval was idle: the next sample may wait
	// IdleInterval.
	idle bool
}

// state is the controller's memory between samples: the current count and
// the samples of the trailing quiet period. It has no clock and calls
// nothing: step is a pure function of it and the new sample, which is what
// the unit tests drive.
type state struct {
	set   Settings
	procs int
	last  Sample
	// calm is the first sample of the current quiet stretch: the last
	// change or the last interval that met a raise threshold.
	calm Sample
	have bool
}

// step takes a new sample and says what the P count should be.
func (st *state) step(s Sample) decision {
	if !st.have {
		st.last, st.calm, st.have = s, s, true
		return decision{next: st.procs}
	}
	prev := st.last
	st.last = s
	dt := s.At.Sub(prev.At)
	if dt <= 0 {
		return decision{next: st.procs}
	}
	busy := float64(s.CPU-prev.CPU) / float64(dt)
	waits, slow := s.Waits-prev.Waits, s.SlowWaits-prev.SlowWaits
	short := slow >= st.set.MinSlow && float64(slow) >= st.set.WaitShare*float64(waits)
	hot := busy >= st.set.RaiseBusy*float64(st.procs)
	idle := busy < st.set.IdleBusy && slow == 0
	if short || hot {
		st.calm = s
		if st.procs >= st.set.Max {
			return decision{next: st.procs}
		}
		next := min(st.set.Max, 2*st.procs)
		reason := fmt.Sprintf("cpu %.2f of %d P", busy, st.procs)
		if short {
			reason = fmt.Sprintf("%d of %d goroutine waits >= %s", slow, waits, st.set.WaitThreshold)
		}
		return st.change(next, reason)
	}
	span := s.At.Sub(st.calm.At)
	if st.procs <= st.set.Min || span < st.set.Quiet {
		return decision{next: st.procs, idle: idle}
	}
	avg := float64(s.CPU-st.calm.CPU) / float64(span)
	// The fewest Ps that keep the quiet period's average below LowerBusy
	// of them, at most one halving below today's count.
	next := max(st.set.Min, int(math.Ceil(avg/st.set.LowerBusy)), (st.procs+1)/2)
	if next >= st.procs {
		// Busy enough to keep the count: start a new period, so the
		// average always covers the last Quiet, not the whole history.
		st.calm = s
		return decision{next: st.procs, idle: idle}
	}
	d := st.change(next, fmt.Sprintf("cpu %.2f over %s", avg, span.Round(time.Millisecond)))
	d.idle = idle
	return d
}

func (st *state) change(next int, reason string) decision {
	st.procs = next
	st.calm = st.last
	return decision{next: next, reason: reason}
}

// logLimiter lets one change line through per period and counts the rest.
type logLimiter struct {
	every      time.Duration
	last       time.Time
	suppressed int
}

func (l *logLimiter) log(log *slog.Logger, now time.Time, from, to int, reason string) {
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.suppressed++
		return
	}
	log.Info("gomaxprocs changed", "from", from, "to", to, "reason", reason, "unloggedChanges", l.suppressed)
	l.last, l.suppressed = now, 0
}
