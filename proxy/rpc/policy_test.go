package rpc_test

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Busy makes the toy protocol's "BUSY" answers retryable (RetryBusy).
func (toyCodec) Busy(resp rpc.Frame) bool {
	return strings.HasSuffix(string(resp.Bytes()[9:]), ":BUSY")
}

// metricSum sums the series of a counter whose labels include the pairs.
func metricSum(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			matched := 0
			for _, lp := range m.GetLabel() {
				if v, ok := want[lp.GetName()]; ok && v == lp.GetValue() {
					matched++
				}
			}
			if mf.GetName() == name && matched == len(want) {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return sum
}

func newMetrics() (*rpc.Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	return rpc.NewMetrics(reg), reg
}

// TestRequestTimeout: a request past its route's timeout gets the
// protocol's error reply while the server still works on it; the calls
// sent after it on the same connections are answered; the late answer is
// dropped; the upstream connection stays, and carries the next call.
func TestRequestTimeout(t *testing.T) {
	a := startToy(t, "a")
	m, reg := newMetrics()
	addr, _, pool := toyProxyWith(t, &rpc.Policy{Timeout: time.Second}, m, a)
	c, r := toyClient(t, addr)
	// Client ids unlike the upstream ones (1, 2, …): the timeout reply
	// must carry the client's.
	batch := toyBytes(kReq, 1001, "slow")
	for i := uint32(1002); i <= 1006; i++ {
		batch = append(batch, toyBytes(kReq, i, "fast")...)
	}
	c.Write(batch)
	// The five fast calls come first, then the timeout of the slow one,
	// which the server answers only after 3 seconds (the margins are wide
	// for a loaded machine: a fast call is answered in a few ms).
	for i := range 6 {
		kind, id, p := readToy(t, r)
		switch {
		case kind != kResp:
			t.Fatalf("answer %d: kind %d", i, kind)
		case i < 5 && (id == 1001 || id < 1002 || id > 1006 || p != "a:fast"):
			t.Fatalf("answer %d: id %d %q, want a fast call's", i, id, p)
		case i == 5 && (id != 1001 || !strings.Contains(p, "route's timeout")):
			t.Fatalf("answer %d: id %d %q, want the slow call's timeout", i, id, p)
		}
	}
	// Past the late answer (the server sends it 3 s after the call), the
	// next call still gets its own answer, over the same connection.
	for deadline := time.Now().Add(5 * time.Second); ; {
		if time.Now().After(deadline) {
			t.Fatal("the slow call's late answer never reached the proxy")
		}
		if a.reqs.Load() == 6 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(2500 * time.Millisecond)
	c.Write(toyBytes(kReq, 7, "after"))
	if kind, id, p := readToy(t, r); kind != kResp || id != 7 || p != "a:after" {
		t.Fatalf("after the timeout: kind %d id %d %q (the late answer must be dropped)", kind, id, p)
	}
	if a.conns.Load() != 1 || pool.Conns(a.addr) != 1 {
		t.Fatalf("upstream connections: %d made, %d pooled; a timeout must not close one", a.conns.Load(), pool.Conns(a.addr))
	}
	if n := metricSum(t, reg, "weir_rpc_requests_total", "status", "timeout"); n != 1 {
		t.Fatalf("requests counted as timeout: %v, want 1", n)
	}
	if n := metricSum(t, reg, "weir_rpc_requests_total", "status", "ok"); n != 6 {
		t.Fatalf("requests counted ok: %v, want 6", n)
	}
}

// deadAddr is a loopback address nothing listens on.
func deadServer(t *testing.T, name string) *toyServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &toyServer{name: name, addr: l.Addr().(*net.TCPAddr).AddrPort()}
	l.Close()
	return s
}

// callAll sends n calls on one connection and returns the answers' payloads
// by id.
func callAll(t *testing.T, addr string, n int, payload string) map[uint32]string {
	t.Helper()
	c, r := toyClient(t, addr)
	var batch []byte
	for i := 1; i <= n; i++ {
		batch = append(batch, toyBytes(kReq, uint32(i), payload)...)
	}
	c.Write(batch)
	got := map[uint32]string{}
	for range n {
		kind, id, p := readToy(t, r)
		if kind != kResp {
			t.Fatalf("kind %d", kind)
		}
		got[id] = p
	}
	return got
}

// TestRetryConnectFailure: with the default policy, calls balanced to an
// endpoint that refuses connections go to the live one: none fails.
func TestRetryConnectFailure(t *testing.T) {
	a := startToy(t, "a")
	m, reg := newMetrics()
	addr, _, _ := toyProxyWith(t, nil, m, deadServer(t, "dead"), a)
	for id, p := range callAll(t, addr, 20, "x") {
		if p != "a:x" {
			t.Fatalf("call %d: %q, want a:x", id, p)
		}
	}
	if n := metricSum(t, reg, "weir_rpc_retries_total", "reason", "connect-failure"); n < 1 {
		t.Fatalf("connect-failure retries counted: %v", n)
	}
}

// TestRetryReset: calls whose connection broke before an answer are
// retried on another endpoint only when the route says reset.
func TestRetryReset(t *testing.T) {
	a, flaky := startToy(t, "a"), startToyMode(t, "flaky", "reset")
	m, reg := newMetrics()
	addr, _, _ := toyProxyWith(t, &rpc.Policy{Attempts: 1, On: rpc.RetryConnect | rpc.RetryReset}, m, flaky, a)
	for id, p := range callAll(t, addr, 20, "x") {
		if p != "a:x" {
			t.Fatalf("call %d: %q, want a:x", id, p)
		}
	}
	if flaky.reqs.Load() == 0 {
		t.Fatal("no call went to the endpoint that resets: the test shows nothing")
	}
	if n := metricSum(t, reg, "weir_rpc_retries_total", "reason", "reset"); n < 1 {
		t.Fatalf("reset retries counted: %v", n)
	}

	// Without reset in the policy, a call the server may have run is not
	// sent again: the client gets the error.
	flaky2 := startToyMode(t, "flaky", "reset")
	addr2, _, _ := toyProxyWith(t, nil, nil, flaky2)
	for id, p := range callAll(t, addr2, 1, "x") {
		if !strings.HasPrefix(p, "ERR ") {
			t.Fatalf("call %d: %q, want an error reply", id, p)
		}
	}
}

// TestRetryBusy: a server's busy answer is retried on another endpoint;
// past the attempts, the client gets the busy answer itself.
func TestRetryBusy(t *testing.T) {
	a, busy := startToy(t, "a"), startToyMode(t, "busy", "busy")
	m, reg := newMetrics()
	addr, _, _ := toyProxyWith(t, &rpc.Policy{Attempts: 1, On: rpc.RetryBusy}, m, busy, a)
	for id, p := range callAll(t, addr, 20, "x") {
		if p != "a:x" {
			t.Fatalf("call %d: %q, want a:x", id, p)
		}
	}
	if busy.reqs.Load() == 0 {
		t.Fatal("no call went to the busy endpoint: the test shows nothing")
	}
	if n := metricSum(t, reg, "weir_rpc_retries_total", "reason", "busy"); n != float64(busy.reqs.Load()) {
		t.Fatalf("busy retries counted: %v, want %d", n, busy.reqs.Load())
	}
	busy2 := startToyMode(t, "busy", "busy")
	addr2, _, _ := toyProxyWith(t, &rpc.Policy{Attempts: 1, On: rpc.RetryBusy}, nil, busy2)
	for id, p := range callAll(t, addr2, 3, "x") {
		if p != "busy:BUSY" {
			t.Fatalf("call %d: %q, want the busy answer (no other endpoint)", id, p)
		}
	}
}

// TestOnewayNotRetried: a one-way request balanced to an endpoint that
// refuses connections is dropped, never sent elsewhere; a two-way one
// is.
func TestOnewayNotRetried(t *testing.T) {
	a := startToy(t, "a")
	m, reg := newMetrics()
	addr, _, _ := toyProxyWith(t, nil, m, deadServer(t, "dead"), a)
	c, r := toyClient(t, addr)
	for i := uint32(1); i <= 10; i++ {
		// One at a time, each followed by a call, so the dead endpoint
		// is picked again for some (no outlier ejection before 5 errors).
		c.Write(append(toyBytes(kOneway, i, "fire"), toyBytes(kReq, 100+i, "call")...))
		if _, id, p := readToy(t, r); id != 100+i || p != "a:call" {
			t.Fatalf("call %d: id %d %q", 100+i, id, p)
		}
	}
	if n := a.oneway.Load(); n == 0 || n == 10 {
		t.Fatalf("the live endpoint got %d of 10 one-way requests; want some (balanced) and not all (none retried)", n)
	}
	retries := metricSum(t, reg, "weir_rpc_retries_total", "reason", "connect-failure")
	if calls := metricSum(t, reg, "weir_rpc_requests_total", "status", "ok"); calls != 10 {
		t.Fatalf("calls answered: %v", calls)
	}
	if lost := 10 - float64(a.oneway.Load()); retries > 10 || lost < 1 {
		t.Fatalf("%v retries, %v one-way requests dropped", retries, lost)
	}
}
