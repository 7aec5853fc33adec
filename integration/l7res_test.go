package integration

import (
	"context"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Service addresses of the resilience world.
const (
	vipRetry = "10.96.1.30:80"    // http: retry on 503 (server a answers 503 once)
	vipEject = "10.96.1.31:80"    // http: server a answers 500 always, ejected after 3
	vipGRes  = "10.96.1.32:50052" // grpc: retry on UNAVAILABLE (server a answers it once)
	vipBudH1 = "10.96.1.33:80"    // http: retry on 503 within a 20 % budget (HTTP/1.1 clients)
	vipBudH2 = "10.96.1.34:80"    // the same for h2c clients, its own cluster and budget
	vipSR    = "10.96.1.35:80"    // http: server a:8083 fails every other request, b:8083-8085 never
)

// resGRPC answers unary calls: UNAVAILABLE to server a's first, and after
// a 2 s sleep when the request asks for a response size; it records the
// deadline its last call came with.
type resGRPC struct {
	testpb.UnimplementedTestServiceServer
	failing bool
	calls   atomic.Int64
	left    atomic.Int64 // ns to the deadline when the last call came
}

func (s *resGRPC) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.calls.Add(1)
	if dl, ok := ctx.Deadline(); ok {
		s.left.Store(int64(time.Until(dl)))
	}
	if s.failing && n == 1 {
		return nil, status.Error(codes.Unavailable, "warming up")
	}
	if in.GetResponseSize() > 0 {
		select {
		case <-time.After(2 * time.Second):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return &testpb.SimpleResponse{}, nil
}

func startResGRPC(t *testing.T, p *testworld.Pod, failing bool) *resGRPC {
	t.Helper()
	impl := &resGRPC{failing: failing}
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, impl)
	go s.Serve(p.Listen(t, "0.0.0.0:50052"))
	t.Cleanup(s.Stop)
	return impl
}

// resServer is a pod's Go HTTP server for the resilience tests: on 8080,
// server a answers its first request 503 and /always503 always 503; on
// 8081 server a answers 500 always; on 8083 server a answers every other
// request 500 (server b listens on 8083-8085). Everything else answers
// the pod's name.
type resServer struct {
	name                     string
	hits, hits8081, hits8083 atomic.Int64
}

func startResServer(t *testing.T, p *testworld.Pod, failing bool) *resServer {
	t.Helper()
	s := &resServer{name: p.Name}
	serve := func(addr string, h http.HandlerFunc) {
		ln := p.Listen(t, addr)
		// h2c too, so the budget test's HTTP/2 clients reach an HTTP/2 upstream.
		var protos http.Protocols
		protos.SetHTTP1(true)
		protos.SetUnencryptedHTTP2(true)
		srv := &http.Server{Handler: h, Protocols: &protos}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Close() })
	}
	serve("0.0.0.0:8080", func(w http.ResponseWriter, r *http.Request) {
		n := s.hits.Add(1)
		if failing && (n == 1 || r.URL.Path == "/always503") {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, s.name)
	})
	serve("0.0.0.0:8081", func(w http.ResponseWriter, r *http.Request) {
		s.hits8081.Add(1)
		if failing {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, s.name)
	})
	serve("0.0.0.0:8083", func(w http.ResponseWriter, r *http.Request) {
		if s.hits8083.Add(1)%2 == 0 && failing {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, s.name)
	})
	if !failing {
		for _, port := range []string{"8084", "8085"} {
			serve("0.0.0.0:"+port, func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, s.name) })
		}
	}
	return s
}

// curlCodes sends n requests with curl on one keep-alive connection and
// returns the status codes it saw, in order.
func curlCodes(t *testing.T, c *testworld.Pod, url string, n int, extra ...string) []string {
	t.Helper()
	var urls []string
	for range n - 1 {
		urls = append(urls, url)
	}
	args := append([]string{"-w", "\ncode=%{http_code}\n"}, extra...)
	out, err := c.Curl(t, url, append(args, urls...)...)
	if err != nil {
		t.Fatalf("curl: %v: %s", err, out)
	}
	var codes []string
	for _, line := range strings.Split(out, "\n") {
		if code, ok := strings.CutPrefix(line, "code="); ok {
			codes = append(codes, code)
		}
	}
	if len(codes) != n {
		t.Fatalf("curl answered %d of %d requests: %q", len(codes), n, out)
	}
	return codes
}

