package bench

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// Session lets the test world run outside `go test` (the weir-bench
// program): Fatalf stops the run by panicking with errStop, which Guard
// recovers, and Close runs the cleanups in reverse order.
type Session struct {
	log      io.Writer
	cleanups []func()
	failed   bool
}

var errStop = errors.New("weir-bench: stopped")

// NewSession returns a session that prints log and error lines to log.
func NewSession(log io.Writer) *Session { return &Session{log: log} }

// Helper does nothing; it is part of testworld.T.
func (s *Session) Helper() {}

// Logf prints a progress line.
func (s *Session) Logf(format string, args ...any) { fmt.Fprintf(s.log, "    "+format+"\n", args...) }

// Errorf records a failure and goes on.
func (s *Session) Errorf(format string, args ...any) {
	s.failed = true
	fmt.Fprintf(s.log, "weir-bench: "+format+"\n", args...)
}

// Fatalf records a failure and stops the run.
func (s *Session) Fatalf(format string, args ...any) { s.Errorf(format, args...); panic(errStop) }

// Skipf stops the run: a missing prerequisite is a failure for the tool.
func (s *Session) Skipf(format string, args ...any) { s.Fatalf(format, args...) }

// Fatal is Fatalf with Print-style arguments.
func (s *Session) Fatal(args ...any) { s.Fatalf("%s", fmt.Sprint(args...)) }

// Cleanup registers f to run at Close.
func (s *Session) Cleanup(f func()) { s.cleanups = append(s.cleanups, f) }

// Failed reports whether anything failed.
func (s *Session) Failed() bool { return s.failed }

// TempDir makes a directory removed at Close.
func (s *Session) TempDir() string {
	dir, err := os.MkdirTemp("", "weir-bench-")
	if err != nil {
		s.Fatal(err)
	}
	s.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// Close runs the cleanups, last registered first: the test world is torn
// down.
func (s *Session) Close() {
	for i := len(s.cleanups) - 1; i >= 0; i-- {
		s.cleanups[i]()
	}
	s.cleanups = nil
}

// Guard runs f and turns a Fatalf inside it into a false return.
func (s *Session) Guard(f func()) (ok bool) {
	defer func() {
		if r := recover(); r != nil {
			if r != errStop {
				panic(r)
			}
			ok = false
		}
	}()
	f()
	return !s.failed
}
