package rpc

import (
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkMetricsRequest: counting one answered request of a method
// seen before (the hot path: no label hashing, no allocation).
func BenchmarkMetricsRequest(b *testing.B) {
	t := NewMetrics(prometheus.NewRegistry()).table("dubbo", "greeter")
	method := []byte("sayHello")
	start := time.Now()
	var c methodCache
	b.ReportAllocs()
	for b.Loop() {
		t.request(c.get(t, method), "ok", start, time.Time{})
	}
}

// TestMethodCache: each method gets its own counters, from the cache or
// the table, however many methods take turns; an unchanged method costs
// no allocation.
func TestMethodCache(t *testing.T) {
	st := NewMetrics(prometheus.NewRegistry()).table("dubbo", "greeter")
	var c methodCache
	for round := range 3 {
		for i := range 6 { // more than the cache holds
			m := fmt.Appendf(nil, "m%d", i)
			if got, want := c.get(st, m), st.counters(m); got != want || got.method != string(m) {
				t.Fatalf("round %d: %s got the counters of %q", round, m, got.method)
			}
		}
	}
	m := []byte("m5")
	if n := testing.AllocsPerRun(100, func() { c.get(st, m) }); n != 0 {
		t.Fatalf("a cached method allocates %.1f times", n)
	}
	if (&methodCache{}).get(nil, m) != nil {
		t.Fatal("counters without metrics")
	}
}

// TestMetricsMethodsBounded: past maxMethods distinct methods, new ones
// count as "other", and an empty method as "none"; method bytes that are
// not UTF-8 (a client's) are counted, not a panic.
func TestMetricsMethodsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := NewMetrics(reg).table("redis", "cache")
	start := time.Now()
	count := func(method []byte, status string) { st.request(st.counters(method), status, start, time.Time{}) }
	count([]byte{0xff, 'm'}, "ok")
	count(nil, "ok")
	for i := range maxMethods + 8 {
		count(fmt.Appendf(nil, "m%d", i), "ok")
	}
	count(nil, "error")
	count([]byte("fresh"), "timeout")
	count([]byte("fresh2"), "ok")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	series := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "weir_rpc_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var method, status string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "method":
					method = l.GetValue()
				case "status":
					status = l.GetValue()
				}
			}
			series[method+"/"+status] += m.GetCounter().GetValue()
		}
	}
	if series["\uFFFDm/ok"] != 1 || series["none/ok"] != 1 {
		t.Fatalf("invalid UTF-8 method counted %v, empty method %v", series["\uFFFDm/ok"], series["none/ok"])
	}
	// maxMethods methods with "ok", "none" with "error", and "other" with
	// "ok" and "timeout".
	if len(series) != maxMethods+3 || series["other/ok"] != 11 || series["other/timeout"] != 1 || series["none/error"] != 1 {
		t.Fatalf("%d series; other/ok %v, other/timeout %v, none/error %v", len(series), series["other/ok"], series["other/timeout"], series["none/error"])
	}
}

// TestDurationsMatchPrometheus: the latency histogram, fed one at a time
// and in runs (durationRun, by duration and by span), exports what a prometheus.Histogram with the
// same buckets exports for the same observations: counts per bucket
// (bounds included in their bucket), sample count and sum.
func TestDurationsMatchPrometheus(t *testing.T) {
	ref := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ref", Buckets: func() []float64 {
		var b []float64
		for _, le := range durationBuckets {
			b = append(b, le.Seconds())
		}
		return b
	}()})
	d := newDurations()
	h := d.hist("redis")
	var run durationRun
	t0 := time.Now()
	obs := []time.Duration{0, time.Nanosecond, 100 * time.Microsecond, 100*time.Microsecond + 1, 3 * time.Millisecond, time.Second, 10 * time.Second, time.Minute}
	for i, o := range obs {
		for k := range i + 1 {
			ref.Observe(o.Seconds())
			switch k % 4 {
			case 0, 2:
				h.observe(o)
			case 1:
				run.add(h, o)
			case 3:
				// Spans, equal ones in a row too (the shortcut).
				run.addSpan(h, t0, t0.Add(o))
				if k+4 <= i {
					ref.Observe(o.Seconds())
					run.addSpan(h, t0, t0.Add(o))
				}
			}
		}
		if i%3 == 0 {
			run.flush()
		}
	}
	run.flush()
	run.flush() // a second flush adds nothing
	reg := prometheus.NewRegistry()
	reg.MustRegister(d, ref)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 2 || mfs[0].GetName() != "ref" {
		t.Fatalf("gathered %d families, want ref and ours", len(mfs))
	}
	want, got := mfs[0].GetMetric()[0].GetHistogram(), mfs[1].GetMetric()[0].GetHistogram()
	if got.GetSampleCount() != want.GetSampleCount() || math.Abs(got.GetSampleSum()-want.GetSampleSum()) > 1e-6 {
		t.Errorf("count %d sum %v, want %d %v", got.GetSampleCount(), got.GetSampleSum(), want.GetSampleCount(), want.GetSampleSum())
	}
	for i, b := range want.GetBucket() {
		if g := got.GetBucket()[i]; g.GetUpperBound() != b.GetUpperBound() || g.GetCumulativeCount() != b.GetCumulativeCount() {
			t.Errorf("bucket %v: %d, want le %v: %d", g.GetUpperBound(), g.GetCumulativeCount(), b.GetUpperBound(), b.GetCumulativeCount())
		}
	}
	if l := mfs[1].GetMetric()[0].GetLabel(); len(l) != 1 || l[0].GetValue() != "redis" {
		t.Errorf("labels %v, want protocol=redis", l)
	}
}
