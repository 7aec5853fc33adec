package integration

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Takeover stress: the promise that a new agent takes over from the old
// one without dropping a connection, checked many times in a row under
// every kind of traffic a node carries, in REDIRECT and TPROXY mode:
//
//   - outbound HTTP/1.1 to a service address (sniffed, L7), keep-alive
//     (twice) and a new connection per request;
//   - outbound HTTP/1.1 to a service whose endpoint is a captured pod, as
//     in a real cluster: the agent's pooled upstream connections to it are
//     captured again at the endpoint, relayed inbound at L4 back to back
//     (the topology of TestRealNode/RollingUpdate's load);
//   - outbound to a pod address (passthrough, L4), keep-alive (the relay is
//     handed over to the successor when idle) and a new connection per
//     request;
//   - inbound from an uncaptured pod (L4), keep-alive and a new connection
//     per request;
//   - outbound HTTP/1.1 to the service address, keep-alive with a pause of
//     up to 1.5 s between requests (twice): its connection is often idle
//     when the old agent drains, which hands it to the successor.
//
// The clients are raw HTTP/1.1 loops that never retry, so every reset,
// early close, timeout or wrong answer counts; a keep-alive client follows
// Connection: close to a new connection, as HTTP requires. A pausing client
// tells one failure apart: its idle connection closed before any byte of
// the answer. HTTP allows a server that (RFC 9112 §9.3.1: the client may
// send the request again, as Go's Transport and curl do), so the client
// sends it once more on a new connection; but with a successor taking idle
// connections over, none should be closed, so the test counts it as a
// failure too (a client that does not retry, or a request that is not
// idempotent, would be lost). Each failure is
// placed in the phase it fell in: "overlap" (the successor starting, both
// agents' listeners open), "drain" (the successor ready, the old agent
// draining and handing over) or "steady". Any failure fails the test.
//
// In CI it makes stressTakeoversCI takeovers per mode, or as many as fit in
// stressBudgetCI (about half a second each here, so 15-40 s a mode);
// WEIR_TAKEOVER_STRESS=N makes N per mode for a manual run (e.g. 100),
// with the budget grown to match.
func TestTakeoverStress(t *testing.T) {
	takeovers, budget := stressTakeoversCI, stressBudgetCI
	if v := os.Getenv("WEIR_TAKEOVER_STRESS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			t.Fatalf("WEIR_TAKEOVER_STRESS=%q: want a count of takeovers per mode, 1 to 10000", v)
		}
		takeovers, budget = n, time.Duration(n)*10*time.Second
	}
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { takeoverStress(t, mode, takeovers, budget) })
	}
}

const (
	stressTakeoversCI = 30
	stressBudgetCI    = 35 * time.Second
	// stressMaxRequests bounds each client loop whatever the budget.
	stressMaxRequests = 2_000_000
	stressVIP         = "10.96.7.10:80"
	stressAppVIP      = "10.96.7.11:80"
)

