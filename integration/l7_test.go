package integration

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// l7Mesh is a world for the L7 half: two server pods, each running nginx
// (HTTP/1.1 on 8080, h2c on 8082), a gRPC test server (50051), openssl
// s_server (8443, a certificate naming the pod), a WebSocket echo (8090),
// a greeter that speaks first (3306 and 9999) and a byte echo (7000); and
// an agent with one service per feature, every address known only to the
// agent.
type l7Mesh struct {
	node       *testworld.Node
	agent      *testworld.Agent
	srvA, srvB *testworld.Pod
	client     *testworld.Pod
	cfg        map[string]any // the agent's config, for a successor
}

// Service addresses of the L7 world.
const (
	vipWeb       = "10.96.1.10:80"    // auto: both nginx, HTTP/1.1
	vipH2        = "10.96.1.11:80"    // auto: both nginx, h2c
	vipRoutes    = "10.96.1.12:80"    // http: host and path routes, a 90/10 split, filters
	vipGRPC      = "10.96.1.13:50051" // grpc: both gRPC servers
	vipWS        = "10.96.1.14:80"    // auto: the WebSocket echo of server a
	vipTLS       = "10.96.1.15:443"   // auto: TLS routes by SNI to s_server a and b
	vipGreetDecl = "10.96.1.16:3306"  // auto on a default server-first port
	vipGreetAuto = "10.96.1.17:9999"  // auto on an undeclared port
	vipEcho      = "10.96.1.18:7000"  // auto: byte echo of server a
	vipBinary80  = "10.96.1.19:80"    // auto: byte echo of server b, on port 80
)

func newL7Mesh(t *testing.T, mode string) *l7Mesh {
	t.Helper()
	testworld.RequireTool(t, "nginx", "curl", "nghttp", "openssl")
	m := &l7Mesh{node: testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})}
	m.agent = m.node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	m.srvA = m.node.MustAddPod(t, "backend", "server-a")
	m.srvB = m.node.MustAddPod(t, "backend", "server-b")
	for _, p := range []*testworld.Pod{m.srvA, m.srvB} {
		startL7Nginx(t, p)
		startGRPC(t, p)
		startSServer(t, p)
		startGreeter(t, p, 3306)
		startGreeter(t, p, 9999)
		startEcho(t, p)
	}
	startWebSocketEcho(t, m.srvA)
	m.agent.Stop(t)
	a, b := m.srvA.IP4.String(), m.srvB.IP4.String()
	ep := func(port string, ips ...string) []string {
		var out []string
		for _, ip := range ips {
			out = append(out, ip+":"+port)
		}
		return out
	}
	services := []any{
		map[string]any{"name": "web", "address": vipWeb, "endpoints": ep("8080", a, b)},
		map[string]any{"name": "h2", "address": vipH2, "endpoints": ep("8082", a, b)},
		map[string]any{"name": "only-a", "endpoints": ep("8080", a)},
		map[string]any{"name": "only-b", "endpoints": ep("8080", b)},
		map[string]any{"name": "routes", "address": vipRoutes, "protocol": "http", "endpoints": ep("8080", a, b),
			"httpRoutes": []any{
				map[string]any{"name": "by-host", "hostnames": []string{"a.test"}, "rules": []any{
					map[string]any{"backendRefs": []any{map[string]any{"service": "only-a"}}},
				}},
				map[string]any{"name": "split", "hostnames": []string{"split.test"}, "rules": []any{
					map[string]any{"backendRefs": []any{
						map[string]any{"service": "only-a", "weight": 90},
						map[string]any{"service": "only-b", "weight": 10},
					}},
				}},
				map[string]any{"name": "paths", "rules": []any{
					map[string]any{"matches": []any{map[string]any{"path": map[string]any{"type": "PathPrefix", "value": "/b"}}},
						"backendRefs": []any{map[string]any{"service": "only-b"}}},
					map[string]any{"matches": []any{map[string]any{"path": map[string]any{"type": "Exact", "value": "/old"}}},
						"filters": []any{map[string]any{"type": "RequestRedirect", "requestRedirect": map[string]any{"path": map[string]any{"type": "ReplaceFullPath", "replaceFullPath": "/new"}, "statusCode": 301}}}},
					map[string]any{"matches": []any{map[string]any{"path": map[string]any{"value": "/v1"}}},
						"filters": []any{
							map[string]any{"type": "URLRewrite", "urlRewrite": map[string]any{"path": map[string]any{"type": "ReplacePrefixMatch", "replacePrefixMatch": "/uri"}}},
							map[string]any{"type": "RequestHeaderModifier", "requestHeaderModifier": map[string]any{"set": []any{map[string]any{"name": "X-Weir-Test", "value": "set-by-route"}}}},
							map[string]any{"type": "ResponseHeaderModifier", "responseHeaderModifier": map[string]any{"add": []any{map[string]any{"name": "X-Weir-Route", "value": "v1"}}}},
						},
						"backendRefs": []any{map[string]any{"service": "only-a"}}},
					map[string]any{"backendRefs": []any{map[string]any{"service": "only-a"}}},
				}},
			}},
		map[string]any{"name": "grpc", "address": vipGRPC, "protocol": "grpc", "endpoints": ep("50051", a, b)},
		map[string]any{"name": "ws", "address": vipWS, "endpoints": ep("8090", a)},
		map[string]any{"name": "tls-a", "endpoints": ep("8443", a)},
		map[string]any{"name": "tls-b", "endpoints": ep("8443", b)},
		map[string]any{"name": "tls", "address": vipTLS, "endpoints": ep("8443", a), "tlsRoutes": []any{
			map[string]any{"hostnames": []string{"a.test"}, "backendRefs": []any{map[string]any{"service": "tls-a"}}},
			map[string]any{"hostnames": []string{"*.b.test"}, "backendRefs": []any{map[string]any{"service": "tls-b"}}},
		}},
		map[string]any{"name": "greet-declared", "address": vipGreetDecl, "endpoints": ep("3306", a)},
		map[string]any{"name": "greet-auto", "address": vipGreetAuto, "endpoints": ep("9999", a)},
		map[string]any{"name": "echo", "address": vipEcho, "endpoints": ep("7000", a)},
		map[string]any{"name": "binary80", "address": vipBinary80, "endpoints": ep("7000", b)},
	}
	m.cfg = map[string]any{
		"capture":  map[string]any{"namespaces": []string{"demo"}},
		"services": services,
		// Every request logged (the unit tests cover sampling): the
		// access-log subtest looks for one line.
		"accessLog": map[string]any{"enabled": true, "sampleRate": 1},
	}
	m.agent = m.node.StartAgent(t, m.cfg)
	m.client = m.node.MustAddPod(t, "demo", "client")
	return m
}

