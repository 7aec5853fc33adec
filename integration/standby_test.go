package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/integration/testworld"
)

// Must show 1 (issue 16): under load through the agent, kill -9 of the
// primary with a hot standby running refuses and resets no new connection;
// the standby serves at once (measured: first request on a connection
// opened after the kill, and the time until the standby answers on the
// agent socket); then the promoted standby starts a new standby
// (standby.respawn), which mirrors the pods in turn and covers a second
// kill -9.
func TestStandbyTakesOverOnKill(t *testing.T) {
	node := testworld.NewNode(t, world{"1.0.0", "redirect", "v4", ""}.nodeOptions())
	cfg := map[string]any{
		"capture":      map[string]any{"namespaces": []string{"demo"}},
		"drainTimeout": "5s",
		"standby":      map[string]any{"respawn": true},
	}
	primary := node.StartAgent(t, cfg)
	srv := node.MustAddPod(t, "backend", "server")
	srv.StartNginx(t, 8080, "server")
	client := node.MustAddPod(t, "demo", "client")
	standby := node.StartStandby(t, cfg)
	// A standby the promoted one started and the test did not get to stop
	// (it failed first) must not outlive the test.
	t.Cleanup(func() {
		if st, err := standbyStatus(node); err == nil && st.Pid != standby.Pid() {
			stopPid(t, st.Pid)
		}
	})
	waitMetric(t, standby, "weir_pods_captured", 1, 15*time.Second)
	target := fmt.Sprintf("%s:8080", srv.IP4)

	// The standby holds listeners but the steering program keeps new
	// connections on the primary.
	before := outbound(t, standby)
	for range 20 {
		if body, err := client.Get("http://" + target + "/"); err != nil || strings.TrimSpace(body) != "server" {
			t.Fatalf("request with both agents up: %v %q", err, body)
		}
	}
	if n := outbound(t, standby) - before; n != 0 {
		t.Fatalf("the standby served %v of 20 connections while the primary lived, want 0 (steering)", n)
	}

	// First kill, under load.
	st := crashUnderLoad(t, node, client, target, primary, 12*time.Second, 4*time.Second)
	st.report(t, "first kill")
	st.check(t)
	// The promoted standby now serves on the agent's admin address (so the
	// dead primary's handle reads it); the standby it respawned on
	// StandbyAdminAddr.
	if n := primary.Metric(t, "weir_pods_captured"); n != 1 {
		t.Fatalf("promoted standby holds %v captured pods, want 1", n)
	}
	if body, err := client.Get("http://" + target + "/"); err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("request after the promotion: %v %q", err, body)
	}
	if err := node.Check(client); err != nil {
		t.Fatalf("CNI CHECK through the promoted standby: %v", err)
	}
	respawned := waitNewStandby(t, node, standby, st.killedPid)
	t.Cleanup(func() { stopPid(t, respawned.Pid) })
	t.Logf("a new standby (pid %d) mirrors the pods", respawned.Pid)

	// Second kill: the promoted standby, under a shorter load; the
	// respawned standby takes over in turn.
	st2 := crashUnderLoad(t, node, client, target, standby, 8*time.Second, 3*time.Second)
	st2.report(t, "second kill")
	st2.check(t)
	if body, err := client.Get("http://" + target + "/"); err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("request after the second promotion: %v %q", err, body)
	}
	// The second promoted standby started a third; the cleanups stop both
	// by pid (the test started neither), the third first.
	third := waitNewStandby(t, node, standby, respawned.Pid)
	t.Cleanup(func() { stopPid(t, third.Pid) })
}

// standbyStatus asks the standby socket beside the node's agent socket.
func standbyStatus(node *testworld.Node) (api.StandbyStatus, error) {
	var st api.StandbyStatus
	body, err := unixGet(strings.TrimSuffix(node.Socket, "agent.sock")+"agent-standby.sock", api.PathStandbyStatus)
	if err == nil {
		err = json.Unmarshal([]byte(body), &st)
	}
	return st, err
}

// waitNewStandby waits for a standby other than the ones the test knows
// (not pid notPid) that is ready and watches a primary.
func waitNewStandby(t *testing.T, node *testworld.Node, view *testworld.Agent, notPid int) api.StandbyStatus {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := standbyStatus(node)
		if err == nil && st.Pid != notPid && st.Ready && st.Pods == 1 && st.PrimaryPid != 0 {
			// Its admin address answers too.
			if n := view.Metric(t, "weir_pods_captured"); n == 1 {
				return st
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new standby mirrors the pods 20s after the promotion (last status %+v, %v)", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stopPid(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		return
	}
	syscall.Kill(pid, syscall.SIGTERM)
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("standby %d did not stop within 20s of SIGTERM", pid)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unixGet does one GET over a unix socket.
func unixGet(path, urlPath string) (string, error) {
	c := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", path)
			},
			DisableKeepAlives: true,
		},
	}
	resp, err := c.Get("http://weir-agent" + urlPath)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", urlPath, resp.Status)
	}
	return string(b), err
}

