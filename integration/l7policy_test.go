package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/proxy/http/otlptest"
)

// Service addresses of the policy world.
const (
	vipPolicy  = "10.96.1.40:80"    // http: rate limits and faults per path
	vipGPolicy = "10.96.1.41:50052" // grpc: UnaryCall rate limited, EmptyCall aborted
	vipSLimit  = "10.96.1.42:80"    // http, no routes: a service-wide rate limit
)

// traceSeen records the traceparent each request reached a backend with,
// by the x-req header the client set.
type traceSeen struct {
	mu   sync.Mutex
	byID map[string]string
	hits int
}

func (s *traceSeen) add(id, tp string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.hits++
	if id != "" {
		s.byID[id] = tp
	}
}

func (s *traceSeen) get(id string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.byID[id]
}

func (s *traceSeen) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits
}

// policyGRPC answers UnaryCall and records the traceparent it came with.
type policyGRPC struct {
	testpb.UnimplementedTestServiceServer
	seen *traceSeen
}

func (s *policyGRPC) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	id, tp := "", ""
	if v := md.Get("x-req"); len(v) > 0 {
		id = v[0]
	}
	if v := md.Get("traceparent"); len(v) > 0 {
		tp = v[0]
	}
	s.seen.add(id, tp)
	return &testpb.SimpleResponse{}, nil
}

// startPolicyBackend serves HTTP/1.1 and h2c on 8080 and gRPC on 50052.
func startPolicyBackend(t *testing.T, p *testworld.Pod) (httpSeen, grpcSeen *traceSeen) {
	t.Helper()
	httpSeen, grpcSeen = &traceSeen{byID: map[string]string{}}, &traceSeen{byID: map[string]string{}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpSeen.add(r.Header.Get("X-Req"), r.Header.Get("Traceparent"))
		fmt.Fprintln(w, "ok")
	})}
	srv.Protocols = new(http.Protocols)
	srv.Protocols.SetHTTP1(true)
	srv.Protocols.SetUnencryptedHTTP2(true)
	go srv.Serve(p.Listen(t, "0.0.0.0:8080"))
	t.Cleanup(func() { srv.Close() })
	gs := grpc.NewServer()
	testpb.RegisterTestServiceServer(gs, &policyGRPC{seen: grpcSeen})
	go gs.Serve(p.Listen(t, "0.0.0.0:50052"))
	t.Cleanup(gs.Stop)
	return httpSeen, grpcSeen
}

// series names one Prometheus series as the client library writes it:
// labels sorted by name.
func series(name string, labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for k := range labels {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var b strings.Builder
	b.WriteString(name + "{")
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%s=%q", k, labels[k])
	}
	b.WriteString("}")
	return b.String()
}