func takeoverStress(t *testing.T, mode string, takeovers int, budget time.Duration) {
	node := testworld.NewNode(t, world{"1.0.0", mode, "v4", ""}.nodeOptions())
	// The node's first agent gets the pods' ADDs; the services need the
	// server's address, so it is restarted with them before the load.
	first := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	srv := node.MustAddPod(t, "backend", "server")
	srv.StartNginx(t, 8080, "server")
	client := node.MustAddPod(t, "demo", "client")
	app := node.MustAddPod(t, "demo", "app")
	app.StartNginx(t, 8080, "app")
	first.Stop(t)
	cfg := map[string]any{
		"capture":      map[string]any{"namespaces": []string{"demo"}},
		"drainTimeout": "5s",
		"services": []any{
			map[string]any{"name": "web", "address": stressVIP, "endpoints": []string{srv.IP4.String() + ":8080"}},
			map[string]any{"name": "app", "address": stressAppVIP, "endpoints": []string{app.IP4.String() + ":8080"}},
		},
	}
	agent := node.StartAgent(t, cfg)

	var tl stressTimeline
	toSrv := srv.IP4.String() + ":8080"
	toApp := app.IP4.String() + ":8080"
	loads := []*stressLoad{
		{name: "outbound L7 keep-alive #1", from: client, addr: stressVIP, want: "server", keepAlive: true},
		{name: "outbound L7 keep-alive #2", from: client, addr: stressVIP, want: "server", keepAlive: true},
		{name: "outbound L7 new connection", from: client, addr: stressVIP, want: "server"},
		{name: "L7 to a captured endpoint, keep-alive", from: client, addr: stressAppVIP, want: "app", keepAlive: true},
		{name: "outbound L4 keep-alive", from: client, addr: toSrv, want: "server", keepAlive: true},
		{name: "outbound L4 new connection", from: client, addr: toSrv, want: "server"},
		{name: "inbound L4 keep-alive", from: srv, addr: toApp, want: "app", keepAlive: true},
		{name: "inbound L4 new connection", from: srv, addr: toApp, want: "app"},
		{name: "outbound L7 keep-alive, paused #1", from: client, addr: stressVIP, want: "server", keepAlive: true, pause: 1500 * time.Millisecond},
		{name: "outbound L7 keep-alive, paused #2", from: client, addr: stressVIP, want: "server", keepAlive: true, pause: 1500 * time.Millisecond},
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, l := range loads {
		l.tl = &tl
		wg.Add(1)
		go func() { defer wg.Done(); l.run(stop) }()
	}
	stopped := false
	stopLoads := func() {
		if !stopped {
			stopped = true
			close(stop)
			wg.Wait()
		}
	}
	defer stopLoads()

	time.Sleep(time.Second) // every load under way before the first takeover
	began := time.Now()
	done := 0
	var olds []*testworld.Agent
	for done < takeovers && time.Since(began) < budget {
		start := time.Now()
		next := node.StartAgent(t, cfg)
		ready := time.Now()
		if err := agent.Wait(t, 30*time.Second); err != nil {
			t.Fatalf("takeover %d: old agent exit: %v, want status 0", done+1, err)
		}
		tl.add(stressSpan{start: start, ready: ready, exited: time.Now()})
		olds = append(olds, agent)
		agent = next
		done++
		time.Sleep(200 * time.Millisecond) // a moment of steady state
	}
	time.Sleep(500 * time.Millisecond)
	stopLoads()
	took := time.Since(began)

	// What the old agents did with their connections.
	var handed, drained, cut, handedH1 int
	re := regexp.MustCompile(`"msg":"L4 connections at the takeover","handedOver":(\d+),"drained":(\d+),"cut":(\d+)(?:,"http1HandedOver":(\d+))?`)
	for _, a := range olds {
		if m := re.FindStringSubmatch(a.Log()); m != nil {
			h, _ := strconv.Atoi(m[1])
			d, _ := strconv.Atoi(m[2])
			c, _ := strconv.Atoi(m[3])
			h1, _ := strconv.Atoi(m[4])
			handed, drained, cut, handedH1 = handed+h, drained+d, cut+c, handedH1+h1
		}
	}
	t.Logf("%s: %d takeovers in %v (%d asked, budget %v); L4 connections at the takeovers: %d handed over, %d drained, %d cut; idle HTTP/1 connections handed over: %d",
		mode, done, took.Round(time.Millisecond), takeovers, budget, handed, drained, cut, handedH1)

	failed := false
	for _, l := range loads {
		ok, fails := l.result()
		retried := l.retried.Load()
		t.Logf("%-38s %7d ok, %d failed, %d sent again after an idle close", l.name, ok, len(fails), retried)
		if ok == 0 {
			t.Errorf("%s: no request succeeded", l.name)
		}
		if retried != 0 {
			failed = true
			t.Errorf("%s: %d requests met an idle keep-alive connection closed instead of handed over (answered when sent again; a client that does not retry would have lost them)", l.name, retried)
		}
		if len(fails) == 0 {
			continue
		}
		failed = true
		byPhase := map[string]int{}
		for _, f := range fails {
			byPhase[f.phase]++
		}
		t.Errorf("%s: %d of %d requests failed across %d takeovers; by phase %v; first ones:\n%s",
			l.name, len(fails), ok+int64(len(fails)), done, byPhase, describeFails(fails, 5))
	}
	if done < 2 {
		t.Errorf("only %d takeovers within %v: the stress proves little", done, budget)
	}
	if cut != 0 {
		t.Errorf("%d L4 connections were cut at a drain deadline", cut)
	}
	if !failed {
		t.Logf("%s: no request lost across %d takeovers", mode, done)
	}
}

// stressSpan is one takeover: the successor started, was ready (the
// predecessor asked to hand over), and the predecessor exited.
type stressSpan struct{ start, ready, exited time.Time }

// stressTimeline holds the takeovers so far, for placing failures.
type stressTimeline struct {
	mu    sync.Mutex
	spans []stressSpan
}

func (tl *stressTimeline) add(s stressSpan) {
	tl.mu.Lock()
	tl.spans = append(tl.spans, s)
	tl.mu.Unlock()
}

// phase names where at falls. A failure is noted when it is seen, which
// can be a little after its cause: a span is widened by a second at its
// end. Failures of a takeover still under way are placed when the test
// reports (phaseOf runs then).
func (tl *stressTimeline) phaseOf(at time.Time) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	for i, s := range tl.spans {
		switch {
		case at.Before(s.start):
			continue
		case at.Before(s.ready):
			return fmt.Sprintf("overlap (takeover %d)", i+1)
		case at.Before(s.exited.Add(time.Second)):
			return fmt.Sprintf("drain (takeover %d)", i+1)
		}
	}
	return "steady"
}

