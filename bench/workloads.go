package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
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
	// MachineCPU is the whole machine's busy CPU during the run, in seconds
	// (user, nice, system, irq, softirq and steal of /proc/stat's cpu line,
	// every CPU): it includes the kernel's work for the path, which
	// per-process CPU misses when a redirect moves it into other contexts,
	// and also whatever else the machine ran meanwhile.
	MachineCPU float64 `json:"machineCpuSeconds"`
	// ProxyRSS is the sum of the proxy processes' peak RSS during the run.
	ProxyRSS int64 `json:"proxyPeakRssBytes"`
	// Errors are failed requests, socket errors and non-2xx answers.
	Errors int64 `json:"errors"`
	// Note keeps the first error text, if any.
	Note string `json:"note,omitempty"`
	// WeirL7Requests is how much weir_http_requests_total rose during the
	// run, for weir paths: the requests weir's L7 half proxied (0 for a
	// connection relayed at L4).
	WeirL7Requests float64 `json:"weirL7Requests,omitempty"`
	// WeirConnections is how much the agent's outbound connection counter
	// rose during the run, for weir paths: 0 over KernelPath proves no
	// connection passed the agent.
	WeirConnections float64 `json:"weirConnections,omitempty"`
	// Round is the round the sample was taken in, from 1: a target's
	// ratio is also taken round by round, between samples that shared the
	// machine's conditions of that moment.
	Round int `json:"round,omitempty"`
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
	// pinned runs the client, the path's proxy processes and the servers
	// on one CPU (pin.go), so latency measures the path's work, not
	// wake-ups across CPUs or the scheduler's placement.
	pinned bool
	run    func(w *world, p *path, d time.Duration) (Sample, error)
}