// Must show 2 and 3 (issue 10) end to end with curl: a GET answered 503
// once is retried onto the other endpoint (the client sees 200, the retry
// is counted), a POST is not retried, and an endpoint answering 500 is
// ejected for its ejection time, then gets traffic again.
func TestL7Resilience(t *testing.T) {
	testworld.RequireTool(t, "curl", "h2load")
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": "redirect"}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	podA := node.MustAddPod(t, "backend", "server-a")
	podB := node.MustAddPod(t, "backend", "server-b")
	srvA, srvB := startResServer(t, podA, true), startResServer(t, podB, false)
	gA, gB := startResGRPC(t, podA, true), startResGRPC(t, podB, false)
	agent.Stop(t)
	a, b := podA.IP4.String(), podB.IP4.String()
	const ejection = 3 * time.Second
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			map[string]any{"name": "retry", "address": vipRetry, "protocol": "http", "endpoints": []string{a + ":8080", b + ":8080"},
				"httpRoutes": []any{map[string]any{"name": "retry", "rules": []any{map[string]any{
					"backendRefs": []any{map[string]any{"service": "retry"}},
					"timeouts":    map[string]any{"request": "5s", "backendRequest": "2s"},
					"retry":       map[string]any{"codes": []int{503}, "attempts": 1},
				}}}}},
			map[string]any{"name": "eject", "address": vipEject, "protocol": "http", "endpoints": []string{a + ":8081", b + ":8081"},
				"cluster": map[string]any{"outlier": map[string]any{"consecutiveFailures": 3, "baseEjectionTime": ejection.String(), "maxEjectionPercent": 50}}},
			map[string]any{"name": "gres", "address": vipGRes, "protocol": "grpc", "endpoints": []string{a + ":50052", b + ":50052"},
				"httpRoutes": []any{map[string]any{"name": "gres", "rules": []any{map[string]any{
					"backendRefs": []any{map[string]any{"service": "gres"}},
					"retry":       map[string]any{"grpcCodes": []string{"UNAVAILABLE", "DEADLINE_EXCEEDED"}, "attempts": 2},
				}}}}},
			budgetService("budh1", vipBudH1, a, b), budgetService("budh2", vipBudH2, a, b),
			// Success-rate ejection alone: four endpoints, a failure in
			// a row never reaches consecutiveFailures.
			map[string]any{"name": "sr", "address": vipSR, "protocol": "http",
				"endpoints": []string{a + ":8083", b + ":8083", b + ":8084", b + ":8085"},
				"cluster": map[string]any{"outlier": map[string]any{
					"consecutiveFailures": 50, "baseEjectionTime": "30s", "maxEjectionPercent": 25,
					"successRate": map[string]any{"enabled": true, "interval": "3s", "minimumHosts": 4, "requestVolume": 10, "stdevFactor": 1.0},
				}}},
		},
	})
	client := node.MustAddPod(t, "demo", "client")
	retries := func() float64 { return agent.Metric(t, `weir_http_retries_total{protocol="http1"}`) }

	t.Run("get-retried-on-503", func(t *testing.T) {
		codes := curlCodes(t, client, "http://"+vipRetry+"/", 10)
		for i, c := range codes {
			if c != "200" {
				t.Fatalf("request %d answered %s (all: %v); want every GET to end in 200", i, c, codes)
			}
		}
		if srvA.hits.Load() == 0 || srvA.hits.Load()+srvB.hits.Load() != 11 {
			t.Errorf("servers got %d + %d requests, want 11 (10 and one retry)", srvA.hits.Load(), srvB.hits.Load())
		}
		if got := retries(); got != 1 {
			t.Errorf("weir_http_retries_total = %v, want 1", got)
		}
	})
	t.Run("post-not-retried", func(t *testing.T) {
		before, beforeA := retries(), srvA.hits.Load()
		codes := curlCodes(t, client, "http://"+vipRetry+"/always503", 6, "-X", "POST", "-d", "x")
		n503 := strings.Count(strings.Join(codes, " "), "503")
		if int64(n503) != srvA.hits.Load()-beforeA || n503 == 0 {
			t.Errorf("POST answers %v, server a got %d: every 503 should reach the client", codes, srvA.hits.Load()-beforeA)
		}
		if got := retries(); got != before {
			t.Errorf("a POST was retried: weir_http_retries_total %v -> %v", before, got)
		}
	})
	t.Run("retry-budget", func(t *testing.T) {
		t.Run("http1", func(t *testing.T) {
			checkRetryBudget(t, agent, srvA, srvB, "budh1", func(n int) (int64, int64) {
				all := strings.Join(curlCodes(t, client, "http://"+vipBudH1+"/always503", n), " ")
				return int64(strings.Count(all, "200")), int64(strings.Count(all, "503"))
			})
		})
		// h2load, not curl: curl 7.88 breaks its prior-knowledge
		// connection after the first answer from Go's h2c server, weir or no.
		t.Run("h2c", func(t *testing.T) {
			checkRetryBudget(t, agent, srvA, srvB, "budh2", func(n int) (int64, int64) {
				out, err := client.Run("h2load", "-n", strconv.Itoa(n), "-c", "1", "-m", "1", "http://"+vipBudH2+"/always503")
				if err != nil {
					t.Fatalf("h2load: %v: %s", err, out)
				}
				m := regexp.MustCompile(`status codes: (\d+) 2xx, 0 3xx, 0 4xx, (\d+) 5xx`).FindStringSubmatch(out)
				if m == nil {
					t.Fatalf("h2load: no status line with only 2xx and 5xx:\n%s", out)
				}
				return int64(atoi(m[1])), int64(atoi(m[2]))
			})
		})
	})
	t.Run("success-rate-ejection", func(t *testing.T) {
		// Server a fails every other request: 50 % against 100 % for
		// the other three. Batches of requests go on until an interval
		// ends and a is ejected; then a gets no request.
		ejected := func() float64 {
			return agent.Metric(t, `weir_endpoint_ejected{cluster="sr",endpoint="`+a+`:8083"}`)
		}
		deadline := time.Now().Add(45 * time.Second)
		codes := map[string]int{}
		for ejected() != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("server a (%d requests, every other one 500) not ejected in 45 s; answers %v", srvA.hits8083.Load(), codes)
			}
			for _, c := range curlCodes(t, client, "http://"+vipSR+"/", 8) {
				codes[c]++
			}
		}
		t.Logf("server a ejected after %d requests to it; answers so far %v", srvA.hits8083.Load(), codes)
		before := srvA.hits8083.Load()
		for i, c := range curlCodes(t, client, "http://"+vipSR+"/", 40) {
			if c != "200" {
				t.Fatalf("request %d answered %s with server a ejected", i, c)
			}
		}
		if n := srvA.hits8083.Load() - before; n != 0 {
			t.Errorf("ejected server a got %d of 40 requests", n)
		}
		for _, port := range []string{"8083", "8084", "8085"} {
			if got := agent.Metric(t, `weir_endpoint_ejections_total{cluster="sr",endpoint="`+b+`:`+port+`"}`); got != 0 {
				t.Errorf("healthy endpoint %s:%s was ejected %v times", b, port, got)
			}
		}
	})
	t.Run("ejection-on-500", func(t *testing.T) {
		for i := 0; srvA.hits8081.Load() < 3; i++ {
			if i > 20 {
				t.Fatalf("server a got %d requests in %d", srvA.hits8081.Load(), i)
			}
			curlCodes(t, client, "http://"+vipEject+"/", 1)
		}
		ejectedAt := time.Now()
		for time.Since(ejectedAt) < ejection-time.Second {
			for i, c := range curlCodes(t, client, "http://"+vipEject+"/", 5) {
				if c != "200" {
					t.Fatalf("request %d answered %s while server a is ejected", i, c)
				}
			}
		}
		if n := srvA.hits8081.Load(); n != 3 {
			t.Fatalf("ejected server a got %d requests, want 3", n)
		}
		if got := agent.Metric(t, `weir_endpoint_ejected{cluster="eject",endpoint="`+a+`:8081"}`); got != 1 {
			t.Errorf("weir_endpoint_ejected for server a = %v, want 1", got)
		}
		time.Sleep(ejection - time.Since(ejectedAt) + 200*time.Millisecond)
		curlCodes(t, client, "http://"+vipEject+"/", 6)
		if srvA.hits8081.Load() == 3 {
			t.Error("server a got no request after its ejection ended")
		}
	})
	t.Run("grpc", func(t *testing.T) {
		tc := testpb.NewTestServiceClient(podGRPCClient(t, client, vipGRes))
		gRetries := func() float64 { return agent.Metric(t, `weir_http_retries_total{protocol="grpc"}`) }
		for i := range 4 {
			if _, err := tc.UnaryCall(t.Context(), &testpb.SimpleRequest{}); err != nil {
				t.Fatalf("call %d: %v (UNAVAILABLE should have been retried)", i, err)
			}
		}
		if got := gRetries(); got != 1 || gA.calls.Load()+gB.calls.Load() != 5 {
			t.Errorf("%v retries, calls %d + %d; want 1 retry and 5 calls", got, gA.calls.Load(), gB.calls.Load())
		}
		before := gA.calls.Load() + gB.calls.Load()
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err := tc.UnaryCall(ctx, &testpb.SimpleRequest{ResponseSize: 1})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("slow call: %v, want DEADLINE_EXCEEDED", err)
		}
		time.Sleep(200 * time.Millisecond)
		if n := gA.calls.Load() + gB.calls.Load() - before; n != 1 {
			t.Errorf("%d calls upstream for one expired call: it was retried", n)
		}
		if got := gRetries(); got != 1 {
			t.Errorf("weir_http_retries_total{protocol=grpc} = %v after the expired call, want 1", got)
		}
		if left := time.Duration(max(gA.left.Load(), gB.left.Load())); left <= 0 || left > 300*time.Millisecond {
			t.Errorf("the upstream was given %v to answer, want under the client's 300ms", left)
		}
	})
}

