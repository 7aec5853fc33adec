package integration

import (
	"bufio"
	"fmt"
	"math"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

const (
	procsGauge   = "weir_agent_gomaxprocs"
	procsUp      = `weir_agent_gomaxprocs_changes_total{direction="up"}`
	procsDown    = `weir_agent_gomaxprocs_changes_total{direction="down"}`
	bigReloadLen = 20000
)

// runtime.procs: auto end to end: an idle agent comes down to one P, a
// CPU-bound goroutine in it (a reload of 20,000 services) raises the count
// while connections keep being relayed, and the count comes back down once
// the reload is done.
func TestProcsAutoFollowsLoad(t *testing.T) {
	testworld.Require(t, runtime.NumCPU() >= 2, "2 or more CPUs (with one, the runtime's default is one P and runtime.procs: auto has nothing to move)")
	p := newProcsSite(t, "auto")
	p.waitProcs(t, 1, 30*time.Second)
	before := outbound(t, p.agent)
	if body, err := p.client.Get(p.target); err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("request at one P: %v %q", err, body)
	}
	if outbound(t, p.agent)-before != 1 {
		t.Fatal("the request did not go through the agent")
	}
	up, down := p.agent.Metric(t, procsUp), p.agent.Metric(t, procsDown)

	probe := p.startProbe(t, 2*time.Millisecond, 3000)
	time.Sleep(200 * time.Millisecond)
	hup := p.reload(t, bigServices(bigReloadLen, p.srv.IP4.String()+":8080"))
	p.waitLog(t, `"routes reloaded"`, 60*time.Second)
	_, rtts, err := probe.stop(hup)
	if err != nil {
		t.Fatalf("a connection relayed during the reload failed: %v", err)
	}
	// Back to no services before reading /metrics: with 20,000 services
	// every scrape is a CPU-bound burst of its own (per-cluster series), so
	// the counter is read once, after the fact (it only grows).
	p.reload(t, nil)
	p.waitLog(t, `"routes reloaded"`, 60*time.Second)
	if p.agent.Metric(t, procsUp) <= up {
		t.Fatalf("a reload of %d services did not raise GOMAXPROCS; agent log:\n%s", bigReloadLen, p.agent.Log())
	}
	p.waitProcs(t, 1, 30*time.Second)
	if p.agent.Metric(t, procsDown) <= down {
		t.Fatal("the count came back to 1 without a change counted down since the reload")
	}
	if body, err := p.client.Get(p.target); err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("request after the reload: %v %q", err, body)
	}
	t.Logf("echo round trips during the reload: %s; GOMAXPROCS changes: %v up, %v down",
		summarise(rtts), p.agent.Metric(t, procsUp), p.agent.Metric(t, procsDown))
}

// BenchmarkProcsAuto prints what users of runtime.procs: auto would fear,
// against procs: max (today's default and main's behaviour) in the same
// run, interleaved: the latency of a load step that starts while auto sits
// at one P (wrk, 1 s, its own percentiles), and the round trips of a paced
// echo connection while the agent rebuilds 20,000 services. It asserts
// nothing; run it with -bench ProcsAuto -benchtime 1x (WEIR_PROCS_ROUNDS
// rounds, default 3).
func BenchmarkProcsAuto(b *testing.B) {
	testworld.RequireTool(b, "wrk")
	rounds := 3
	if s := os.Getenv("WEIR_PROCS_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 50 {
			b.Fatalf("WEIR_PROCS_ROUNDS=%q: want 1 to 50", s)
		}
		rounds = n
	}
	sites := []*procsSite{newProcsSite(b, "auto"), newProcsSite(b, "max")}
	type cell struct {
		step, reload, idle, paced []string
		idleCPU                   []time.Duration
	}
	res := map[string]*cell{"auto": {}, "max": {}}
	for r := range rounds {
		order := sites
		if r%2 == 1 {
			order = []*procsSite{sites[1], sites[0]}
		}
		for _, p := range order {
			c := res[p.procs]
			c.idleCPU = append(c.idleCPU, p.settle(b))
			up := p.agent.Metric(b, procsUp)
			out, err := p.client.Run("wrk", "-t2", "-c32", "-d1s", "--latency", p.target)
			if err != nil || wrkClean(out) != nil {
				b.Fatalf("wrk on %s: %v %v\n%s", p.procs, err, wrkClean(out), out)
			}
			c.step = append(c.step, fmt.Sprintf("%s, %v changes", wrkFigures(out), p.agent.Metric(b, procsUp)-up))

			p.settle(b)
			probe := p.startProbe(b, 2*time.Millisecond, 1500)
			time.Sleep(500 * time.Millisecond)
			hup := p.reload(b, bigServices(bigReloadLen, p.srv.IP4.String()+":8080"))
			p.waitLog(b, `"routes reloaded"`, 60*time.Second)
			took := time.Since(hup)
			time.Sleep(200 * time.Millisecond)
			idle, during, err := probe.stop(hup)
			if err != nil {
				b.Fatalf("echo on %s during the reload: %v", p.procs, err)
			}
			c.idle = append(c.idle, summarise(idle))
			c.reload = append(c.reload, fmt.Sprintf("%s (reload logged after %s)", summarise(during), took.Round(time.Millisecond)))
			p.reload(b, nil)
			p.waitLog(b, `"routes reloaded"`, 60*time.Second)

			for _, rps := range []int{250, 1000, 2000} {
				c.paced = append(c.paced, p.paced(b, 16, rps))
			}
		}
	}
	for _, k := range []string{"auto", "max"} {
		c := res[k]
		b.Logf("procs %s: CPU over 1 s idle, per round: %v", k, c.idleCPU)
		for r := range rounds {
			b.Logf("procs %s round %d: step (wrk -t2 -c32 -d1s after idling): %s", k, r+1, c.step[r])
			b.Logf("procs %s round %d: echo before the reload: %s; during a reload of %d services: %s", k, r+1, c.idle[r], bigReloadLen, c.reload[r])
			b.Logf("procs %s round %d: paced HTTP/1.1 (h2load --h1 -c16, 4 s): %s", k, r+1, strings.Join(c.paced[3*r:3*r+3], " | "))
		}
	}
}