// Must show 4 and 5 (issue 10) end to end: rate limits and faults seen by
// curl, h2load and a grpc-go client; per-route counters and histogram
// counts that match a known mix of requests exactly; and OTLP spans, sent
// by the agent to a receiver built here, whose trace ids are those of the
// clients' traceparent headers.
func TestL7Policy(t *testing.T) {
	testworld.RequireTool(t, "curl", "h2load")
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": "redirect"}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	backend := node.MustAddPod(t, "backend", "server-a")
	httpSeen, grpcSeen := startPolicyBackend(t, backend)
	agent.Stop(t)

	// The OTLP receiver listens in the node's namespace, where the agent
	// runs.
	ln := node.Listen(t, "127.0.0.1:0")
	rcv := otlptest.Serve(ln)
	t.Cleanup(rcv.Stop)

	ip := backend.IP4.String()
	prefix := func(p string) []any { return []any{map[string]any{"path": map[string]any{"value": p}}} }
	to := func(svc string) []any { return []any{map[string]any{"service": svc}} }
	// A rate of one token per 1000 s: within the test the bucket holds
	// exactly its burst, so counts are exact whatever the machine's load.
	const slow = 0.001
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"tracing": map[string]any{"enabled": true, "endpoint": ln.Addr().String(), "sampleRatio": 1, "batchTimeout": "200ms"},
		"services": []any{
			map[string]any{"name": "policy", "address": vipPolicy, "protocol": "http", "endpoints": []string{ip + ":8080"},
				"httpRoutes": []any{map[string]any{"name": "policy", "rules": []any{
					map[string]any{"matches": prefix("/limited"), "backendRefs": to("policy"),
						"rateLimit": map[string]any{"requestsPerSecond": slow, "burst": 5}},
					map[string]any{"matches": prefix("/h2limited"), "backendRefs": to("policy"),
						"rateLimit": map[string]any{"requestsPerSecond": slow, "burst": 20}},
					map[string]any{"matches": prefix("/abort"), "backendRefs": to("policy"),
						"fault": map[string]any{"abort": map[string]any{"httpStatus": 503}}},
					map[string]any{"matches": prefix("/delay"), "backendRefs": to("policy"),
						"fault": map[string]any{"delay": map[string]any{"fixedDelay": "400ms", "percentage": 100}}},
					map[string]any{"matches": prefix("/half"), "backendRefs": to("policy"),
						"fault": map[string]any{"abort": map[string]any{"httpStatus": 418, "percentage": 50}}},
					map[string]any{"backendRefs": to("policy")},
				}}}},
			map[string]any{"name": "slimit", "address": vipSLimit, "protocol": "http", "endpoints": []string{ip + ":8080"},
				"rateLimit": map[string]any{"requestsPerSecond": slow, "burst": 2}},
			map[string]any{"name": "gpolicy", "address": vipGPolicy, "protocol": "grpc", "endpoints": []string{ip + ":50052"},
				"httpRoutes": []any{map[string]any{"name": "gpolicy", "rules": []any{
					map[string]any{"matches": prefix("/grpc.testing.TestService/UnaryCall"), "backendRefs": to("gpolicy"),
						"rateLimit": map[string]any{"requestsPerSecond": slow, "burst": 3}},
					map[string]any{"matches": prefix("/grpc.testing.TestService/EmptyCall"), "backendRefs": to("gpolicy"),
						"fault": map[string]any{"abort": map[string]any{"grpcStatus": "PERMISSION_DENIED"}}},
				}}}},
		},
	})
	client := node.MustAddPod(t, "demo", "client")
	route := func(rt, cluster, code, grpcCode string) string {
		return series("weir_route_requests_total", map[string]string{
			"service": strings.Split(rt, "/")[0], "route": rt, "cluster": cluster, "code": code, "grpc_status": grpcCode})
	}
	hist := func(rt, cluster string) string {
		return series("weir_route_request_duration_seconds_count", map[string]string{
			"service": strings.Split(rt, "/")[0], "route": rt, "cluster": cluster})
	}
	policy := func(rt, what string) string {
		return series("weir_route_policy_total", map[string]string{"service": strings.Split(rt, "/")[0], "route": rt, "policy": what})
	}
	expect := func(t *testing.T, want map[string]float64) {
		t.Helper()
		for s, n := range want {
			if got := agent.Metric(t, s); got != n {
				t.Errorf("%s = %v, want %v", s, got, n)
			}
		}
	}

	t.Run("rate-limit-curl", func(t *testing.T) {
		out, err := client.Curl(t, "http://"+vipPolicy+"/limited", "-D", "-", "-w", "code=%{http_code}\n",
			"http://"+vipPolicy+"/limited", "http://"+vipPolicy+"/limited", "http://"+vipPolicy+"/limited",
			"http://"+vipPolicy+"/limited", "http://"+vipPolicy+"/limited", "http://"+vipPolicy+"/limited",
			"http://"+vipPolicy+"/limited")
		if err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		codes := regexp.MustCompile(`code=(\d+)`).FindAllStringSubmatch(out, -1)
		var got []string
		for _, c := range codes {
			got = append(got, c[1])
		}
		if strings.Join(got, " ") != "200 200 200 200 200 429 429 429" {
			t.Fatalf("8 requests against a burst of 5 answered %v, want 5×200 then 3×429", got)
		}
		ra := regexp.MustCompile(`(?i)retry-after: (\d+)`).FindAllStringSubmatch(out, -1)
		if len(ra) != 3 {
			t.Fatalf("%d Retry-After headers, want one per 429:\n%s", len(ra), out)
		}
		if n, _ := strconv.Atoi(ra[0][1]); n < 900 || n > 1000 {
			t.Errorf("Retry-After %s s, want about 1000 (one token per 1000 s)", ra[0][1])
		}
		expect(t, map[string]float64{
			route("policy/0", "policy", "200", ""): 5, route("policy/0", "", "429", ""): 3,
			hist("policy/0", "policy"): 5, hist("policy/0", ""): 3,
			policy("policy/0", "rate_limited"): 3,
			series("weir_http_local_replies_total", map[string]string{"code": "429", "reason": "rate_limited"}): 3,
		})
	})

	t.Run("service-rate-limit", func(t *testing.T) {
		codes := curlCodes(t, client, "http://"+vipSLimit+"/any", 4)
		if strings.Join(codes, " ") != "200 200 429 429" {
			t.Fatalf("4 requests against a service burst of 2 answered %v", codes)
		}
		// A service without routes counts under route "".
		expect(t, map[string]float64{
			series("weir_route_requests_total", map[string]string{"service": "slimit", "route": "", "cluster": "slimit", "code": "200", "grpc_status": ""}): 2,
			series("weir_route_requests_total", map[string]string{"service": "slimit", "route": "", "cluster": "", "code": "429", "grpc_status": ""}):       2,
			series("weir_route_policy_total", map[string]string{"service": "slimit", "route": "", "policy": "rate_limited"}):                                2,
		})
	})

	t.Run("rate-limit-h2load", func(t *testing.T) {
		out, err := client.Run("h2load", "-n", "50", "-c", "1", "-m", "1", "http://"+vipPolicy+"/h2limited")
		if err != nil {
			t.Fatalf("h2load: %v: %s", err, out)
		}
		if !strings.Contains(out, "status codes: 20 2xx, 0 3xx, 30 4xx, 0 5xx") {
			t.Fatalf("h2load (50 requests, burst 20): want 20 2xx and 30 4xx:\n%s", out)
		}
		expect(t, map[string]float64{
			route("policy/1", "policy", "200", ""): 20, route("policy/1", "", "429", ""): 30,
			hist("policy/1", "policy"): 20, hist("policy/1", ""): 30,
			policy("policy/1", "rate_limited"): 30,
		})
	})

	t.Run("fault-abort-and-delay", func(t *testing.T) {
		before := httpSeen.count()
		out, err := client.Curl(t, "http://"+vipPolicy+"/abort", "-o", "/dev/null", "-w", "code=%{http_code}\n")
		if err != nil || !strings.Contains(out, "code=503") {
			t.Fatalf("abort: %v: %q, want 503", err, out)
		}
		if httpSeen.count() != before {
			t.Fatal("an aborted request reached the backend")
		}
		out, err = client.Curl(t, "http://"+vipPolicy+"/delay", "-o", "/dev/null", "-w", "code=%{http_code} t=%{time_total}\n")
		if err != nil {
			t.Fatalf("delay: %v: %s", err, out)
		}
		m := regexp.MustCompile(`code=200 t=([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("delay: %q, want 200", out)
		}
		if d, _ := strconv.ParseFloat(m[1], 64); d < 0.4 {
			t.Errorf("a request delayed 400ms took %ss", m[1])
		}
		// 50 % aborts with 418 over 60 requests (h2load, HTTP/2): the
		// client's 4xx count is exactly the agent's abort count.
		out, err = client.Run("h2load", "-n", "60", "-c", "1", "-m", "4", "http://"+vipPolicy+"/half")
		if err != nil {
			t.Fatalf("h2load: %v: %s", err, out)
		}
		sm := regexp.MustCompile(`status codes: (\d+) 2xx, 0 3xx, (\d+) 4xx, 0 5xx`).FindStringSubmatch(out)
		if sm == nil {
			t.Fatalf("h2load /half: %s", out)
		}
		ok, aborted := atoi(sm[1]), atoi(sm[2])
		if ok+aborted != 60 || aborted == 0 || ok == 0 {
			t.Fatalf("/half: %d 2xx, %d 4xx of 60: want both, summing to 60", ok, aborted)
		}
		expect(t, map[string]float64{
			route("policy/2", "", "503", ""): 1, policy("policy/2", "fault_abort"): 1,
			route("policy/3", "policy", "200", ""): 1, policy("policy/3", "fault_delay"): 1,
			route("policy/4", "", "418", ""): float64(aborted), route("policy/4", "policy", "200", ""): float64(ok),
			policy("policy/4", "fault_abort"): float64(aborted),
			hist("policy/4", ""):              float64(aborted), hist("policy/4", "policy"): float64(ok),
		})
		// The delayed request's duration is in the histogram's 1 s bucket,
		// not in the 0.25 s one (the client library writes le last).
		le := func(b string) string {
			return `weir_route_request_duration_seconds_bucket{cluster="policy",route="policy/3",service="policy",le="` + b + `"}`
		}
		expect(t, map[string]float64{le("0.25"): 0, le("1"): 1})
	})

	t.Run("grpc", func(t *testing.T) {
		cc := podGRPCClient(t, client, vipGPolicy)
		tc := testpb.NewTestServiceClient(cc)
		var got []codes.Code
		for range 5 {
			_, err := tc.UnaryCall(t.Context(), &testpb.SimpleRequest{})
			got = append(got, status.Code(err))
		}
		want := []codes.Code{codes.OK, codes.OK, codes.OK, codes.ResourceExhausted, codes.ResourceExhausted}
		if !slices.Equal(got, want) {
			t.Fatalf("5 calls against a burst of 3: %v, want %v", got, want)
		}
		if _, err := tc.EmptyCall(t.Context(), &testpb.Empty{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("aborted EmptyCall: %v, want PERMISSION_DENIED", err)
		}
		expect(t, map[string]float64{
			route("gpolicy/0", "gpolicy", "200", "0"): 3, route("gpolicy/0", "", "429", "8"): 2,
			hist("gpolicy/0", "gpolicy"): 3, hist("gpolicy/0", ""): 2,
			route("gpolicy/1", "", "403", "7"): 1, policy("gpolicy/1", "fault_abort"): 1,
		})
	})

	t.Run("otlp-spans", func(t *testing.T) {
		const tid, sid = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
		// curl with a sampled traceparent.
		if out, err := client.Curl(t, "http://"+vipPolicy+"/traced", "-H", "traceparent: 00-"+tid+"-"+sid+"-01", "-H", "x-req: curl"); err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		up := strings.Split(httpSeen.get("curl"), "-")
		if len(up) != 4 || up[1] != tid || up[2] == sid || up[3] != "01" {
			t.Fatalf("the backend got traceparent %q: want trace %s with the agent's own span id", httpSeen.get("curl"), tid)
		}
		// curl with none: the agent starts a trace (sampleRatio 1).
		if out, err := client.Curl(t, "http://"+vipPolicy+"/untraced", "-H", "x-req: fresh"); err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		fresh := strings.Split(httpSeen.get("fresh"), "-")
		if len(fresh) != 4 || len(fresh[1]) != 32 || fresh[3] != "01" {
			t.Fatalf("the backend got traceparent %q for a request without one: want a new sampled trace", httpSeen.get("fresh"))
		}
		// grpc-go with a traceparent in its metadata.
		const gtid, gsid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
		cc := podGRPCClient(t, client, vipGPolicy)
		ctx := metadata.AppendToOutgoingContext(t.Context(), "traceparent", "00-"+gtid+"-"+gsid+"-01", "x-req", "grpc")
		// The UnaryCall rule's burst is spent: the call is answered 429 /
		// RESOURCE_EXHAUSTED by the agent, and still gets its span.
		if _, err := testpb.NewTestServiceClient(cc).UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.ResourceExhausted {
			t.Fatalf("traced gRPC call: %v, want RESOURCE_EXHAUSTED (burst spent)", err)
		}

		spans, ok := rcv.WaitFor(15*time.Second, func(s []otlptest.Span) bool {
			n := 0
			for _, sp := range s {
				if sp.TraceID == tid || sp.TraceID == fresh[1] || sp.TraceID == gtid {
					n++
				}
			}
			return n >= 3
		})
		if !ok {
			t.Fatalf("the receiver got %d spans, not one per traced request (trace ids %s, %s, %s)", len(spans), tid, fresh[1], gtid)
		}
		for _, sp := range spans {
			switch sp.TraceID {
			case tid:
				if sp.ParentSpanID != sid || sp.SpanID != up[2] || sp.Attrs["http.response.status_code"] != "200" || sp.Attrs["weir.route"] != "policy/5" {
					t.Errorf("curl's span %+v: want parent %s, id %s (sent upstream), status 200, route policy/5", sp, sid, up[2])
				}
			case fresh[1]:
				if sp.ParentSpanID != "" || sp.SpanID != fresh[2] {
					t.Errorf("fresh trace's span %+v: want a root span with id %s", sp, fresh[2])
				}
			case gtid:
				if sp.ParentSpanID != gsid || sp.Attrs["rpc.grpc.status_code"] != "8" || sp.Attrs["http.response.status_code"] != "429" {
					t.Errorf("gRPC span %+v: want parent %s, grpc status 8", sp, gsid)
				}
			}
		}
		if grpcSeen.get("grpc") != "" {
			t.Error("the rate-limited gRPC call reached the backend")
		}
	})
}

// podGRPCClient is a grpc-go client connection from inside pod p to
// target, closed at cleanup.
func podGRPCClient(t *testing.T, p *testworld.Pod, target string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+target,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return p.Dial(addr, 5*time.Second)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

func atoi(s string) int {
	n, _ := strconv.Atoi(s)
	return n
}
