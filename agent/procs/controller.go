package procs

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Controller runs the sizing loop (see the package comment). Build it with
// New; Run drives it until its context ends.
type Controller struct {
	set Settings
	src Source
	// apply sets the P count: runtime.GOMAXPROCS outside tests.
	apply func(int)
	now   func() time.Time
	log   *slog.Logger

	procs   atomic.Int64
	changes *prometheus.CounterVec
}

// New builds a controller over the running process: the runtime's
// scheduling latencies and getrusage. set.Max of 0 means the runtime's
// current GOMAXPROCS (its default unless something set it).
func New(set Settings, log *slog.Logger) (*Controller, error) {
	if set.Max == 0 {
		set.Max = runtime.GOMAXPROCS(0)
	}
	set, err := set.withDefaults()
	if err != nil {
		return nil, err
	}
	src, err := newRuntimeSource(set.WaitThreshold)
	if err != nil {
		return nil, err
	}
	return newController(set, src, func(n int) { runtime.GOMAXPROCS(n) }, time.Now, log), nil
}

func newController(set Settings, src Source, apply func(int), now func() time.Time, log *slog.Logger) *Controller {
	if log == nil {
		log = slog.Default()
	}
	c := &Controller{
		set: set, src: src, apply: apply, now: now, log: log,
		changes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_agent_gomaxprocs_changes_total",
			Help: "Changes of the agent's GOMAXPROCS by runtime.procs: auto (each one stops the world briefly), by direction.",
		}, []string{"direction"}),
	}
	c.procs.Store(int64(set.Max))
	return c
}

// Collectors are the controller's metrics: the change counter. The current
// count is ProcsGauge's, which works in every mode.
func (c *Controller) Collectors() []prometheus.Collector {
	return []prometheus.Collector{c.changes}
}

// Run samples every Interval and applies the decisions until ctx ends. It
// starts at Max, so a start under load (a takeover re-opening every pod's
// listeners) is not starved, and comes down after the first quiet period.
// On return the count is back at Max.
func (c *Controller) Run(ctx context.Context) {
	st := &state{set: c.set, procs: c.set.Max}
	lim := &logLimiter{every: c.set.LogEvery}
	t := time.NewTimer(c.set.Interval)
	defer t.Stop()
	var ups, downs int
	defer func() {
		if int(c.procs.Load()) != c.set.Max {
			c.apply(c.set.Max)
			c.procs.Store(int64(c.set.Max))
		}
		c.log.Info("gomaxprocs controller stopped", "changesUp", ups, "changesDown", downs, "procs", c.set.Max)
	}()
	failed := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s, err := c.src.Read()
		if err != nil {
			if !failed {
				c.log.Warn("gomaxprocs controller cannot sample; holding the current count", "err", err)
				failed = true
			}
			t.Reset(c.set.Interval)
			continue
		}
		from := st.procs
		d := st.step(s)
		if d.idle {
			t.Reset(c.set.IdleInterval)
		} else {
			t.Reset(c.set.Interval)
		}
		if d.next == from {
			continue
		}
		c.apply(d.next)
		c.procs.Store(int64(d.next))
		dir := "up"
		if d.next < from {
			dir = "down"
			downs++
		} else {
			ups++
		}
		c.changes.WithLabelValues(dir).Inc()
		lim.log(c.log, c.now(), from, d.next, d.reason)
	}
}

// Procs is the P count the controller last set.
func (c *Controller) Procs() int { return int(c.procs.Load()) }

// ProcsGauge reports the process's current GOMAXPROCS, whatever set it.
func ProcsGauge() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weir_agent_gomaxprocs",
		Help: "The agent's current GOMAXPROCS (runtime.procs: auto moves it between runtime.minProcs and the runtime's default).",
	}, func() float64 { return float64(runtime.GOMAXPROCS(0)) })
}

// runtimeSource reads the running process.
type runtimeSource struct {
	samples []metrics.Sample
	// from is the first histogram bucket whose lower bound is at or above
	// the wait threshold.
	from int
}

const schedLatencies = "/sched/latencies:seconds"

func newRuntimeSource(threshold time.Duration) (*runtimeSource, error) {
	r := &runtimeSource{samples: []metrics.Sample{{Name: schedLatencies}}}
	metrics.Read(r.samples)
	if r.samples[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil, fmt.Errorf("procs: runtime metric %s not available in this Go runtime", schedLatencies)
	}
	h := r.samples[0].Value.Float64Histogram()
	r.from = len(h.Counts)
	for i := range h.Counts {
		if h.Buckets[i] >= threshold.Seconds() {
			r.from = i
			break
		}
	}
	return r, nil
}

// Read takes one Sample: a getrusage call and a read of one runtime
// histogram (reusing its buffers), a few microseconds in all.
func (r *runtimeSource) Read() (Sample, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return Sample{}, fmt.Errorf("getrusage: %w", err)
	}
	metrics.Read(r.samples)
	h := r.samples[0].Value.Float64Histogram()
	var s Sample
	s.At = time.Now()
	s.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	for i, n := range h.Counts {
		s.Waits += n
		if i >= r.from {
			s.SlowWaits += n
		}
	}
	return s, nil
}
