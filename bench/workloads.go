package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Sample is what one run of one workload over one path measured.
type Sample struct {
	// Rate is requests/s, round trips/s, or Gbit/s (see the workload's unit).
	Rate float64 `json:"rate"`
	// Units is how much work was done: requests, round trips, or bytes.
	Units float64 `json:"units"`
	// P50us and P99us are latency percentiles in µs (0 when not measured).
	P50us float64 `json:"p50us,omitempty"`
	P99us float64 `json:"p99us,omitempty"`
	// ProxyCPU is the proxy processes' user+system CPU during the run, in
	// seconds (utime+stime deltas of /proc/PID/stat).
	ProxyCPU float64 `json:"proxyCpuSeconds"`
	// ProxyRSS is the sum of the proxy processes' peak RSS during the run.
	ProxyRSS int64 `json:"proxyPeakRssBytes"`
	// Errors are failed requests, socket errors and non-2xx answers.
	Errors int64 `json:"errors"`
	// Note keeps the first error text, if any.
	Note string `json:"note,omitempty"`
}

// workload is one kind of load. run drives it from the path's client pod
// for d and returns rate, units, latency and errors; the caller adds the
// proxy's accounting.
type workload struct {
	Name string
	// Desc says what the load is, for the table.
	Desc    string
	backend backend
	// rateUnit names Rate; cpuUnit and cpuScale turn ProxyCPU/Units into the
	// CPU column (µs per request, ms per GB).
	rateUnit, cpuUnit string
	cpuScale          float64
	// tool is a program the workload needs on PATH.
	tool string
	run  func(w *world, p *path, d time.Duration) (Sample, error)
}

// wrkConnections is wrk's connection count for keep-alive HTTP; the
// connection-per-request load uses fewer so the proxies, not the accept
// queue, are what is measured.
const (
	wrkThreads         = 2
	wrkConnections     = 50
	wrkCloseConns      = 16
	pingpongConns      = 16
	pingpongSize       = 128
	commandGrace       = 30 * time.Second
	maxWorkloadRuntime = 2 * time.Minute
)

var workloads = []workload{
	{
		Name:     "http-keepalive",
		Desc:     fmt.Sprintf("HTTP/1.1 keep-alive, wrk -t%d -c%d, 13-byte answers", wrkThreads, wrkConnections),
		backend:  backendHTTP,
		rateUnit: "req/s", cpuUnit: "µs/req", cpuScale: 1e6,
		tool: "wrk",
		run:  runWrk(wrkConnections, false),
	},
	{
		Name:     "http-close",
		Desc:     fmt.Sprintf("a new connection per request, wrk -t%d -c%d -H 'Connection: close'", wrkThreads, wrkCloseConns),
		backend:  backendHTTP,
		rateUnit: "req/s", cpuUnit: "µs/req", cpuScale: 1e6,
		tool: "wrk",
		run:  runWrk(wrkCloseConns, true),
	},
	{
		Name:     "bulk",
		Desc:     "single-stream bulk throughput, iperf3 -P1 client→server",
		backend:  backendIPerf,
		rateUnit: "Gbit/s", cpuUnit: "ms/GB", cpuScale: 1e3 * 1e9,
		tool: "iperf3",
		run:  runIPerf,
	},
	{
		Name:     "pingpong",
		Desc:     fmt.Sprintf("%d-byte ping-pong, %d connections, one message in flight each", pingpongSize, pingpongConns),
		backend:  backendEcho,
		rateUnit: "rt/s", cpuUnit: "µs/rt", cpuScale: 1e6,
		run: runPingpong,
	},
	// HTTP/2 hook: once weir has L7, add an "h2" workload here driving
	// h2load (Debian's nghttp2-client, installed by hack/deps.sh) against an
	// h2c server backend, e.g. run: runH2load, tool: "h2load".
}

// runCommand runs a client program in the pod, bounded by d plus a grace
// period, and returns its stdout (stderr is added to errors).
func runCommand(p *testworld.Pod, d time.Duration, name string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), min(d+commandGrace, maxWorkloadRuntime))
	defer cancel()
	cmd := p.Command(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("%s in %s: %w: %s", name, p.Name, err, strings.TrimSpace(stderr.String()+"\n"+stdout.String()))
	}
	return stdout.Bytes(), nil
}

// secondsArg renders a duration for tools that take whole seconds.
func secondsArg(d time.Duration) int { return max(1, int((d+time.Second/2)/time.Second)) }

