package rpc

import (
	"fmt"
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
	b.ReportAllocs()
	for b.Loop() {
		t.request(method, "ok", start)
	}
}

// TestMetricsMethodsBounded: past maxMethods distinct methods, new ones
// count as "other", and an empty method as "none"; method bytes that are
// not UTF-8 (a client's) are counted, not a panic.
func TestMetricsMethodsBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	st := NewMetrics(reg).table("redis", "cache")
	start := time.Now()
	st.request([]byte{0xff, 'm'}, "ok", start)
	st.request(nil, "ok", start)
	for i := range maxMethods + 8 {
		st.request(fmt.Appendf(nil, "m%d", i), "ok", start)
	}
	st.request(nil, "error", start)
	st.request([]byte("fresh"), "timeout", start)
	st.request([]byte("fresh2"), "ok", start)
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
