package h2

import (
	"flag"
	"fmt"
	"os"
	"testing"
)

// testEngine is the engine the tests' proxies run when their Options name
// none. TestMain runs every test once per engine: the frame engine is the
// default, and the x/net one stays a working fallback.
var testEngine = EngineFrames

func TestMain(m *testing.M) {
	code := m.Run()
	if code != 0 || testing.Short() || fuzzing() || flagSet("test.bench") || flagSet("test.cpuprofile") {
		os.Exit(code)
	}
	testEngine = EngineXNet
	fmt.Println("h2: the same tests with Options.Engine", EngineXNet)
	os.Exit(m.Run())
}

// withEngine fills in the engine under test.
func withEngine(opt Options) Options {
	if opt.Engine == "" {
		opt.Engine = testEngine
	}
	return opt
}

// fuzzing: the binary runs a fuzz target (as the coordinator or a
// worker), which fuzzes the default engine only. Benchmarks name their
// engines themselves, and a profile would be overwritten by a second run.
func fuzzing() bool { return flagSet("test.fuzz") || flagSet("test.fuzzworker") }

func flagSet(name string) bool {
	f := flag.Lookup(name)
	return f != nil && f.Value.String() != "" && f.Value.String() != "false"
}