func runWrk(conns int, closeEach bool) func(w *world, p *path, d time.Duration) (Sample, error) {
	return func(w *world, p *path, d time.Duration) (Sample, error) {
		args := []string{"-t", strconv.Itoa(wrkThreads), "-c", strconv.Itoa(conns),
			"-d", fmt.Sprintf("%ds", secondsArg(d)), "--latency", "--timeout", "2s"}
		if closeEach {
			args = append(args, "-H", "Connection: close")
		}
		args = append(args, "http://"+p.addr[backendHTTP]+"/")
		out, err := runCommand(p.client, d, "wrk", args...)
		if err != nil {
			return Sample{}, err
		}
		return parseWrk(out)
	}
}

var (
	wrkRequests = regexp.MustCompile(`(?m)^\s*(\d+) requests in ([\d.]+)(\w+),`)
	wrkRate     = regexp.MustCompile(`(?m)^Requests/sec:\s*([\d.]+)`)
	wrkPct      = regexp.MustCompile(`(?m)^\s*(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s|m)\s*$`)
	wrkSocket   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx   = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
)

// parseWrk reads wrk --latency's report.
func parseWrk(out []byte) (Sample, error) {
	var s Sample
	m := wrkRequests.FindSubmatch(out)
	r := wrkRate.FindSubmatch(out)
	if m == nil || r == nil {
		return s, fmt.Errorf("wrk printed no totals:\n%s", out)
	}
	s.Units, _ = strconv.ParseFloat(string(m[1]), 64)
	s.Rate, _ = strconv.ParseFloat(string(r[1]), 64)
	for _, pm := range wrkPct.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(pm[2]), 64)
		us := v * map[string]float64{"us": 1, "ms": 1e3, "s": 1e6, "m": 60e6}[string(pm[3])]
		if string(pm[1]) == "50" {
			s.P50us = us
		} else {
			s.P99us = us
		}
	}
	if s.P50us == 0 || s.P99us == 0 {
		return s, fmt.Errorf("wrk printed no latency distribution:\n%s", out)
	}
	if se := wrkSocket.FindSubmatch(out); se != nil {
		for _, g := range se[1:] {
			n, _ := strconv.ParseInt(string(g), 10, 64)
			s.Errors += n
		}
		s.Note = string(se[0])
	}
	if nx := wrkNon2xx.FindSubmatch(out); nx != nil {
		n, _ := strconv.ParseInt(string(nx[1]), 10, 64)
		s.Errors += n
		s.Note = strings.TrimSpace(s.Note + "; " + string(nx[0]))
	}
	return s, nil
}

func runIPerf(w *world, p *path, d time.Duration) (Sample, error) {
	host, port, _ := strings.Cut(p.addr[backendIPerf], ":")
	out, err := runCommand(p.client, d, "iperf3", "-c", host, "-p", port, "-P", "1",
		"-t", strconv.Itoa(secondsArg(d)), "-J", "--connect-timeout", "3000")
	if err != nil && len(out) == 0 {
		return Sample{}, err
	}
	return parseIPerf(out)
}

// parseIPerf reads iperf3 -J's summary of what the server received.
func parseIPerf(out []byte) (Sample, error) {
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return Sample{}, fmt.Errorf("parse iperf3 -J output: %w\n%s", err, out)
	}
	if r.Error != "" {
		return Sample{}, fmt.Errorf("iperf3: %s", r.Error)
	}
	if r.End.SumReceived.Bytes == 0 {
		return Sample{}, fmt.Errorf("iperf3 moved no bytes:\n%s", out)
	}
	return Sample{Rate: r.End.SumReceived.BitsPerSecond / 1e9, Units: r.End.SumReceived.Bytes}, nil
}

func runPingpong(w *world, p *path, d time.Duration) (Sample, error) {
	exe, args, err := helperCommand("pingpong", "-addr", p.addr[backendEcho],
		"-conns", strconv.Itoa(pingpongConns), "-size", strconv.Itoa(pingpongSize), "-duration", d.String())
	if err != nil {
		return Sample{}, err
	}
	out, err := runCommand(p.client, d, exe, args...)
	if err != nil {
		return Sample{}, err
	}
	var r pingpongResult
	if err := json.Unmarshal(out, &r); err != nil {
		return Sample{}, fmt.Errorf("parse ping-pong result: %w\n%s", err, out)
	}
	if r.RoundTrips == 0 {
		return Sample{}, fmt.Errorf("ping-pong made no round trip: %s", r.FirstError)
	}
	return Sample{Rate: float64(r.RoundTrips) / r.Seconds, Units: float64(r.RoundTrips),
		P50us: r.P50us, P99us: r.P99us, Errors: r.Errors, Note: r.FirstError}, nil
}