// startL7Nginx runs nginx answering with the pod's name on 8080 (HTTP/1.1)
// and 8082 (h2c, prior knowledge); /uri echoes the request URI and the
// X-Weir-Test header it received.
func startL7Nginx(t *testing.T, p *testworld.Pod) {
	t.Helper()
	dir := t.TempDir()
	conf := fmt.Sprintf(`
user root;
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
  server {
    listen 8080; listen 8082 http2;
    location / { return 200 "%[2]s\n"; }
    location /uri { return 200 "%[2]s $request_uri $http_x_weir_test\n"; }
  }
}
`, dir, p.Name)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Start(t, "nginx", "-c", path, "-e", filepath.Join(dir, "error.log"))
	p.WaitPort(t, "127.0.0.1:8080")
	p.WaitPort(t, "127.0.0.1:8082")
}

// grpcServer answers the gRPC interop TestService with the pod's name.
type grpcServer struct {
	testpb.UnimplementedTestServiceServer
	name string
}

func (s *grpcServer) UnaryCall(ctx context.Context, in *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Hostname: s.name}, nil
}

// FullDuplexCall echoes each message's payload prefixed with the server's
// name, as it arrives.
func (s *grpcServer) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		body := append([]byte(s.name+":"), in.GetPayload().GetBody()...)
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
}

func startGRPC(t *testing.T, p *testworld.Pod) {
	t.Helper()
	ln := p.Listen(t, "0.0.0.0:50051")
	s := grpc.NewServer()
	testpb.RegisterTestServiceServer(s, &grpcServer{name: p.Name})
	go s.Serve(ln)
	t.Cleanup(s.Stop)
}

