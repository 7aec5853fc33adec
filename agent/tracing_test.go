package agent

import (
	"strings"
	"testing"
	"time"
)

func TestTracingConfig(t *testing.T) {
	c, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Tracing != (Tracing{SampleRatio: 0.01, BatchTimeout: Duration(5 * time.Second)}) {
		t.Errorf("defaults %+v: want off, 1 %% of new traces, 5s batches", c.Tracing)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"tracing:\n  enabled: true\n", `tracing.endpoint: want host:port of an OTLP/gRPC collector, got ""`},
		{"tracing:\n  enabled: true\n  endpoint: collector\n", `tracing.endpoint: want host:port`},
		{"tracing:\n  enabled: true\n  endpoint: collector:0\n", `tracing.endpoint: port "0" is not 1-65535`},
		{"tracing:\n  sampleRatio: 2\n", "tracing.sampleRatio: want 0 up to 1, got 2"},
		{"tracing:\n  batchTimeout: 0s\n", "tracing.batchTimeout: want more than 0 up to 1m, got 0s"},
		{"tracing:\n  endpoints: x:1\n", `unknown field "endpoints"`},
	} {
		if _, err := ParseConfig([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}
	c, err = ParseConfig([]byte("tracing:\n  enabled: true\n  endpoint: otel-collector.observability.test:4317\n  sampleRatio: 1\n"))
	if err != nil || !c.Tracing.Enabled || c.Tracing.SampleRatio != 1 {
		t.Fatalf("valid tracing config: %+v, %v", c.Tracing, err)
	}
}
