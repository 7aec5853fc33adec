package plugin

import (
	"os"
	"runtime"
	"runtime/debug"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"
)

// Main serves the CNI verbs the runtime asks for in CNI_COMMAND, with rules
// (nil in weir-cni: see Funcs), and exits.
func Main(rules Rules, about string) {
	// weir-cni does one thing at a time and lives for milliseconds. With a
	// single P its goroutines (the HTTP client's, netlink's) hand over on
	// one thread instead of waking and spinning others, which on a busy
	// node costs scheduling delays: weir-addbench, with ADDs alternating
	// between GOMAXPROCS=1 and the default on a loaded 2-core machine,
	// measured medians of 9.2 vs 12.7 ms and 9.7 vs 15.5 ms. The call
	// itself costs 0.2-0.4 ms of CPU (it stops the world to resize), and
	// the trade still holds: 200 ADDs at load 30, 2026-11-30, plugin CPU
	// p50 4.9-5.0 ms with it against 4.5 without, wall p50 9.0-12.7 ms
	// with it against 16.1 without.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(1)
	}
	if os.Getenv("GOGC") == "" {
		// A CNI verb allocates a few MB and exits: a garbage collection
		// in it is pure cost (mark workers started and woken while the
		// runtime waits). The memory limit still collects should a verb
		// ever grow past it.
		debug.SetGCPercent(-1)
		debug.SetMemoryLimit(256 << 20)
	}
	skel.PluginMainFuncs(Funcs(rules), version.PluginSupports("1.0.0", "1.1.0"), about)
}