// startSServer runs openssl s_server on 8443 with a self-signed
// certificate whose subject names the pod.
func startSServer(t *testing.T, p *testworld.Pod) {
	t.Helper()
	dir := t.TempDir()
	key, crt := filepath.Join(dir, "key.pem"), filepath.Join(dir, "crt.pem")
	if out, err := p.Run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", key, "-out", crt, "-days", "1", "-subj", "/CN="+p.Name); err != nil {
		t.Fatalf("make a certificate: %v: %s", err, out)
	}
	p.Start(t, "openssl", "s_server", "-accept", "8443", "-cert", crt, "-key", key, "-www", "-quiet")
	p.WaitPort(t, "127.0.0.1:8443")
}

// startGreeter runs a server that speaks first: on accept it writes
// "hello from <pod>\n", then echoes lines.
func startGreeter(t *testing.T, p *testworld.Pod, port int) {
	t.Helper()
	ln := p.Listen(t, fmt.Sprintf("0.0.0.0:%d", port))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "hello from %s\n", p.Name)
				io.Copy(c, c)
			}()
		}
	}()
}

func startWebSocketEcho(t *testing.T, p *testworld.Pod) {
	t.Helper()
	ln := p.Listen(t, "0.0.0.0:8090")
	srv := &http.Server{Handler: websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) })}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func forEachMode(t *testing.T, f func(t *testing.T, mode string)) {
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { f(t, mode) })
	}
}