// wrkConnections is wrk's connection count for keep-alive HTTP; the
// connection-per-request load uses fewer so the proxies, not the accept
// queue, are what is measured.
const (
	wrkThreads         = 2
	wrkConnections     = 50
	wrkCloseConns      = 16
	h2Threads          = 2
	h2Clients          = 16
	h2Streams          = 10
	pingpongConns      = 16
	pingpongSize       = 128
	pinnedSize         = 64
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
	{
		Name:     "pingpong-pinned",
		Desc:     fmt.Sprintf("%d-byte ping-pong on one connection, one message in flight; client, proxy and server pinned to one CPU", pinnedSize),
		backend:  backendEcho,
		rateUnit: "rt/s", cpuUnit: "µs/rt", cpuScale: 1e6,
		pinned: true,
		run:    runPinned(false),
	},
	{
		Name:     "connect-rt",
		Desc:     fmt.Sprintf("a new connection, one %d-byte round trip and close, one at a time, timed from the dial; client, proxy and server pinned to one CPU", pinnedSize),
		backend:  backendEcho,
		rateUnit: "conn/s", cpuUnit: "µs/conn", cpuScale: 1e6,
		pinned: true,
		run:    runPinned(true),
	},
	{
		Name: "h2-keepalive",
		Desc: fmt.Sprintf("HTTP/2 with prior knowledge (h2c), h2load -t%d -c%d -m%d (%d connections, %d streams in flight each), 13-byte answers",
			h2Threads, h2Clients, h2Streams, h2Clients, h2Streams),
		backend:  backendH2C,
		rateUnit: "req/s", cpuUnit: "µs/req", cpuScale: 1e6,
		tool: "h2load",
		run:  runH2load,
	},
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

// runH2load drives h2c GETs with h2load for d (timing-based, -D) and takes
// the latency percentiles from its per-request log.
func runH2load(w *world, p *path, d time.Duration) (Sample, error) {
	f, err := os.CreateTemp(w.scratch, "h2load-*.log")
	if err != nil {
		return Sample{}, err
	}
	f.Close()
	defer os.Remove(f.Name())
	out, err := runCommand(p.client, d, "h2load", "-t", strconv.Itoa(h2Threads), "-c", strconv.Itoa(h2Clients),
		"-m", strconv.Itoa(h2Streams), "-D", strconv.Itoa(secondsArg(d)),
		// A connection silent for 5 s is given up, so a stalled proxy
		// ends the run with errors rather than at the command's deadline.
		"-N", "5s", "--log-file", f.Name(), "http://"+p.addr[backendH2C]+"/")
	if err != nil {
		return Sample{}, err
	}
	log, err := os.ReadFile(f.Name())
	if err != nil {
		return Sample{}, err
	}
	return parseH2load(out, log)
}

var (
	h2Finished = regexp.MustCompile(`(?m)^finished in ([\d.]+)(\w+), ([\d.]+) req/s`)
	h2Requests = regexp.MustCompile(`(?m)^requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2Status   = regexp.MustCompile(`(?m)^status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
)

// parseH2load reads h2load's summary (rate, requests done, failures and
// status classes) and its --log-file (tab-separated start time, status and
// µs until the end of the response, one line per finished request) for
// the latency percentiles.
func parseH2load(out, log []byte) (Sample, error) {
	var s Sample
	fin, req := h2Finished.FindSubmatch(out), h2Requests.FindSubmatch(out)
	if fin == nil || req == nil {
		return s, fmt.Errorf("h2load printed no totals:\n%s", out)
	}
	s.Rate, _ = strconv.ParseFloat(string(fin[3]), 64)
	s.Units, _ = strconv.ParseFloat(string(req[3]), 64)
	if s.Units == 0 {
		return s, fmt.Errorf("h2load finished no request:\n%s", out)
	}
	n := func(b []byte) int64 { v, _ := strconv.ParseInt(string(b), 10, 64); return v }
	s.Errors = n(req[5]) + n(req[6]) + n(req[7])
	if s.Errors > 0 {
		s.Note = string(req[0])
	}
	if st := h2Status.FindSubmatch(out); st != nil {
		if bad := n(st[2]) + n(st[3]) + n(st[4]); bad > 0 {
			s.Errors += bad
			s.Note = strings.TrimPrefix(s.Note+"; "+string(st[0]), "; ")
		}
	}
	var lat []time.Duration
	for _, line := range bytes.Split(log, []byte("\n")) {
		f := bytes.Split(line, []byte("\t"))
		if len(f) < 3 {
			continue
		}
		us, err := strconv.ParseInt(string(bytes.TrimSpace(f[2])), 10, 64)
		if err != nil || us < 0 {
			return s, fmt.Errorf("h2load log line %q: bad duration", line)
		}
		lat = append(lat, time.Duration(us)*time.Microsecond)
	}
	if len(lat) == 0 {
		return s, fmt.Errorf("h2load logged no request latency:\n%s", out)
	}
	slices.Sort(lat)
	s.P50us = float64(percentile(lat, 0.50)) / float64(time.Microsecond)
	s.P99us = float64(percentile(lat, 0.99)) / float64(time.Microsecond)
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
	return pingpongClient(p, d, nil, "-conns", strconv.Itoa(pingpongConns), "-size", strconv.Itoa(pingpongSize))
}

// runPinned is the pinned ping-pong (newConn false) or connect and round
// trip workload: one connection at a time, the client pinned by taskset
// to the CPU runCell pinned the path to.
func runPinned(newConn bool) func(w *world, p *path, d time.Duration) (Sample, error) {
	return func(w *world, p *path, d time.Duration) (Sample, error) {
		args := []string{"-conns", "1", "-size", strconv.Itoa(pinnedSize)}
		if newConn {
			args = append(args, "-new")
		}
		return pingpongClient(p, d, []string{"taskset", "-c", strconv.Itoa(pinCPU())}, args...)
	}
}

// pingpongClient runs the ping-pong helper from the path's client pod,
// prefixed by wrap (a command that runs the rest), and reads its result.
func pingpongClient(p *path, d time.Duration, wrap []string, args ...string) (Sample, error) {
	exe, hargs, err := helperCommand("pingpong", append([]string{"-addr", p.addr[backendEcho], "-duration", d.String()}, args...)...)
	if err != nil {
		return Sample{}, err
	}
	if len(wrap) > 0 {
		hargs = append(append(wrap[1:], exe), hargs...)
		exe = wrap[0]
	}
	out, err := runCommand(p.client, d, exe, hargs...)
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