var h2loadTimes = regexp.MustCompile(`time for request:\s+(\S+)\s+(\S+)\s+(\S+)`)
var h2loadDone = regexp.MustCompile(`requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded`)

// paced runs a fixed-rate HTTP/1.1 load (clients × rps requests a second,
// far below what saturates the agent) and reports the agent's CPU per
// request, h2load's mean and max request time, and the P count at the end.
func (p *procsSite) paced(t testing.TB, clients, rps int) string {
	t.Helper()
	p.settle(t)
	up, down := p.agent.Metric(t, procsUp), p.agent.Metric(t, procsDown)
	cpu0 := procCPU(t, p.agent.Pid())
	out, err := p.client.Run("h2load", "--h1", fmt.Sprint("-c", clients), "-t1", fmt.Sprint("--rps=", rps), "-D", "4", p.target)
	cpu := procCPU(t, p.agent.Pid()) - cpu0
	if err != nil || h2loadClean(out) != nil {
		t.Fatalf("h2load on %s: %v %v\n%s", p.procs, err, h2loadClean(out), out)
	}
	n, _ := strconv.Atoi(h2loadDone.FindStringSubmatch(out)[1])
	tm := h2loadTimes.FindStringSubmatch(out)
	if n == 0 || tm == nil {
		t.Fatalf("h2load output without counts or times:\n%s", out)
	}
	return fmt.Sprintf("%d req/s: cpu %.2f µs/req, mean %s, max %s, ends at %v Ps (%v up, %v down)",
		clients*rps, float64(cpu.Nanoseconds())/1e3/float64(n), tm[3], tm[2], p.agent.Metric(t, procsGauge),
		p.agent.Metric(t, procsUp)-up, p.agent.Metric(t, procsDown)-down)
}

// procCPU is a process's CPU time so far, to the nanosecond: the sum of
// its threads' run time (/proc/PID/task/*/schedstat). The Go runtime does
// not end threads, so none drops out of the sum between two readings.
func procCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var sum time.Duration
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, task.Name()))
		if err != nil {
			continue // a thread that just ended
		}
		f := strings.Fields(string(b))
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/task/%s/schedstat: %q", pid, task.Name(), b)
		}
		sum += time.Duration(ns)
	}
	return sum
}

// procsSite is a node whose agent runs with one runtime.procs, a client pod
// in a captured namespace and a server pod with nginx (8080) and an echo
// server (7000).
type procsSite struct {
	procs       string
	agent       *testworld.Agent
	client, srv *testworld.Pod
	target      string
	reloads     int
}

func newProcsSite(t testing.TB, procs string) *procsSite {
	t.Helper()
	node := testworld.NewNode(t, world{"1.0.0", "redirect", "v4", ""}.nodeOptions())
	p := &procsSite{procs: procs}
	p.agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"runtime": map[string]any{"procs": procs},
		// Info: debug lines per connection would add to the agent's load.
		"logLevel": "info",
	})
	p.srv = node.MustAddPod(t, "backend", "server")
	p.srv.StartNginx(t, 8080, "server")
	startEcho(t, p.srv)
	p.client = node.MustAddPod(t, "demo", "client")
	p.target = fmt.Sprintf("http://%s:8080/", p.srv.IP4)
	return p
}