// Must show 2 (issue 9): HTTP/1.1 and HTTP/2 per-request balancing, host
// and path routes, a weighted split, filters, gRPC unary and bidi
// streaming balanced per call, a WebSocket echo; in both capture modes.
func TestL7(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		m := newL7Mesh(t, mode)
		t.Run("http1-keepalive-balanced-per-request", func(t *testing.T) {
			// One curl, 20 URLs, one keep-alive connection: L4 would pin it
			// to one endpoint.
			var urls []string
			for range 20 {
				urls = append(urls, "http://"+vipWeb+"/")
			}
			out, err := m.client.Curl(t, urls[0], urls[1:]...)
			if err != nil {
				t.Fatalf("curl: %v: %s", err, out)
			}
			seen := countLines(out)
			if seen["server-a"] == 0 || seen["server-b"] == 0 || seen["server-a"]+seen["server-b"] != 20 {
				t.Fatalf("20 requests on one connection were answered %v; want both endpoints and nothing else", seen)
			}
		})
		t.Run("http2-prior-knowledge", func(t *testing.T) {
			out, err := m.client.Curl(t, "http://"+vipH2+"/", "--http2-prior-knowledge")
			if err != nil || !strings.HasPrefix(out, "server-") {
				t.Fatalf("curl --http2-prior-knowledge: %v: %q", err, out)
			}
			var urls []string
			for i := range 20 { // nghttp fetches a repeated URI once
				urls = append(urls, fmt.Sprintf("http://%s/?i=%d", vipH2, i))
			}
			out, err = m.client.Run("nghttp", append([]string{"-t", "10"}, urls...)...)
			if err != nil {
				t.Fatalf("nghttp: %v: %s", err, out)
			}
			seen := countLines(out)
			if seen["server-a"] == 0 || seen["server-b"] == 0 || seen["server-a"]+seen["server-b"] != 20 {
				t.Fatalf("20 streams on one HTTP/2 connection were answered %v; want both endpoints", seen)
			}
		})
		t.Run("routes", func(t *testing.T) {
			for _, tc := range []struct{ host, path, want string }{
				{"a.test", "/b/x", "server-a"}, // the host route wins whatever the path
				{"other.test", "/b/x", "server-b"},
				{"other.test", "/bx", "server-a"}, // a prefix matches whole segments
				{"other.test", "/", "server-a"},
			} {
				for range 4 {
					out, err := m.client.Curl(t, "http://"+vipRoutes+tc.path, "-H", "Host: "+tc.host)
					if err != nil || strings.TrimSpace(out) != tc.want {
						t.Fatalf("Host %s path %s: %v: %q, want %s", tc.host, tc.path, err, out, tc.want)
					}
				}
			}
			out, err := m.client.Curl(t, "http://"+vipRoutes+"/v1/users?x=1", "-i", "-H", "X-Weir-Test: from-client")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out, "server-a /uri/users?x=1 set-by-route") {
				t.Errorf("rewrite and header set: got %q", out)
			}
			if !regexp.MustCompile(`(?i)\r\nx-weir-route: v1\r\n`).MatchString(out) {
				t.Errorf("response header not added: %q", out)
			}
			out, err = m.client.Curl(t, "http://"+vipRoutes+"/old?q=1", "-i", "-H", "Host: shop.test")
			if err != nil || !strings.Contains(out, "301") || !regexp.MustCompile(`(?i)location: http://shop.test/new\?q=1`).MatchString(out) {
				t.Errorf("redirect: %v: %q", err, out)
			}
		})
		t.Run("weighted-split-90-10", func(t *testing.T) {
			// 1,000 requests over a few keep-alive connections.
			var urls []string
			for range 100 {
				urls = append(urls, "http://"+vipRoutes+"/")
			}
			seen := map[string]int{}
			for range 10 {
				out, err := m.client.Curl(t, urls[0], append(urls[1:], "-H", "Host: split.test")...)
				if err != nil {
					t.Fatalf("curl: %v: %s", err, out)
				}
				for k, v := range countLines(out) {
					seen[k] += v
				}
			}
			a := seen["server-a"]
			if seen["server-a"]+seen["server-b"] != 1000 || a < 850 || a > 950 {
				t.Fatalf("90/10 split over 1000 requests: %v; want server-a within 850..950", seen)
			}
		})
		t.Run("grpc-unary-and-bidi-balanced-per-call", func(t *testing.T) {
			cc := m.grpcClient(t)
			c := testpb.NewTestServiceClient(cc)
			seen := map[string]int{}
			for range 20 {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				r, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
				cancel()
				if err != nil {
					t.Fatalf("unary call: %v", err)
				}
				seen[r.GetHostname()]++
			}
			if seen["server-a"] == 0 || seen["server-b"] == 0 {
				t.Fatalf("20 unary calls on one connection went to %v; want both endpoints", seen)
			}
			servers := map[string]bool{}
			for range 6 {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				st, err := c.FullDuplexCall(ctx)
				if err != nil {
					cancel()
					t.Fatal(err)
				}
				for i := range 5 {
					msg := fmt.Sprintf("m%d", i)
					if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
						t.Fatal(err)
					}
					// Each answer arrives before the next message is sent:
					// the stream is relayed, not buffered.
					r, err := st.Recv()
					if err != nil {
						t.Fatalf("bidi recv %d: %v", i, err)
					}
					name, body, _ := strings.Cut(string(r.GetPayload().GetBody()), ":")
					if body != msg {
						t.Fatalf("bidi echo %q, want %q", body, msg)
					}
					servers[name] = true
				}
				st.CloseSend()
				if _, err := st.Recv(); err != io.EOF {
					t.Fatalf("bidi end: %v, want EOF", err)
				}
				cancel()
			}
			if len(servers) != 2 {
				t.Fatalf("6 bidi calls on one connection went to %v; want both endpoints", servers)
			}
		})
		t.Run("access-log", func(t *testing.T) {
			// One request with a trace id and a query that must not be
			// logged.
			const trace = "4bf92f3577b34da6a3ce929d0e0e4736"
			out, err := m.client.Curl(t, "http://"+vipRoutes+"/nowhere?secret=1", "-o", "/dev/null", "-w", "%{http_code}",
				"-H", "Host: a.test.invalid", "-H", "traceparent: 00-"+trace+"-00f067aa0ba902b7-01")
			if err != nil || out != "200" {
				t.Fatalf("curl: %v %q", err, out)
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				for _, line := range strings.Split(m.agent.Log(), "\n") {
					if !strings.Contains(line, `"msg":"access"`) || !strings.Contains(line, trace) {
						continue
					}
					for _, want := range []string{`"pod":"demo/client"`, `"protocol":"http1"`, `"method":"GET"`, `"authority":"a.test.invalid"`, `"path":"/nowhere"`} {
						if !strings.Contains(line, want) {
							t.Fatalf("access log line lacks %s: %s", want, line)
						}
					}
					if strings.Contains(line, "secret") {
						t.Fatalf("access log line holds the query: %s", line)
					}
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("no access log line with trace id %s in the agent's log", trace)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
		t.Run("websocket-echo", func(t *testing.T) {
			conn, err := m.client.Dial(vipWS, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			cfg, _ := websocket.NewConfig("ws://"+vipWS+"/", "http://"+vipWS+"/")
			ws, err := websocket.NewClient(cfg, conn)
			if err != nil {
				t.Fatalf("websocket handshake through the agent: %v", err)
			}
			for i := range 5 {
				msg := fmt.Sprintf("frame %d", i)
				ws.SetDeadline(time.Now().Add(5 * time.Second))
				if err := websocket.Message.Send(ws, msg); err != nil {
					t.Fatal(err)
				}
				var got string
				if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
					t.Fatalf("websocket echo: %v: %q, want %q", err, got, msg)
				}
			}
		})
	})
}

func (m *l7Mesh) grpcClient(t *testing.T) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+vipGRPC,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return m.client.Dial(addr, 5*time.Second)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// Must show 3 and 4 (issue 9): sniffing never costs a server-first
// protocol on a declared port anything and on another port no more than the
// deadline; a client silent for 5 s still works; a binary protocol on port
// 80 is byte-exact; TLS goes by SNI, bytes untouched.
func TestSniffingAndTLS(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		m := newL7Mesh(t, mode)
		t.Run("server-first", func(t *testing.T) {
			greet := func(vip string) time.Duration {
				best := time.Hour
				for range 3 {
					start := time.Now()
					c, err := m.client.Dial(vip, 5*time.Second)
					if err != nil {
						t.Fatal(err)
					}
					c.SetDeadline(time.Now().Add(5 * time.Second))
					line, err := bufio.NewReader(c).ReadString('\n')
					c.Close()
					if err != nil || line != "hello from server-a\n" {
						t.Fatalf("greeting via %s: %v: %q", vip, err, line)
					}
					best = min(best, time.Since(start))
				}
				return best
			}
			declared, undeclared := greet(vipGreetDecl), greet(vipGreetAuto)
			t.Logf("greeting after %v on a server-first port, %v on an undeclared one (deadline 100ms)", declared, undeclared)
			if declared >= 50*time.Millisecond {
				t.Errorf("a declared server-first port waited %v for its greeting; want no sniffing delay", declared)
			}
			if undeclared < 90*time.Millisecond || undeclared > 400*time.Millisecond {
				t.Errorf("an undeclared port greeted after %v; want about the 100ms deadline", undeclared)
			}
		})
		t.Run("silent-client-then-talks", func(t *testing.T) {
			c, err := m.client.Dial(vipEcho, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			time.Sleep(5 * time.Second)
			c.SetDeadline(time.Now().Add(5 * time.Second))
			fmt.Fprintln(c, "late but here")
			line, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || line != "late but here\n" {
				t.Fatalf("echo after 5 s of silence: %v: %q", err, line)
			}
		})
		t.Run("binary-on-port-80-byte-exact", func(t *testing.T) {
			c, err := m.client.Dial(vipBinary80, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			payload := make([]byte, 256<<10)
			rand.Read(payload)
			payload[0] = 0x00 // no protocol starts like this
			c.SetDeadline(time.Now().Add(10 * time.Second))
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Write(payload)
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			wg.Wait()
			if err != nil || !bytes.Equal(got, payload) {
				t.Fatalf("binary echo on port 80: %v, %d of %d bytes, equal %v", err, len(got), len(payload), bytes.Equal(got, payload))
			}
		})
		t.Run("tls-by-sni", func(t *testing.T) {
			for sni, want := range map[string]string{"a.test": "server-a", "x.b.test": "server-b"} {
				out, err := m.client.Run("sh", "-c", fmt.Sprintf("echo Q | timeout 10 openssl s_client -connect %s -servername %s 2>&1", vipTLS, sni))
				if err != nil {
					t.Fatalf("s_client -servername %s: %v: %s", sni, err, out)
				}
				if !strings.Contains(out, "CN = "+want) {
					t.Fatalf("SNI %s reached %q; want the certificate of %s", sni, out, want)
				}
				out, err = m.client.Curl(t, "https://"+sni+"/", "-k", "-v", "--resolve", sni+":443:"+strings.Split(vipTLS, ":")[0])
				if err != nil || !strings.Contains(out, "CN="+want) || !strings.Contains(out, "s_server") {
					t.Fatalf("curl over TLS with SNI %s: %v: %s", sni, err, out)
				}
			}
		})
		if got := m.agent.Metric(t, `weir_sniff_total{result="tls"}`); got < 4 {
			t.Errorf("weir_sniff_total{result=\"tls\"} = %v, want at least 4", got)
		}
	})
}

// countLines counts the trimmed non-empty lines of out.
func countLines(out string) map[string]int {
	seen := map[string]int{}
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			seen[l]++
		}
	}
	return seen
}
