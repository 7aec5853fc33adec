package plugin

import (
	"fmt"
	"os"
	"runtime/debug"
)

// Main serves the CNI verbs the runtime asks for in CNI_COMMAND, with rules
// (nil in weir-cni: see funcs), and exits.
func Main(rules Rules, about string) {
	// No runtime.GOMAXPROCS(1) here any more: it stops the world to
	// resize, which the runtime's idle threads must answer on a busy
	// node, and it no longer buys anything: the plugin starts no
	// goroutine and waits for the agent in a blocking system call
	// (conn.go), not in the network poller. A profile of 150 ADDs and
	// DELs (perf record, 2026-11-30) put 3.6 % of weir-cni's samples in
	// that call.
	if os.Getenv("GOGC") == "" {
		// A CNI verb allocates a few MB and exits: a garbage collection
		// in it is pure cost (mark workers started and woken while the
		// runtime waits). The memory limit still collects should a verb
		// ever grow past it.
		debug.SetGCPercent(-1)
		debug.SetMemoryLimit(256 << 20)
	}
	if e := dispatch(env{getenv: os.Getenv, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}, funcs(rules), about); e != nil {
		if err := e.printTo(os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "weir-cni: write the error JSON to stdout: %v\n", err)
		}
		os.Exit(1)
	}
}