// waitProcs waits until the agent's gauge reads n.
func (p *procsSite) waitProcs(t testing.TB, n float64, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := p.agent.Metric(t, procsGauge)
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent (procs %s) at %v Ps after %s, want %v; log:\n%s", p.procs, got, within, n, p.agent.Log())
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// settle lets the agent idle: 3 s, and for auto until it is down to one P.
// It returns the agent's CPU over the last second of the 3.
func (p *procsSite) settle(t testing.TB) time.Duration {
	t.Helper()
	time.Sleep(2 * time.Second)
	cpu := procCPU(t, p.agent.Pid())
	time.Sleep(time.Second)
	cpu = procCPU(t, p.agent.Pid()) - cpu
	if p.procs == "auto" {
		p.waitProcs(t, 1, 20*time.Second)
	}
	return cpu
}

// waitLog waits until the agent's log holds want once more than it did at
// the last reload.
func (p *procsSite) waitLog(t testing.TB, want string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for strings.Count(p.agent.Log(), want) < p.reloads {
		if time.Now().After(deadline) {
			t.Fatalf("no %s in the agent's log after %s:\n%s", want, within, p.agent.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reload rewrites the agent's config file with these services and sends
// SIGHUP; it returns when it sent it.
func (p *procsSite) reload(t testing.TB, services []any) time.Time {
	t.Helper()
	p.reloads++
	return reloadServices(t, p.agent, services)
}

// bigServices is n services on addresses of 10.97.0.0/16, each with one
// endpoint: validating and building their routes keeps one goroutine of the
// agent busy for a good fraction of a second.
func bigServices(n int, endpoint string) []any {
	s := make([]any, n)
	for i := range s {
		s[i] = map[string]any{
			"name":      fmt.Sprintf("big-%d", i),
			"address":   fmt.Sprintf("10.97.%d.%d:80", i/250, i%250+1),
			"endpoints": []string{endpoint},
		}
	}
	return s
}

// echoProbe sends a line on one relayed connection every interval and
// records each round trip, at most max of them.
type echoProbe struct {
	done    chan struct{}
	quit    chan struct{}
	samples []probeSample
	err     error
}

// probeSample is one round trip and when it started.
type probeSample struct {
	at  time.Time
	rtt time.Duration
}

func (p *procsSite) startProbe(t testing.TB, every time.Duration, max int) *echoProbe {
	t.Helper()
	c, err := p.client.Dial(fmt.Sprintf("%s:7000", p.srv.IP4), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	e := &echoConn{c: c, r: bufio.NewReader(c)}
	pr := &echoProbe{done: make(chan struct{}), quit: make(chan struct{}), samples: make([]probeSample, 0, max)}
	// The first round trip (through the sniffer's deadline: a line is not
	// a known protocol) is made before the probe counts as started.
	if err := e.echo("probe"); err != nil {
		c.Close()
		t.Fatalf("first echo: %v", err)
	}
	go func() {
		defer close(pr.done)
		defer c.Close()
		tick := time.NewTicker(every)
		defer tick.Stop()
		for range max {
			select {
			case <-pr.quit:
				return
			case <-tick.C:
			}
			start := time.Now()
			if err := e.echo("probe"); err != nil {
				pr.err = err
				return
			}
			pr.samples = append(pr.samples, probeSample{at: start, rtt: time.Since(start)})
		}
	}()
	return pr
}

// stop ends the probe and splits its round trips into those started before
// and after split.
func (pr *echoProbe) stop(split time.Time) (before, after []time.Duration, err error) {
	close(pr.quit)
	<-pr.done
	for _, s := range pr.samples {
		if s.at.Before(split) {
			before = append(before, s.rtt)
		} else {
			after = append(after, s.rtt)
		}
	}
	return before, after, pr.err
}

// summarise prints count, p50, p99 and max of some round trips.
func summarise(d []time.Duration) string {
	if len(d) == 0 {
		return "no samples"
	}
	s := slices.Clone(d)
	slices.Sort(s)
	q := func(f float64) time.Duration { return s[int(math.Ceil(f*float64(len(s))))-1] }
	return fmt.Sprintf("n %d, p50 %s, p99 %s, max %s", len(s), q(0.5).Round(time.Microsecond), q(0.99).Round(time.Microsecond), s[len(s)-1].Round(time.Microsecond))
}

var wrkLine = regexp.MustCompile(`(?m)^[ \t]+(50|99)%[ \t]+(\S+)$|^[ \t]+Latency[ \t]+\S+[ \t]+\S+[ \t]+(\S+)|^Requests/sec:[ \t]+(\S+)`)

// wrkFigures picks p50, p99, max latency and the rate out of wrk --latency.
func wrkFigures(out string) string {
	var p50, p99, max, rate string
	for _, m := range wrkLine.FindAllStringSubmatch(out, -1) {
		switch {
		case m[1] == "50":
			p50 = m[2]
		case m[1] == "99":
			p99 = m[2]
		case m[3] != "":
			max = m[3]
		case m[4] != "":
			rate = m[4]
		}
	}
	return fmt.Sprintf("p50 %s, p99 %s, max %s, %s req/s", p50, p99, max, rate)
}