// crashStats is what a load across one kill -9 saw. A connection is "new"
// when its dial started after the killed agent was reaped (all its sockets
// closed); connections started before that and failing were in flight in
// the dead process.
type crashStats struct {
	duration              time.Duration
	ok                    int64 // requests answered "server"
	newConns              int64 // connections dialled after the kill
	newRefused, newReset  int64 // of those: refused at connect, reset
	newOther              int64 // of those: any other failure (EOF, bad answer, timeout)
	inFlightCut           int64 // connections opened before the kill that failed
	killedPid             int
	firstServed           time.Duration // SIGKILL -> first answer on a new connection
	maxGap                time.Duration // longest time without any answer, whole run
	killGap               time.Duration // last answer before SIGKILL -> first after
	promoted              time.Duration // SIGKILL -> agent socket answers ready
	reaped                time.Duration // SIGKILL -> process reaped
	firstErrs             []string
	perRequest, keepAlive int64 // requests by worker kind
}

func (s *crashStats) report(t *testing.T, what string) {
	t.Helper()
	t.Logf("%s: %d requests in %v (%.0f rps; %d on a connection each, %d keep-alive); new connections after the kill: %d, refused %d, reset %d, other failures %d; in flight in the killed agent and cut: %d",
		what, s.ok, s.duration.Round(time.Millisecond), float64(s.ok)/s.duration.Seconds(), s.perRequest, s.keepAlive,
		s.newConns, s.newRefused, s.newReset, s.newOther, s.inFlightCut)
	t.Logf("%s: SIGKILL -> reaped %v -> first answer on a connection opened after that %v later; SIGKILL -> agent socket ready (promoted) %v; no answer for %v (last before SIGKILL to first after); longest gap without any answer over the run %v",
		what, s.reaped.Round(time.Microsecond), (s.firstServed - s.reaped).Round(time.Microsecond), s.promoted.Round(time.Microsecond), s.killGap.Round(time.Microsecond), s.maxGap.Round(time.Microsecond))
}

func (s *crashStats) check(t *testing.T) {
	t.Helper()
	if s.newConns == 0 {
		t.Fatal("no connection was opened after the kill: the load proves nothing")
	}
	if s.newRefused != 0 || s.newReset != 0 || s.newOther != 0 {
		t.Fatalf("new connections after the kill failed: refused %d, reset %d, other %d; first errors: %v", s.newRefused, s.newReset, s.newOther, s.firstErrs)
	}
	// The kernel steers to the standby the moment the primary's sockets
	// close, which is before the process is reaped: a connection opened
	// after that is answered within a request's time. The kill itself (a
	// process dying with thousands of sockets) takes from a few to a few
	// hundred milliseconds on a loaded machine; connections arriving
	// meanwhile wait in the queue and are not lost (counted above), so
	// the gap across it is bounded loosely.
	if d := s.firstServed - s.reaped; d > 100*time.Millisecond {
		t.Fatalf("first answer on a connection opened after the kill came %v after the killed agent was reaped, want the standby serving within 100ms", d)
	}
	if s.killGap > 2*time.Second {
		t.Fatalf("no answer for %v across the kill", s.killGap)
	}
	if s.promoted == 0 {
		t.Fatal("the standby never answered on the agent socket")
	}
}