// stressLoad is one client loop.
type stressLoad struct {
	name      string
	from      *testworld.Pod
	addr      string
	want      string
	keepAlive bool
	// pause, when set, is the longest random wait between two requests;
	// such a client sends a request again once if its keep-alive
	// connection was closed before any byte of the answer.
	pause time.Duration
	tl    *stressTimeline

	ok      atomic.Int64
	retried atomic.Int64
	mu      sync.Mutex
	fails   []stressFail
}

type stressFail struct {
	at    time.Time
	phase string
	what  string
}

func (l *stressLoad) fail(what string, err error) {
	l.mu.Lock()
	l.fails = append(l.fails, stressFail{at: time.Now(), what: fmt.Sprintf("%s: %s", what, errKind(err))})
	l.mu.Unlock()
}

func (l *stressLoad) result() (int64, []stressFail) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := append([]stressFail(nil), l.fails...)
	for i := range out {
		out[i].phase = l.tl.phaseOf(out[i].at)
	}
	return l.ok.Load(), out
}

// run sends requests until stop, one at a time; a keep-alive loop keeps its
// connection until the server says close or a request fails.
func (l *stressLoad) run(stop <-chan struct{}) {
	var c *net.TCPConn
	var cr countingReader // what c gave since the request was written
	var br *bufio.Reader
	served := 0        // requests answered on c
	sendAgain := false // the last request met an idle close: send it once more
	defer func() {
		if c != nil {
			c.Close()
		}
	}()
	req := "GET / HTTP/1.1\r\nHost: stress\r\n\r\n"
	if !l.keepAlive {
		req = "GET / HTTP/1.1\r\nHost: stress\r\nConnection: close\r\n\r\n"
	}
	for i := 0; i < stressMaxRequests; i++ {
		if l.pause > 0 && !sendAgain {
			select {
			case <-stop:
				return
			case <-time.After(rand.N(l.pause)):
			}
		}
		select {
		case <-stop:
			return
		default:
		}
		if c == nil {
			var err error
			if c, err = l.from.Dial(l.addr, 5*time.Second); err != nil {
				l.fail("connect", err)
				c, sendAgain = nil, false
				time.Sleep(10 * time.Millisecond)
				continue
			}
			cr.c = c
			br, served = bufio.NewReader(&cr), 0
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		cr.n = 0
		closeAfter, err := exchange(c, br, req, l.want)
		if err != nil {
			c.Close()
			c = nil
			if l.pause > 0 && served > 0 && cr.n == 0 && !sendAgain {
				// Closed while idle, before any byte of the answer.
				l.retried.Add(1)
				sendAgain = true
				continue
			}
			where := "new connection"
			if served > 0 {
				where = fmt.Sprintf("keep-alive connection after %d answers", served)
			}
			if sendAgain {
				where += ", sent again after an idle close"
			}
			l.fail(where, err)
			sendAgain = false
			continue
		}
		sendAgain = false
		l.ok.Add(1)
		served++
		if closeAfter || !l.keepAlive {
			c.Close()
			c = nil
		}
	}
}

// exchange writes req and reads one answer, which must be 200 with body
// want; it reports whether the server closes the connection after it.
func exchange(c *net.TCPConn, br *bufio.Reader, req, want string) (bool, error) {
	if _, err := io.WriteString(c, req); err != nil {
		return false, fmt.Errorf("write: %w", err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		return false, fmt.Errorf("read answer: %w", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return false, fmt.Errorf("read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != want {
		return false, fmt.Errorf("answer %s %q, want 200 %q", resp.Status, body, want)
	}
	return resp.Close, nil
}

// countingReader counts the bytes read from c.
type countingReader struct {
	c *net.TCPConn
	n int
}

func (r *countingReader) Read(b []byte) (int, error) {
	n, err := r.c.Read(b)
	r.n += n
	return n, err
}

// errKind names the failure's kind first (reset, EOF, timeout), then the
// error.
func errKind(err error) string {
	kind := "other"
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		kind = "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		kind = "EOF"
	case errors.As(err, &ne) && ne.Timeout():
		kind = "timeout"
	}
	return kind + ": " + err.Error()
}

func describeFails(fs []stressFail, n int) string {
	sort.Slice(fs, func(i, j int) bool { return fs[i].at.Before(fs[j].at) })
	var b strings.Builder
	for i, f := range fs {
		if i == n {
			fmt.Fprintf(&b, "  ... and %d more\n", len(fs)-n)
			break
		}
		fmt.Fprintf(&b, "  %s [%s] %s\n", f.at.UTC().Format("15:04:05.000"), f.phase, f.what)
	}
	return b.String()
}
