package rpc

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// durationBuckets are weir_rpc_request_duration_seconds's upper bounds.
var durationBuckets = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// durations is the request latency histogram, one per protocol, kept as
// plain atomic counts and exported as a histogram when scraped. Unlike a
// prometheus.Histogram it takes many observations at once (durationRun),
// so an upstream reader adds a read's worth of answers with an atomic
// operation per bucket they fell in, not three or four per answer.
type durations struct {
	desc *prometheus.Desc
	mu   sync.Mutex
	all  []*durationHist
}

// durationHist is one protocol's histogram.
type durationHist struct {
	protocol string
	counts   [len(durationBuckets) + 1]atomic.Uint64 // the last: past every bound
	sum      atomic.Int64                            // nanoseconds
}

func newDurations() *durations {
	return &durations{desc: prometheus.NewDesc("weir_rpc_request_duration_seconds",
		"Time from reading an RPC request to its answer being ready, by protocol.", []string{"protocol"}, nil)}
}

// hist returns protocol's histogram, made on first use.
func (d *durations) hist(protocol string) *durationHist {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, h := range d.all {
		if h.protocol == protocol {
			return h
		}
	}
	h := &durationHist{protocol: protocol}
	d.all = append(d.all, h)
	return h
}

// Describe is prometheus.Collector's.
func (d *durations) Describe(ch chan<- *prometheus.Desc) { ch <- d.desc }

// Collect is prometheus.Collector's. Counts are read one by one while
// observations go on, so the count is the buckets' sum (a scrape never
// shows more samples than its buckets hold); the sum may be a few
// observations ahead or behind.
func (d *durations) Collect(ch chan<- prometheus.Metric) {
	d.mu.Lock()
	all := d.all
	d.mu.Unlock()
	for _, h := range all {
		buckets := make(map[float64]uint64, len(durationBuckets))
		var n uint64
		for i, le := range durationBuckets {
			n += h.counts[i].Load()
			buckets[le.Seconds()] = n
		}
		n += h.counts[len(durationBuckets)].Load()
		ch <- prometheus.MustNewConstHistogram(d.desc, n, time.Duration(h.sum.Load()).Seconds(), buckets, h.protocol)
	}
}

// bucket is the index of the first bound d is within (le: less or
// equal), len(durationBuckets) past them all.
func bucket(d time.Duration) int {
	for i, le := range durationBuckets {
		if d <= le {
			return i
		}
	}
	return len(durationBuckets)
}

// observe adds one duration.
func (h *durationHist) observe(d time.Duration) {
	h.counts[bucket(d)].Add(1)
	h.sum.Add(int64(d))
}

// durationRun gathers the durations one reader observes for one
// histogram until add is given another or flush is called, then adds
// them with one atomic operation per bucket used. Not safe for
// concurrent use.
type durationRun struct {
	h      *durationHist
	counts [len(durationBuckets) + 1]uint64
	sum    int64
	// the last span added (addSpan) and its duration's bucket: the
	// requests of one client's read share a start, and the answers of
	// one upstream read an end
	lastStart, lastEnd time.Time
	lastD              time.Duration
	lastB              int
}

// addSpan observes in h the duration from start to end; a span equal to
// the last one costs no subtraction of times and no search of buckets.
func (r *durationRun) addSpan(h *durationHist, start, end time.Time) {
	if h == r.h && start == r.lastStart && end == r.lastEnd {
		r.counts[r.lastB]++
		r.sum += int64(r.lastD)
		return
	}
	d := end.Sub(start)
	r.add(h, d)
	r.lastStart, r.lastEnd, r.lastD, r.lastB = start, end, d, bucket(d)
}

// add observes d in h.
func (r *durationRun) add(h *durationHist, d time.Duration) {
	if h != r.h {
		r.flush()
		r.h = h
	}
	r.counts[bucket(d)]++
	r.sum += int64(d)
}

// flush adds what was gathered to the histogram.
func (r *durationRun) flush() {
	if r.h == nil {
		return
	}
	for i, n := range r.counts {
		if n > 0 {
			r.h.counts[i].Add(n)
			r.counts[i] = 0
		}
	}
	r.h.sum.Add(r.sum)
	r.h, r.sum = nil, 0
	r.lastStart, r.lastEnd = time.Time{}, time.Time{}
}
