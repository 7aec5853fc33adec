package sniff

import (
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	o := Options{Timeout: time.Second, Metrics: m}
	for _, in := range []string{"GET / HTTP/1.1\r\n", "GET / HTTP/1.0\r\n", http2Preface, "\x00\x01", string(defaultSpec().bytes())} {
		if _, _, err := Detect(&chunkConn{data: []byte(in), end: io.EOF}, o); err != nil {
			t.Fatal(err)
		}
	}
	Detect(&chunkConn{end: errReset}, o)
	Detect(&chunkConn{end: io.EOF}, Options{Metrics: m})

	want := map[string]float64{"http1": 2, "http2": 1, "unknown": 1, "tls": 1, "error": 1, "skipped": 1, "timeout": 0}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, f := range fams {
		for _, s := range f.GetMetric() {
			result := s.GetLabel()[0].GetValue()
			var got float64
			switch f.GetName() {
			case "weir_sniff_total":
				got = s.GetCounter().GetValue()
			case "weir_sniff_duration_seconds":
				got = float64(s.GetHistogram().GetSampleCount())
			default:
				t.Fatalf("unexpected family %s", f.GetName())
			}
			if got != want[result] {
				t.Errorf("%s{result=%q} = %v, want %v", f.GetName(), result, got, want[result])
			}
			seen++
		}
	}
	// Every result has both series from the start, so dashboards see zeros.
	if seen != 2*(int(numProtocols)+1) {
		t.Errorf("%d series, want %d", seen, 2*(int(numProtocols)+1))
	}
}

// TestNilMetrics: recording on nil Metrics is a no-op.
func TestNilMetrics(t *testing.T) {
	var m *Metrics
	m.observe(TLS, time.Millisecond)
	m.failed(time.Millisecond)
}
