package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"

	"github.com/weir-mesh/weir/agent/xds"
	"github.com/weir-mesh/weir/proxy/route"
)

// runClient runs weir's xDS client against addr until synced (prints
// "synced"), then, after "start" on stdin, prints "applied" for every
// routing published and, after "done", its figures as one JSON line.
func runClient(addr, mode string, n int) error {
	var (
		mu       sync.Mutex
		table    route.Table
		from     *xds.Update // the update table's snapshot was built from
		counting bool
		updates  int
		applyDur time.Duration
	)
	out := bufio.NewWriter(os.Stdout)
	say := func(s string) {
		out.WriteString(s + "\n")
		out.Flush()
	}
	cl, err := xds.New(xds.Options{
		Target: addr, Delta: mode == "delta", Node: &corev3.Node{Id: benchNode},
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Publish: func(u xds.Update) error {
			start := time.Now()
			snap, err := u.Snapshot(table.Load(), from)
			if err != nil {
				return err
			}
			table.Store(snap)
			from = &u
			mu.Lock()
			defer mu.Unlock()
			if counting {
				updates++
				applyDur += time.Since(start)
				say("applied")
			}
			return nil
		},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cpu0, start := cpuTime(), time.Now()
	go cl.Run(ctx)
	for {
		st := cl.Status()
		if st.Synced && st.Resources["endpoint"] == n && st.Resources["cluster"] == n {
			break
		}
		if time.Since(start) > 4*time.Minute {
			return fmt.Errorf("not synced after 4m: %+v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r := result{Mode: mode, SyncWallMs: ms(time.Since(start)), SyncCPUMs: ms(cpuTime() - cpu0)}
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	r.HeapMiB = float64(m.HeapInuse) / (1 << 20)
	r.RSSMiB = procStatus("VmRSS")
	say("synced")

	in := bufio.NewScanner(os.Stdin)
	var cpu1 time.Duration
	for in.Scan() {
		switch in.Text() {
		case "start":
			mu.Lock()
			counting, updates, applyDur = true, 0, 0
			cpu1 = cpuTime()
			mu.Unlock()
			say("started")
		case "done":
			mu.Lock()
			r.Updates = updates
			if updates > 0 {
				r.PushCPUMs = ms(cpuTime()-cpu1) / float64(updates)
				r.PushBuildMs = ms(applyDur) / float64(updates)
			}
			counting = false
			mu.Unlock()
			r.PeakRSSMiB = procStatus("VmHWM")
			if st := cl.Status(); st.NACKs != 0 {
				return fmt.Errorf("client NACKed: %s", st.LastError)
			}
			js, err := json.Marshal(r)
			if err != nil {
				return err
			}
			say(string(js))
			return nil
		}
	}
	return fmt.Errorf("stdin closed before done")
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// cpuTime is this process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procStatus reads a kB field of /proc/self/status, in MiB.
func procStatus(field string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}
