package redis_test

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/rpc"
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

// BenchmarkServePipelined is the agent's work per Redis command at L7:
// clients pipeline SETs and GETs (16 at a time, as redis-benchmark -P 16)
// through Serve, with the request metrics on and the cluster's default
// balancer, to a real redis-server. One op is one command; allocs/op is
// the framework's and codec's garbage per command (the clients allocate
// nothing).
func BenchmarkServePipelined(b *testing.B) {
	const (
		clients  = 4
		pipeline = 16
	)
	a := startRedis(b)
	m := rpc.NewMetrics(prometheus.NewRegistry())
	addr, _, _ := proxyUpstream(b, rpc.PoolOptions{}, "", rpc.Upstream{Metrics: m, Service: "redis"}, a)
	var batch, want []byte
	for i := range pipeline {
		if i%2 == 0 {
			batch = append(batch, command("SET", "key:"+strconv.Itoa(i), "xxx")...)
			want = append(want, "+OK\r\n"...)
		} else {
			batch = append(batch, command("GET", "key:"+strconv.Itoa(i-1))...)
			want = append(want, "$3\r\nxxx\r\n"...)
		}
	}
	conns := make([]net.Conn, clients)
	for i := range conns {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close() })
		conns[i] = c
	}
	// Each client runs its share of the batches; the first round fills
	// the keys so every GET finds its value.
	run := func(batches int) {
		var wg sync.WaitGroup
		errs := make(chan error, clients)
		for i, c := range conns {
			n := batches / clients
			if i < batches%clients {
				n++
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				buf := make([]byte, len(want))
				for range n {
					if _, err := c.Write(batch); err != nil {
						errs <- err
						return
					}
					if _, err := io.ReadFull(c, buf); err != nil {
						errs <- err
						return
					}
					if !bytes.Equal(buf, want) {
						errs <- fmt.Errorf("replies %q, want %q", buf, want)
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
	}
	run(clients)
	b.ReportAllocs()
	user, sys := processCPU(b)
	b.ResetTimer()
	run((b.N + pipeline - 1) / pipeline)
	b.StopTimer()
	// The process's CPU time (proxy and clients; redis-server is another
	// process) per command: on a loaded machine a steadier figure than
	// the wall clock's ns/op, which waits on the server and the scheduler.
	// user-ns/op is its user-space part alone (the proxy's code, the Go
	// runtime, and the clients' few instructions), without the kernel's
	// socket work.
	user2, sys2 := processCPU(b)
	b.ReportMetric(float64(user2+sys2-user-sys)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(user2-user)/float64(b.N), "user-ns/op")
}

// processCPU is the CPU time (user, system) the test process has used.
func processCPU(b *testing.B) (user, sys time.Duration) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano()), time.Duration(ru.Stime.Nano())
}