// crashUnderLoad runs connection-per-request and keep-alive HTTP clients in
// the client pod for d, kills victim (SIGKILL) after killAfter, and measures.
func crashUnderLoad(t *testing.T, node *testworld.Node, client *testworld.Pod, target string, victim *testworld.Agent, d, killAfter time.Duration) *crashStats {
	t.Helper()
	const perRequestWorkers, keepAliveWorkers = 6, 4
	const maxRequests = 400_000 // bound on the whole run, whatever the machine's speed
	var (
		st       crashStats
		killedAt atomic.Int64 // unix ns the victim was reaped; 0 before
		sigAt    atomic.Int64
		total    atomic.Int64
		mu       sync.Mutex
		served   []int64 // unix ns of every answer
		firstNew atomic.Int64
	)
	note := func(err error) {
		mu.Lock()
		if len(st.firstErrs) < 5 {
			st.firstErrs = append(st.firstErrs, err.Error())
		}
		mu.Unlock()
	}
	// fail sorts a failed connection by when it was dialled and why.
	fail := func(dialStart int64, err error, atDial bool) {
		k := killedAt.Load()
		if k == 0 || dialStart < k {
			atomic.AddInt64(&st.inFlightCut, 1)
			return
		}
		note(err)
		switch {
		case atDial && errors.Is(err, syscall.ECONNREFUSED):
			atomic.AddInt64(&st.newRefused, 1)
		case errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE):
			atomic.AddInt64(&st.newReset, 1)
		default:
			atomic.AddInt64(&st.newOther, 1)
		}
	}
	answered := func(dialStart int64, kind *int64) {
		now := time.Now().UnixNano()
		atomic.AddInt64(&st.ok, 1)
		atomic.AddInt64(kind, 1)
		if k := killedAt.Load(); k != 0 && dialStart >= k {
			firstNew.CompareAndSwap(0, now)
		}
		mu.Lock()
		served = append(served, now)
		mu.Unlock()
	}
	dial := func() (*net.TCPConn, int64, error) {
		start := time.Now().UnixNano()
		k := killedAt.Load()
		if k != 0 && start >= k {
			atomic.AddInt64(&st.newConns, 1)
		}
		c, err := client.Dial(target, 3*time.Second)
		return c, start, err
	}
	req := []byte("GET / HTTP/1.1\r\nHost: server\r\n\r\n")
	reqClose := []byte("GET / HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n")
	start := time.Now()
	stop := start.Add(d)
	var wg sync.WaitGroup
	for range perRequestWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stop) && total.Add(1) <= maxRequests {
				c, ds, err := dial()
				if err != nil {
					fail(ds, err, true)
					continue
				}
				c.SetDeadline(time.Now().Add(3 * time.Second))
				_, err = c.Write(reqClose)
				var body []byte
				if err == nil {
					body, err = io.ReadAll(c)
				}
				c.Close()
				if err == nil && !(strings.HasPrefix(string(body), "HTTP/1.1 200") && strings.HasSuffix(string(body), "\r\n\r\nserver\n")) {
					err = fmt.Errorf("answer %q", body)
				}
				if err != nil {
					fail(ds, err, false)
					continue
				}
				answered(ds, &st.perRequest)
			}
		}()
	}
	for range keepAliveWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var c *net.TCPConn
			var br *bufio.Reader
			var ds int64
			defer func() {
				if c != nil {
					c.Close()
				}
			}()
			for time.Now().Before(stop) && total.Add(1) <= maxRequests {
				if c == nil {
					var err error
					if c, ds, err = dial(); err != nil {
						c = nil
						fail(ds, err, true)
						continue
					}
					br = bufio.NewReader(c)
				}
				c.SetDeadline(time.Now().Add(3 * time.Second))
				_, err := c.Write(req)
				var resp *http.Response
				if err == nil {
					resp, err = http.ReadResponse(br, nil)
				}
				var body []byte
				if err == nil {
					body, err = io.ReadAll(resp.Body)
					resp.Body.Close()
					if err == nil && (resp.StatusCode != 200 || string(body) != "server\n") {
						err = fmt.Errorf("answer %s %q", resp.Status, body)
					}
				}
				if err != nil {
					c.Close()
					c = nil
					fail(ds, err, false)
					continue
				}
				answered(ds, &st.keepAlive)
			}
		}()
	}
	time.Sleep(killAfter)
	st.killedPid = victim.Pid()
	sig := time.Now()
	sigAt.Store(sig.UnixNano())
	victim.Kill(t)
	reaped := time.Now()
	killedAt.Store(reaped.UnixNano())
	st.reaped = reaped.Sub(sig)
	// The agent socket answers once the standby promoted itself.
	for time.Since(sig) < 10*time.Second {
		body, err := unixGet(node.Socket, api.PathStatus)
		if err == nil && strings.Contains(body, `"ready":true`) {
			st.promoted = time.Since(sig)
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	wg.Wait()
	st.duration = time.Since(start)
	if f := firstNew.Load(); f != 0 {
		st.firstServed = time.Duration(f - sig.UnixNano())
	} else {
		st.firstServed = time.Duration(1<<63 - 1)
	}
	slices.Sort(served)
	for i := 1; i < len(served); i++ {
		st.maxGap = max(st.maxGap, time.Duration(served[i]-served[i-1]))
		if served[i-1] < sig.UnixNano() && served[i] >= sig.UnixNano() {
			st.killGap = time.Duration(served[i] - served[i-1])
		}
	}
	return &st
}
