// Command weir-xdsbench measures what an xDS session with a large
// snapshot costs weir's client, state of the world against delta: a real
// go-control-plane server (snapshot cache, ADS) in one process serves N
// clusters with their endpoints; weir's client (agent/xds, publishing into
// route.Build as the agent does) runs in another, so each process's CPU
// and memory are its own. Per mode it reports the initial sync (wall time,
// client CPU, Go heap and RSS once synced) and then P pushes that each
// change one endpoint of one cluster (client CPU per applied update, and
// how many resources the server sent for them).
//
//	go run ./bench/cmd/weir-xdsbench                     # 10k clusters, 20 pushes
//	go run ./bench/cmd/weir-xdsbench -clusters 1000 -pushes 50
//
// No root and no network namespace: both ends are on 127.0.0.1.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"time"
)

func main() {
	role := flag.String("role", "", "internal: server or client (the parent starts both)")
	clusters := flag.Int("clusters", 10000, "clusters (each with one endpoint set of two endpoints) in the snapshot")
	pushes := flag.Int("pushes", 20, "pushes, each changing one endpoint of one cluster")
	interval := flag.Duration("interval", 250*time.Millisecond, "pause between two pushes")
	modes := flag.String("modes", "sotw,delta", "xDS variants to measure, comma-separated")
	mode := flag.String("mode", "", "internal: the client's variant")
	addr := flag.String("addr", "", "internal: the server's address, for the client")
	flag.Parse()
	if *clusters < 1 || *pushes < 1 || *interval <= 0 {
		fmt.Fprintln(os.Stderr, "weir-xdsbench: -clusters, -pushes and -interval must be positive")
		os.Exit(2)
	}
	var err error
	switch *role {
	case "server":
		err = runServer(*clusters)
	case "client":
		err = runClient(*addr, *mode, *clusters)
	case "":
		err = runParent(strings.Split(*modes, ","), *clusters, *pushes, *interval)
	default:
		err = fmt.Errorf("unknown -role %q", *role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weir-xdsbench: %v\n", err)
		os.Exit(1)
	}
}

// child is a running role of this binary, talked to over stdin/stdout.
type child struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

func startChild(args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own binary: %w", err)
	}
	cmd := exec.Command(self, args...)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %v: %w", args, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	return &child{cmd: cmd, in: in, out: sc}, nil
}

// line reads the child's next stdout line, bounded in time.
func (c *child) line(timeout time.Duration) (string, error) {
	got := make(chan bool, 1)
	go func() { got <- c.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			return "", fmt.Errorf("%s exited early: %v", c.cmd.Args[1:3], c.out.Err())
		}
		return c.out.Text(), nil
	case <-time.After(timeout):
		return "", fmt.Errorf("%s: nothing on stdout for %v", c.cmd.Args[1:3], timeout)
	}
}

func (c *child) stop() {
	c.in.Close()
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
}

// result is what a client reports, as one JSON line.
type result struct {
	Mode          string  `json:"mode"`
	SyncWallMs    float64 `json:"syncWallMs"`
	SyncCPUMs     float64 `json:"syncCpuMs"`
	HeapMiB       float64 `json:"heapMiB"`
	RSSMiB        float64 `json:"rssMiB"`
	PeakRSSMiB    float64 `json:"peakRssMiB"`
	Updates       int     `json:"updates"`
	PushCPUMs     float64 `json:"pushCpuMs"`   // per applied update
	PushBuildMs   float64 `json:"pushBuildMs"` // snapshot build wall time per update (Update.Snapshot)
	ServerSent    int     `json:"serverSentResources"`
	ServerPushes  int     `json:"serverPushes"`
	SentPerUpdate float64 `json:"sentPerUpdate"`
}

