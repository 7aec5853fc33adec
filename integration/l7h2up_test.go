package integration

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// vipH1ToH2 is the address of a service whose endpoints serve only h2c
// (upstreamProtocol: http2).
const vipH1ToH2 = "10.96.1.30:80"

// startH2COnly runs, on port 8083 of p, a Go server that speaks only
// prior-knowledge h2c (an HTTP/1.1 request fails there) and answers
// "<pod> <protocol> <method> <body length>".
func startH2COnly(t *testing.T, p *testworld.Pod) {
	t.Helper()
	ln := p.Listen(t, "0.0.0.0:8083")
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		fmt.Fprintf(w, "%s %s %s %d\n", p.Name, r.Proto, r.Method, len(b))
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// An HTTP/1.1 client sent to an HTTP/2 upstream when the service says so
// (issue 9): curl speaks HTTP/1.1 to the service address, the agent
// forwards every request of its keep-alive connection over h2c to
// endpoints that refuse HTTP/1.1, balanced per request; in both capture
// modes.
func TestL7HTTP1ToHTTP2Upstream(t *testing.T) {
	forEachMode(t, func(t *testing.T, mode string) {
		testworld.RequireTool(t, "curl")
		node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
		agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
		srvA := node.MustAddPod(t, "backend", "server-a")
		srvB := node.MustAddPod(t, "backend", "server-b")
		startH2COnly(t, srvA)
		startH2COnly(t, srvB)
		agent.Stop(t)
		node.StartAgent(t, map[string]any{
			"capture": map[string]any{"namespaces": []string{"demo"}},
			"services": []any{map[string]any{
				"name": "h2-only", "address": vipH1ToH2, "upstreamProtocol": "http2",
				"endpoints": []string{srvA.IP4.String() + ":8083", srvB.IP4.String() + ":8083"},
			}},
		})
		client := node.MustAddPod(t, "demo", "client")

		// Without the agent's translation the endpoints refuse HTTP/1.1.
		if out, err := client.Curl(t, "http://"+srvA.IP4.String()+":8083/", "--http1.1"); err == nil && strings.Contains(out, "HTTP/") {
			t.Fatalf("the h2c-only endpoint answered HTTP/1.1 directly: %q", out)
		}
		var urls []string
		for range 20 {
			urls = append(urls, "http://"+vipH1ToH2+"/")
		}
		out, err := client.Curl(t, urls[0], append([]string{"--http1.1"}, urls[1:]...)...)
		if err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		seen := countLines(out)
		if seen["server-a HTTP/2.0 GET 0"] == 0 || seen["server-b HTTP/2.0 GET 0"] == 0 ||
			seen["server-a HTTP/2.0 GET 0"]+seen["server-b HTTP/2.0 GET 0"] != 20 {
			t.Fatalf("20 HTTP/1.1 requests on one connection were answered %v; want both endpoints, over HTTP/2", seen)
		}
		out, err = client.Curl(t, "http://"+vipH1ToH2+"/", "--http1.1", "-i", "-d", "hello")
		if err != nil || !strings.HasPrefix(out, "HTTP/1.1 200") || !strings.Contains(out, " HTTP/2.0 POST 5\n") {
			t.Fatalf("POST over HTTP/1.1: %v: %q", err, out)
		}
	})
}
