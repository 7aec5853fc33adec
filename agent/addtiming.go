package agent

import (
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"sync"
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
// nothing, so paths other than ADD pass nil. Its phases are a list in a
// buffer of its own rather than a map: an ADD records about fifteen, and a
// map of that size (grown step by step) and its encoding were a good part
// of the garbage the agent made per ADD.
type phaseTimer struct {
	start, last time.Time
	cpu0        time.Duration
	hist        *prometheus.HistogramVec
	phases      phaseTimes
	buf         [24]phaseTime
	// reported: the ADD finished in the way whose answer carries the
	// phases (done was called).
	reported bool
	// json is phaseTimes.MarshalJSON's buffer, kept with the timer.
	json []byte
}

// freeTimers keeps a few timers between ADDs (see releaseTimer).
var freeTimers = make(chan *phaseTimer, 4)

// getTimer is a timer for one ADD, reused when one is free: with its
// buffers it is most of what the timing costs an ADD.
func getTimer() *phaseTimer {
	select {
	case t := <-freeTimers:
		return t
	default:
		return new(phaseTimer)
	}
}

// releaseTimer gives t back once nothing refers to it or its phases any
// more: after the answer that carried them is written.
func releaseTimer(t *phaseTimer) {
	*t = phaseTimer{json: t.json[:0]}
	select {
	case freeTimers <- t:
	default:
	}
}

// phaseTime is one phase's total, in microseconds.
type phaseTime struct {
	name   string
	micros int64
}

// phaseTimes is what api.AddResponse.Timings carries, sorted by name; its
// JSON is the same object a map would give. buf, when set, is where
// MarshalJSON writes (encoding/json copies what it returns at once).
type phaseTimes struct {
	list []phaseTime
	buf  *[]byte
}

// begin starts the clock: the ADD's total counts from here.
func (t *phaseTimer) begin(hist *prometheus.HistogramVec) {
	now := time.Now()
	t.start, t.last, t.cpu0, t.hist = now, now, processCPU(), hist
	t.phases.list = t.buf[:0]
	t.phases.buf = &t.json
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
		t.record(rulesPhase(phase), took)
	}
}

var rulesPhases struct {
	sync.Mutex
	names map[string]string
}

// rulesPhase is "rules."+phase, made once per name: the redirect has a
// handful of steps, and every ADD reports them.
func rulesPhase(phase string) string {
	rulesPhases.Lock()
	defer rulesPhases.Unlock()
	name, ok := rulesPhases.names[phase]
	if !ok {
		if rulesPhases.names == nil {
			rulesPhases.names = map[string]string{}
		}
		name = "rules." + phase
		rulesPhases.names[phase] = name
	}
	return name
}

func (t *phaseTimer) record(phase string, d time.Duration) {
	l := t.phases.list
	i, found := slices.BinarySearchFunc(l, phase, func(e phaseTime, name string) int { return strings.Compare(e.name, name) })
	if !found {
		l = slices.Insert(l, i, phaseTime{name: phase})
		t.phases.list = l
	}
	l[i].micros += d.Microseconds()
	if t.hist != nil {
		t.hist.WithLabelValues(phase).Observe(d.Seconds())
	}
}

// done records the total and the CPU time; the answer then carries every
// phase.
func (t *phaseTimer) done() {
	if t == nil {
		return
	}
	t.record(phaseTotal, time.Since(t.start))
	t.record(phaseCPU, processCPU()-t.cpu0)
	t.reported = true
}

// MarshalJSON writes the phases as one object, keys in the order
// encoding/json gives a map's (record keeps them sorted), without the map.
func (p phaseTimes) MarshalJSON() ([]byte, error) {
	var b []byte
	if p.buf != nil {
		b = (*p.buf)[:0]
	}
	b = append(b, '{')
	for i, e := range p.list {
		if i > 0 {
			b = append(b, ',')
		}
		if plainName(e.name) {
			b = append(b, '"')
			b = append(b, e.name...)
			b = append(b, '"')
		} else {
			k, err := json.Marshal(e.name)
			if err != nil {
				return nil, err
			}
			b = append(b, k...)
		}
		b = append(b, ':')
		b = strconv.AppendInt(b, e.micros, 10)
	}
	b = append(b, '}')
	if p.buf != nil {
		*p.buf = b
	}
	return b, nil
}

// plainName: s needs no escaping in a JSON string (every phase name).
func plainName(s string) bool {
	for i := range len(s) {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
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
