package bench

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// TestMain lets the test binary act as the bench's helper programs (echo
// server, ping-pong client, Go relay), which the bench starts inside pods by
// re-executing its own binary.
func TestMain(m *testing.M) {
	if code, ok := HelperMain(os.Args[1:]); ok {
		os.Exit(code)
	}
	code := m.Run()
	testworld.RemoveBuilds()
	os.Exit(code)
}

type logWriter struct{ t *testing.T }

func (l logWriter) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// TestQuickBench runs the whole bench once with one-second cells so that a
// broken path, tool, parser or accounting fails CI. It asserts that every
// cell produced figures, not what they are: speed is for the bench itself.
func TestQuickBench(t *testing.T) {
	testworld.RequireRoot(t)
	testworld.RequireTool(t, "ip", "iptables", "sysctl", "nginx", "haproxy", "wrk", "h2load", "iperf3")
	rep, err := Run(t, Options{Quick: true, Rounds: 1, Duration: time.Second, Log: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	rep.WriteTable(&table)
	t.Log("\n" + table.String())

	if len(rep.Workloads) != len(workloads) {
		t.Fatalf("%d workloads ran, want %d", len(rep.Workloads), len(workloads))
	}
	for _, w := range rep.Workloads {
		for _, row := range w.Rows {
			if len(row.Failures) > 0 {
				t.Errorf("%s over %s failed: %s", w.Name, row.Path, strings.Join(row.Failures, "; "))
				continue
			}
			if len(row.Samples) != 1 || row.Rate <= 0 {
				t.Errorf("%s over %s: %d samples, rate %v", w.Name, row.Path, len(row.Samples), row.Rate)
			}
			if row.Kind != kindDirect && row.RSS <= 0 {
				t.Errorf("%s over %s: no peak RSS for the proxy", w.Name, row.Path)
			}
			if row.Path == KernelPath {
				// No proxy in the path: the agent takes no connection
				// and proxies no request (its CPU is near zero).
				if row.WeirConnections != 0 || row.WeirL7Requests != 0 {
					t.Errorf("%s over %s: the agent took %v connections and %v L7 requests", w.Name, row.Path, row.WeirConnections, row.WeirL7Requests)
				}
				continue
			}
			if (w.Name == "http-keepalive" || w.Name == "h2-keepalive") && row.Kind != kindDirect && row.CPU <= 0 {
				// Thousands of requests cost a proxy far more than one 10 ms
				// tick; zero means the wrong processes were accounted.
				t.Errorf("%s over %s: proxy used no CPU", w.Name, row.Path)
			}
			// HTTP over weir-<mode> is proxied by the L7 half, over
			// weir-<mode>-l4 it is not.
			if row.Kind == kindWeir && w.RateUnit == "req/s" && len(row.Samples) > 0 {
				l4 := strings.HasSuffix(row.Path, "-l4")
				if l4 && row.WeirL7Requests != 0 || !l4 && row.WeirL7Requests < row.Samples[0].Units/2 {
					t.Errorf("%s over %s: weir's L7 half counted %v requests of %v", w.Name, row.Path, row.WeirL7Requests, row.Samples[0].Units)
				}
			}
		}
	}
	for _, m := range WeirModes {
		if n := rep.AgentConnections["weir-"+m]; n < 1 {
			t.Errorf("weir-%s: the agent counted %v connections: the path did not go through weir", m, n)
		}
		for _, res := range []string{"http1", "http2"} {
			if rep.AgentSniff["weir-"+m][res] < 1 {
				t.Errorf("weir-%s: the sniffer found no %s connection: %v", m, res, rep.AgentSniff["weir-"+m])
			}
		}
	}
	md := rep.Markdown()
	for _, want := range []string{"## Results", "### http-keepalive", "### h2-keepalive", "| weir-redirect |", "| weir-redirect-l4 |", "| " + PolicyPath + " |", "## Targets"} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q", want)
		}
	}
	if err := rep.WriteJSON(t.TempDir() + "/r.json"); err != nil {
		t.Error(err)
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://10.96.0.10:80/
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   350.12us  200.00us   9.00ms   90.00%
    Req/Sec    70.01k     3.00k   80.00k    70.00%
  Latency Distribution
     50%  301.00us
     75%  400.00us
     90%  600.00us
     99%    1.50ms
  700123 requests in 5.00s, 100.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 4
Requests/sec: 140024.60
Transfer/sec:     20.00MB
`
	s, err := parseWrk([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	if s.Units != 700123 || s.Rate != 140024.60 || s.P50us != 301 || s.P99us != 1500 || s.Errors != 10 {
		t.Errorf("got %+v", s)
	}
	for _, bad := range []string{"", "Requests/sec: 1\n", "  10 requests in 1.00s, 1MB read\nRequests/sec: 10\n"} {
		if _, err := parseWrk([]byte(bad)); err == nil {
			t.Errorf("parseWrk(%q) accepted", bad)
		}
	}
}

func TestParseH2load(t *testing.T) {
	out := `starting benchmark...
Application protocol: h2c

finished in 1.00s, 42321.00 req/s, 3.27MB/s
requests: 42321 total, 42361 started, 42321 done, 42319 succeeded, 2 failed, 1 errored, 0 timeout
status codes: 42319 2xx, 0 3xx, 0 4xx, 2 5xx
traffic: 3.27MB (3428256) total, 2.02MB (2116100) headers (space savings 49.49%), 537.28KB (550173) data
                     min         max         mean         sd        +/- sd
time for request:       43us     24.21ms       903us      1.25ms    95.47%
`
	var log strings.Builder
	for i := 1; i <= 100; i++ {
		fmt.Fprintf(&log, "1795969776808987\t200\t%d\n", i*10)
	}
	s, err := parseH2load([]byte(out), []byte(log.String()))
	if err != nil {
		t.Fatal(err)
	}
	if s.Units != 42321 || s.Rate != 42321 || s.P50us != 500 || s.P99us != 990 || s.Errors != 5 {
		t.Errorf("got %+v", s)
	}
	for _, bad := range [][2]string{
		{"", ""},
		{out, ""}, // no latency logged
		{"finished in 1.00s, 0.00 req/s, 0B/s\nrequests: 0 total, 0 started, 0 done, 0 succeeded, 0 failed, 0 errored, 0 timeout\n", "1\t200\t5\n"},
		{out, "1\t200\tx\n"},
	} {
		if _, err := parseH2load([]byte(bad[0]), []byte(bad[1])); err == nil {
			t.Errorf("parseH2load(%q, %q) accepted", bad[0], bad[1])
		}
	}
}

func TestMetricsText(t *testing.T) {
	m := map[string]float64{
		`weir_sniff_total{result="http1"}`:                        5,
		`weir_sniff_total{result="http2"}`:                        2,
		`weir_sniff_total{result="timeout"}`:                      0,
		`weir_http_requests_total{code="2xx",protocol="http1"}`:   100,
		`weir_http_requests_total{code="5xx",protocol="http1"}`:   1,
		`weir_http_requests_total{code="2xx",protocol="http2"}`:   40,
		`weir_http_requests_total_other{code="2xx",protocol="x"}`: 9,
		`weir_connections_total{direction="outbound"}`:            3,
	}
	if got := sumSeries(m, "weir_http_requests_total"); got != 141 {
		t.Errorf("sum = %v", got)
	}
	if got := labelled(m, "weir_http_requests_total", "protocol"); got["http1"] != 101 || got["http2"] != 40 || len(got) != 2 {
		t.Errorf("by protocol = %v", got)
	}
	if got := labelled(m, "weir_sniff_total", "result"); got["http1"] != 5 || len(got) != 2 {
		t.Errorf("by result = %v", got)
	}
}

func TestParseIPerf(t *testing.T) {
	s, err := parseIPerf([]byte(`{"end":{"sum_received":{"bytes":5000000000,"bits_per_second":40000000000}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Rate != 40 || s.Units != 5e9 {
		t.Errorf("got %+v", s)
	}
	for _, bad := range []string{"", "{}", `{"error":"unable to connect"}`} {
		if _, err := parseIPerf([]byte(bad)); err == nil {
			t.Errorf("parseIPerf(%q) accepted", bad)
		}
	}
}

func TestParseProc(t *testing.T) {
	cpu, err := parseStatCPU([]byte("1234 (we ir) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 1000 200 18446744073709551615"))
	if err != nil {
		t.Fatal(err)
	}
	if cpu != 3250*time.Millisecond {
		t.Errorf("cpu = %v, want 3.25s", cpu)
	}
	user, sys, err := parseStatTimes([]byte("1234 (we ir) (x) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 9 0 100 1000 200 18446744073709551615"))
	if err != nil || user != 2500*time.Millisecond || sys != 750*time.Millisecond {
		t.Errorf("user, sys = %v, %v, %v; want 2.5s, 0.75s", user, sys, err)
	}
	if _, err := parseStatCPU([]byte("1234 no name here")); err == nil {
		t.Error("accepted a stat line without a command name")
	}
	hwm, err := parseHWM([]byte("Name:\tnginx\nVmPeak:\t 100 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n"))
	if err != nil || hwm != 2<<20 {
		t.Errorf("hwm = %d, %v", hwm, err)
	}
	if _, err := parseHWM([]byte("Name:\tx\n")); err == nil {
		t.Error("accepted a status without VmHWM")
	}
	// The accounting of this very process works end to end.
	g := procGroup{root: os.Getpid()}
	u, err := g.begin()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(50 * time.Millisecond); time.Now().Before(deadline); {
	}
	c, rss, err := u.end()
	if err != nil || c <= 0 || rss <= 0 {
		t.Errorf("own accounting: cpu %v rss %d err %v", c, rss, err)
	}
}

func TestOptions(t *testing.T) {
	notExec := filepath.Join(t.TempDir(), "weir-agent")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Options{
		{Rounds: -1}, {Rounds: 1000}, {Duration: time.Millisecond}, {Duration: time.Hour},
		{Paths: []string{"envoy"}}, {Workloads: []string{"grpc"}}, {Warmup: -time.Second},
		// A baseline path needs the baseline binary; the binary must exist
		// and be executable.
		{Paths: []string{"weir-redirect-base-l4"}}, {BaselineAgent: "/nonexistent/weir-agent"},
		{BaselineAgent: notExec}, {BaselineAgent: t.TempDir()},
	} {
		if err := bad.fill(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	o := Options{Quick: true}
	if err := o.fill(); err != nil || o.Rounds != QuickRounds || o.Duration != QuickDuration || o.Warmup != 0 {
		t.Errorf("quick defaults: %+v %v", o, err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	o = Options{BaselineAgent: self, Paths: []string{"weir-tproxy-base", "weir-tproxy-base-l4"}}
	if err := o.fill(); err != nil {
		t.Errorf("baseline paths with a baseline binary: %v", err)
	}
	o = Options{}
	if err := o.fill(); err != nil || o.Rounds != DefaultRounds || o.Duration != DefaultDuration || o.Warmup != DefaultWarmup {
		t.Errorf("full defaults: %+v %v", o, err)
	}
}

func TestRatios(t *testing.T) {
	w := &WorkloadResult{Name: "bulk", cpuScale: 1, Rows: []*Row{
		{Path: "direct", Kind: kindDirect, Samples: []Sample{{Rate: 10, Units: 1}}},
		{Path: "weir-redirect", Kind: kindWeir, Samples: []Sample{{Rate: 6, Units: 1, ProxyCPU: 1}, {Rate: 8, Units: 1, ProxyCPU: 3}, {Rate: 7, Units: 1, ProxyCPU: 2}}},
		{Path: "nginx-stream", Kind: kindPeer, Samples: []Sample{{Rate: 4, Units: 1, ProxyCPU: 4}}},
		{Path: "go-relay", Kind: kindPeer, Samples: []Sample{{Rate: 2, Units: 1, ProxyCPU: 1}}},
		{Path: "haproxy-tcp", Kind: kindPeer, Failures: []string{"boom"}},
	}}
	r := &Report{Workloads: []*WorkloadResult{w}}
	r.finish(time.Second)
	weir := w.Row("weir-redirect")
	if weir.Rate != 7 || weir.CPU != 2 || weir.RateVsBestPeer != 7.0/4 || weir.CPUVsBestPeer != 2 {
		t.Errorf("weir row %+v", weir)
	}
	if w.BestPeerRate != "nginx-stream" || w.BestPeerCPU != "go-relay" {
		t.Errorf("best peers %q %q", w.BestPeerRate, w.BestPeerCPU)
	}
	if d := w.Row("direct"); !math.IsNaN(d.CPUVsBestPeer) || d.RateVsBestPeer != 2.5 {
		t.Errorf("direct row %+v", d)
	}
	if !r.Failed() {
		t.Error("a failed cell did not mark the report failed")
	}
	var bulk *Target
	for i := range r.Targets {
		if strings.HasPrefix(r.Targets[i].Goal, "single-stream bulk") && r.Targets[i].Path == "weir-redirect" {
			bulk = &r.Targets[i]
		}
	}
	if bulk == nil || !bulk.Measured || bulk.Ratio != 7.0/4 || !bulk.Met {
		t.Errorf("bulk target %+v", bulk)
	}
	if err := r.WriteJSON(t.TempDir() + "/r.json"); err != nil {
		t.Errorf("NaN ratios broke the JSON: %v", err)
	}
}

// TestRoundRatios: a target is also taken round by round, pairing the
// samples of one round (a failed cell leaves its round out), and counts
// the rounds that met it alone.
func TestRoundRatios(t *testing.T) {
	w := &WorkloadResult{Name: "http-keepalive", cpuScale: 1, Rows: []*Row{
		// weir's CPU per request: 9, 11, 12 (rounds 1-3); nginx's: 10, 10, 10 and
		// a failed round 4 for nginx only.
		{Path: "weir-redirect", Kind: kindWeir, Samples: []Sample{
			{Units: 1, ProxyCPU: 9, Round: 1}, {Units: 1, ProxyCPU: 11, Round: 2}, {Units: 1, ProxyCPU: 12, Round: 3}, {Units: 1, ProxyCPU: 1, Round: 4}}},
		{Path: "nginx-http", Kind: kindPeer, Samples: []Sample{
			{Units: 1, ProxyCPU: 10, Round: 1}, {Units: 1, ProxyCPU: 10, Round: 2}, {Units: 1, ProxyCPU: 10, Round: 3}},
			Failures: []string{"round 4"}},
	}}
	r := &Report{Rounds: 4, Workloads: []*WorkloadResult{w}}
	r.finish(time.Second)
	var got *Target
	for i := range r.Targets {
		if r.Targets[i].Path == "weir-redirect" && strings.Contains(r.Targets[i].Goal, "≤ nginx http's (keep-alive)") {
			got = &r.Targets[i]
		}
	}
	if got == nil || !got.Measured {
		t.Fatalf("no measured HTTP/1.1 target against nginx: %+v", r.Targets)
	}
	// Medians: weir (9, 11, 12, 1) → 10, nginx 10 → ratio 1.00, met.
	if got.Ratio != 1 || !got.Met {
		t.Errorf("ratio of medians %v met %v, want 1 true", got.Ratio, got.Met)
	}
	want := []float64{0.9, 1.1, 1.2}
	if len(got.RoundRatios) != len(want) {
		t.Fatalf("round ratios %v, want %v (round 4 has no nginx sample)", got.RoundRatios, want)
	}
	for i := range want {
		if math.Abs(got.RoundRatios[i]-want[i]) > 1e-9 {
			t.Errorf("round ratios %v, want %v", got.RoundRatios, want)
		}
	}
	if got.RoundsMet != 1 {
		t.Errorf("rounds met %d, want 1", got.RoundsMet)
	}
	if n := roundsNote(*got, ""); n != "0.90 1.10 1.20, met in 1 of 3" {
		t.Errorf("note %q", n)
	}
	if !strings.Contains(r.Markdown(), "| 0.90 1.10 1.20, met in 1 of 3 |") {
		t.Error("the markdown targets table lacks the per-round column")
	}
}

// countingListener counts the connections it accepts (one goroutine
// accepts, so no lock).
type countingListener struct {
	net.Listener
	n *int
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		*l.n++
	}
	return c, err
}

func TestPingpongHelper(t *testing.T) {
	// The helper against an in-process echo server: loopback only, bounded.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go serveEcho(ln)
	var b strings.Builder
	if err := pingpongMain([]string{"-addr", ln.Addr().String(), "-conns", "2", "-size", "64", "-duration", "200ms"}, &b); err != nil {
		t.Fatal(err)
	}
	var r pingpongResult
	if err := json.Unmarshal([]byte(b.String()), &r); err != nil {
		t.Fatal(err)
	}
	if r.RoundTrips == 0 || r.Errors != 0 || r.P50us <= 0 || r.P99us < r.P50us {
		t.Errorf("against echo: %+v", r)
	}
	// A new connection per round trip: one connection accepted per round
	// trip counted.
	ln2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	accepted := 0
	counting := &countingListener{Listener: ln2, n: &accepted}
	done := make(chan struct{})
	go func() { serveEcho(counting); close(done) }()
	b.Reset()
	if err := pingpongMain([]string{"-addr", ln2.Addr().String(), "-conns", "1", "-size", "64", "-duration", "200ms", "-new"}, &b); err != nil {
		t.Fatal(err)
	}
	r = pingpongResult{}
	if err := json.Unmarshal([]byte(b.String()), &r); err != nil {
		t.Fatal(err)
	}
	ln2.Close()
	<-done
	if r.RoundTrips == 0 || r.Errors != 0 || int64(accepted) != r.RoundTrips {
		t.Errorf("new connection per round trip: %+v, %d connections accepted", r, accepted)
	}
	ln.Close()
	b.Reset()
	if err := pingpongMain([]string{"-addr", ln.Addr().String(), "-conns", "1", "-duration", "100ms"}, &b); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), `"errors":1`) {
		t.Errorf("a refused connect was not counted: %s", b.String())
	}
	if err := pingpongMain([]string{"-conns", "0"}, &b); err == nil {
		t.Error("bad flags accepted")
	}
}

func TestWriteMarkdownKeepsNotes(t *testing.T) {
	r := &Report{Started: time.Now(), Rounds: 1, Duration: "1s"}
	r.finish(time.Second)
	path := t.TempDir() + "/benchmarks.md"
	if err := r.WriteMarkdown(path); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	notes := "\n## Findings\n\nhand-written\n"
	if err := os.WriteFile(path, append(b, notes...), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := r.WriteMarkdown(path); err != nil {
		t.Fatal(err)
	}
	b, _ = os.ReadFile(path)
	if !strings.HasSuffix(string(b), NotesMarker+"\n"+notes) || strings.Count(string(b), "# weir benchmarks") != 1 {
		t.Errorf("notes not kept once:\n%s", b)
	}
}

// TestCopiers checks every Go relay copy strategy moves small and bulk data
// intact and ends at EOF (loopback only).
func TestCopiers(t *testing.T) {
	for name, copyHalf := range copiers {
		t.Run(name, func(t *testing.T) {
			ln, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			src, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			srcPeer, _ := ln.AcceptTCP()
			dst, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			dstPeer, _ := ln.AcceptTCP()
			done := make(chan struct{})
			go func() { copyHalf(dstPeer, srcPeer); dstPeer.CloseWrite(); close(done) }()

			want := make([]byte, 0, 1<<20)
			go func() {
				for i := range 10 { // small messages, then bulk
					msg := []byte(strings.Repeat(string(rune('a'+i)), 100))
					src.Write(msg)
				}
				big := make([]byte, 1<<20)
				for i := range big {
					big[i] = byte(i % 251)
				}
				src.Write(big)
				src.CloseWrite()
			}()
			for i := range 10 {
				want = append(want, []byte(strings.Repeat(string(rune('a'+i)), 100))...)
			}
			for i := range 1 << 20 {
				want = append(want, byte(i%251))
			}
			dst.SetReadDeadline(time.Now().Add(10 * time.Second))
			got, err := io.ReadAll(dst)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("got %d bytes, want %d (equal prefix: %v)", len(got), len(want), bytes.HasPrefix(want, got))
			}
			<-done
		})
	}
}

func TestResolveChangers(t *testing.T) {
	dir := t.TempDir()
	mon, who := dir+"/mon", dir+"/mon.who"
	done := make(chan struct{})
	defer close(done)
	go resolveChangers(mon, who, done)
	line := fmt.Sprintf("# new generation 7 by process %d (bench.test)\n", os.Getpid())
	if err := os.WriteFile(mon, []byte("add table ip nat\n"+line), 0o644); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(who)
		if strings.Contains(string(b), fmt.Sprintf("<- %d ", os.Getpid())) {
			if strings.Count(string(b), "new generation") != 1 {
				t.Errorf("resolved more than once:\n%s", b)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not resolved: %q", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
