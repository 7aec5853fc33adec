package redis_test

import (
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
)

// TestRedisBenchmark runs redis-benchmark with pipelining (-P 16) straight
// to a redis-server and through the framework, and logs both; it runs only
// with WEIR_RPC_BENCH=1 (it loads the machine for a few seconds).
func TestRedisBenchmark(t *testing.T) {
	if os.Getenv("WEIR_RPC_BENCH") != "1" {
		t.Skip("set WEIR_RPC_BENCH=1 to run")
	}
	a := startRedis(t)
	addr, _, _ := proxy(t, a)
	run := func(name, target string) {
		host, port, _ := net.SplitHostPort(target)
		out, err := exec.Command("redis-benchmark", "-h", host, "-p", port, "-c", "10", "-n", strconv.Itoa(200000),
			"-P", "16", "-t", "set,get", "-q").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		t.Logf("%s:\n%s", name, out)
	}
	run("direct", a.String())
	run("through rpc", addr)
}
