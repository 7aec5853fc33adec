package http

import (
	"regexp"
	"testing"
)

var traceIDShape = regexp.MustCompile(`^[0-9a-f]{32}$`)

// FuzzTraceID: whatever a client sends as traceparent, TraceID never
// panics and returns either nothing or 32 lower-case hex digits taken from
// the value, never all zeros.
func FuzzTraceID(f *testing.F) {
	for _, s := range []string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
		"", "00-", "garbage",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		id := TraceID(b)
		if id == "" {
			return
		}
		if !traceIDShape.MatchString(id) || id == "00000000000000000000000000000000" || string(b[3:35]) != id {
			t.Fatalf("TraceID(%q) = %q", b, id)
		}
	})
}
