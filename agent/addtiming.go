package agent

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"
)

// The phases of an ADD the agent reports (api.AddResponse.Timings, and the
// weir_cni_add_phase_seconds histogram), in the order they run. A pod's ADD
// latency is the container runtime's to wait for, so where it goes must be
// visible without a profiler.
const (
	phaseVet     = "vet"     // the namespace guard's lock-free half (open, statfs, ioctl)
	phaseDecide  = "decide"  // the enrolment policy
	phaseLock    = "lock"    // waiting for the agent's lock (other CNI calls, reconcile)
	phaseShared  = "shared"  // the guard's "another pod's namespace" half, superseded stand-ins
	phaseListen  = "listen"  // opening the namespace and the capture listeners in it
	phaseMigrate = "migrate" // the pod sysctls capture sets (tunePod)
	phaseServe   = "serve"   // handing the listeners to the engine
	phaseApply   = "apply"   // programming the redirect, when the plugin asked the agent to (api.QueryApply)
	phaseState   = "state"   // persisting the pod's state file
	// phaseTotal is the whole ADD inside the agent, phaseCPU the CPU time
	// (user and system) the agent process used meanwhile: the part of the
	// wall time that is the agent's own work rather than waiting for a CPU
	// on a busy node. Both in microseconds like the rest.
	phaseTotal = "total"
	phaseCPU   = "cpu"
)

// phaseTimer measures the phases of one ADD. A nil *phaseTimer measures
// nothing, so paths other than ADD pass nil.
type phaseTimer struct {
	start, last time.Time
	cpu0        time.Duration
	out         map[string]int64
	hist        *prometheus.HistogramVec
}

func newPhaseTimer(hist *prometheus.HistogramVec) *phaseTimer {
	now := time.Now()
	return &phaseTimer{start: now, last: now, cpu0: processCPU(), out: map[string]int64{}, hist: hist}
}

// mark ends phase, which began at the previous mark.
func (t *phaseTimer) mark(phase string) {
	if t == nil {
		return
	}
	now := time.Now()
	t.record(phase, now.Sub(t.last))
	t.last = now
}

// trace is a redirect.WithTrace callback that records the redirect's own
// steps as "rules.<step>", beside the agent's phases.
func (t *phaseTimer) trace(phase string, took time.Duration) {
	if t != nil {
		t.record("rules."+phase, took)
	}
}

func (t *phaseTimer) record(phase string, d time.Duration) {
	t.out[phase] += d.Microseconds()
	if t.hist != nil {
		t.hist.WithLabelValues(phase).Observe(d.Seconds())
	}
}

// done records the total and the CPU time and returns every phase.
func (t *phaseTimer) done() map[string]int64 {
	if t == nil {
		return nil
	}
	t.record(phaseTotal, time.Since(t.start))
	t.record(phaseCPU, processCPU()-t.cpu0)
	return t.out
}

// processCPU is the CPU time the agent process has used so far, with the
// programs it ran and waited for (iptables-restore, when it programs an
// iptables backend's rules at ADD: the plugin's figure counted them when it
// ran them). It counts every thread, so background work (GC, connections)
// lands in the ADD it overlaps; on an idle agent that is the ADD's own cost.
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