func runParent(modes []string, clusters, pushes int, interval time.Duration) error {
	var results []result
	for _, mode := range modes {
		if mode != "sotw" && mode != "delta" {
			return fmt.Errorf("-modes: %q is not sotw or delta", mode)
		}
		r, err := measure(mode, clusters, pushes, interval)
		if err != nil {
			return fmt.Errorf("%s: %w", mode, err)
		}
		results = append(results, r)
	}
	fmt.Printf("xDS session with %d clusters (EDS, 2 endpoints each): weir's client, its own process; go-control-plane server in another\n\n", clusters)
	fmt.Printf("%-6s %10s %10s %9s %9s %9s   %8s %12s %12s %14s\n", "mode", "sync wall", "sync CPU", "heap", "RSS", "peak RSS", "updates", "CPU/update", "build/upd", "sent/update")
	for _, r := range results {
		fmt.Printf("%-6s %8.0fms %8.0fms %7.1fMiB %7.1fMiB %7.1fMiB   %8d %10.2fms %10.2fms %14.0f\n", r.Mode, r.SyncWallMs, r.SyncCPUMs,
			r.HeapMiB, r.RSSMiB, r.PeakRSSMiB, r.Updates, r.PushCPUMs, r.PushBuildMs, r.SentPerUpdate)
	}
	if len(results) == 2 && results[1].PushCPUMs > 0 && results[1].SyncCPUMs > 0 {
		fmt.Printf("\n%s/%s: sync CPU %.2fx, heap %.2fx, CPU per update %.1fx, resources sent per update %.0fx\n",
			results[0].Mode, results[1].Mode, results[0].SyncCPUMs/results[1].SyncCPUMs, results[0].HeapMiB/results[1].HeapMiB,
			results[0].PushCPUMs/results[1].PushCPUMs, results[0].SentPerUpdate/max(results[1].SentPerUpdate, 1))
	}
	fmt.Println("\nCPU: the client process's user+system time (getrusage); heap: Go heap in use after a GC; build/upd: wall time per update of the route snapshot build (an endpoint push: route.Snapshot.WithEndpoints); updates: routing published after a push.")
	return nil
}

// measure runs one server and one client: sync, then pushes one at a time
// (the next once the client applied the last, or after 10 s).
func measure(mode string, clusters, pushes int, interval time.Duration) (result, error) {
	n := fmt.Sprint(clusters)
	srv, err := startChild("-role", "server", "-clusters", n)
	if err != nil {
		return result{}, err
	}
	defer srv.stop()
	addr, err := srv.line(2 * time.Minute)
	if err != nil {
		return result{}, err
	}
	cl, err := startChild("-role", "client", "-mode", mode, "-addr", addr, "-clusters", n)
	if err != nil {
		return result{}, err
	}
	defer cl.stop()
	if l, err := cl.line(5 * time.Minute); err != nil || l != "synced" {
		return result{}, fmt.Errorf("client sync: %q %v", l, err)
	}
	fmt.Fprintf(os.Stderr, "weir-xdsbench: %s: synced, pushing %d changes\n", mode, pushes)
	fmt.Fprintln(srv.in, "reset")
	if l, err := srv.line(time.Minute); err != nil || l != "ok" {
		return result{}, fmt.Errorf("server reset: %q %v", l, err)
	}
	fmt.Fprintln(cl.in, "start")
	if l, err := cl.line(time.Minute); err != nil || l != "started" {
		return result{}, fmt.Errorf("client start: %q %v", l, err)
	}
	for i := 0; i < pushes; i++ {
		fmt.Fprintln(srv.in, "push")
		if l, err := srv.line(time.Minute); err != nil || l != "ok" {
			return result{}, fmt.Errorf("server push: %q %v", l, err)
		}
		// The client says when it applied the change.
		if l, err := cl.line(10 * time.Second); err != nil || l != "applied" {
			return result{}, fmt.Errorf("push %d not applied: %q %v", i, l, err)
		}
		time.Sleep(interval)
	}
	fmt.Fprintln(srv.in, "stats")
	sent, err := srv.line(time.Minute)
	if err != nil {
		return result{}, err
	}
	fmt.Fprintln(cl.in, "done")
	js, err := cl.line(time.Minute)
	if err != nil {
		return result{}, err
	}
	var r result
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return result{}, fmt.Errorf("client result %q: %w", js, err)
	}
	fmt.Sscan(sent, &r.ServerSent)
	r.ServerPushes = pushes
	if r.Updates > 0 {
		r.SentPerUpdate = float64(r.ServerSent) / float64(r.Updates)
	}
	return r, nil
}
