// Package accesslogtest captures access log lines in tests.
package accesslogtest

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"sync"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

// Sink collects the JSON lines of an access log.
type Sink struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write implements io.Writer for the slog handler.
func (s *Sink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

// New returns an access log writing to a new sink.
func New(sampleRate float64) (*l7.AccessLog, *Sink) {
	s := &Sink{}
	return l7.NewAccessLog(slog.New(slog.NewJSONHandler(s, nil)), sampleRate), s
}

// Lines decodes the lines logged so far.
func (s *Sink) Lines() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	for _, l := range bytes.Split(bytes.TrimSpace(s.buf.Bytes()), []byte("\n")) {
		if len(l) == 0 {
			continue
		}
		m := map[string]any{}
		if err := json.Unmarshal(l, &m); err != nil {
			panic(err)
		}
		out = append(out, m)
	}
	return out
}

// Check compares a line's fields with want (numbers as float64, as JSON
// decodes them) and reports what differs; time, start and duration_ms are
// only checked to be present, and a field in want with value nil must be
// absent.
func Check(line, want map[string]any) []string {
	var diffs []string
	for _, k := range []string{"time", "start", "duration_ms"} {
		if _, ok := line[k]; !ok {
			diffs = append(diffs, k+" missing")
		}
	}
	for k, v := range want {
		got, ok := line[k]
		if v == nil {
			if ok {
				diffs = append(diffs, k+" present")
			}
			continue
		}
		if !ok || got != v {
			b, _ := json.Marshal(got)
			diffs = append(diffs, k+": got "+string(b)+" want "+mustJSON(v))
		}
	}
	known := map[string]bool{"time": true, "level": true, "msg": true, "start": true, "duration_ms": true}
	for k := range line {
		if _, ok := want[k]; !ok && !known[k] {
			diffs = append(diffs, k+" unexpected")
		}
	}
	return diffs
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}