// budgetPercent and minRetriesPerSecond of the retry-budget services: the
// floor rate is kept at one a second so the 20 % ratio dominates.
const (
	budgetPercent = 20
	budgetFloor   = 1
)

// budgetService is a service over server a (which answers /always503 with
// 503, always) and server b, whose route retries 503 once; outlier
// ejection is off so server a keeps failing first attempts.
func budgetService(name, vip, a, b string) map[string]any {
	return map[string]any{"name": name, "address": vip, "protocol": "http", "endpoints": []string{a + ":8080", b + ":8080"},
		"cluster": map[string]any{
			"retry":   map[string]any{"budgetPercent": budgetPercent, "minRetriesPerSecond": budgetFloor},
			"outlier": map[string]any{"disabled": true},
		},
		"httpRoutes": []any{map[string]any{"name": name, "rules": []any{map[string]any{
			"backendRefs": []any{map[string]any{"service": name}},
			"retry":       map[string]any{"codes": []int{503}, "attempts": 1},
		}}}}}
}

// checkRetryBudget sends n GETs to a failing path through a budgeted
// service and checks the ledger: retries made stay within 20 % of the
// requests (plus the floor rate over the run's length), the budget was
// actually spent (so the bound was reached, not just respected), and every
// request is accounted for: a failed first attempt was either retried onto
// server b (the client sees 200) or refused by the budget (the client sees
// server a's 503).
func checkRetryBudget(t *testing.T, agent *testworld.Agent, srvA, srvB *resServer, cluster string, send func(n int) (n200, n503 int64)) {
	const n = 200
	metric := func(name string) float64 { return agent.Metric(t, name+`{cluster="`+cluster+`"}`) }
	beforeA, beforeB := srvA.hits.Load(), srvB.hits.Load()
	start := time.Now()
	n200, n503 := send(n)
	elapsed := time.Since(start)
	retries, refused := metric("weir_cluster_retries_total"), metric("weir_cluster_retry_budget_exhausted_total")
	hitsA, hitsB := srvA.hits.Load()-beforeA, srvB.hits.Load()-beforeB
	t.Logf("%d requests in %v: %v retries, %v refused by the budget; server a %d, server b %d; client saw %d×200, %d×503",
		n, elapsed.Round(time.Millisecond), retries, refused, hitsA, hitsB, n200, n503)
	// The floor adds budgetFloor a second, and one second's worth on the
	// budget's first use.
	limit := float64(n*budgetPercent)/100 + budgetFloor*(elapsed.Seconds()+1)
	if retries > limit {
		t.Errorf("%v retries for %d requests: over the %d %% budget (limit %.1f with the floor rate)", retries, n, budgetPercent, limit)
	}
	if retries < float64(n*budgetPercent)/100-3 {
		t.Errorf("%v retries for %d requests with %d failing first attempts: the budget was not spent", retries, n, hitsA)
	}
	if refused == 0 {
		t.Error("no retry was refused by the budget, yet more first attempts failed than it allows")
	}
	if n200+n503 != n || int64(retries)+n503 != hitsA || hitsA+hitsB != n+int64(retries) {
		t.Errorf("ledger does not balance: %d×200 + %d×503 of %d; %v retries; server a %d, server b %d",
			n200, n503, n, retries, hitsA, hitsB)
	}
}
