package integration

import (
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Service addresses of the mirror world.
const (
	vipMirror     = "10.96.1.40:80" // primary: server a; every request copied to the shadow pod
	vipMirrorDown = "10.96.1.41:80" // primary: server a; copies go to a port nothing listens on
)

// copySeen is one request as a server saw it.
type copySeen struct {
	method, path, tag, body string
	h2                      bool
}

// recorder is a pod's HTTP/1.1 and h2c server on 8080 that records the
// requests it gets and answers its pod's name.
type recorder struct {
	name string
	mu   sync.Mutex
	seen []copySeen
}

func startRecorder(t *testing.T, p *testworld.Pod) *recorder {
	t.Helper()
	r := &recorder{name: p.Name}
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := &http.Server{Protocols: &protos, Handler: http.HandlerFunc(func(w http.ResponseWriter, q *http.Request) {
		b, _ := io.ReadAll(q.Body)
		r.mu.Lock()
		r.seen = append(r.seen, copySeen{q.Method, q.URL.RequestURI(), q.Header.Get("x-tag"), string(b), q.ProtoMajor == 2})
		r.mu.Unlock()
		fmt.Fprintln(w, r.name)
	})}
	go srv.Serve(p.Listen(t, "0.0.0.0:8080"))
	t.Cleanup(func() { srv.Close() })
	return r
}

// count returns how many requests the recorder saw that match.
func (r *recorder) count(match func(copySeen) bool) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, s := range r.seen {
		if match(s) {
			n++
		}
	}
	return n
}

// Issue 10's RequestMirror end to end: a rule mirroring to the shadow
// service gets each request's copy there (curl's HTTP/1.1, h2load's h2c,
// body and header modifier included) while clients get the primary's
// answers; with the mirror backend down, clients see no difference and
// the agent counts the failed copies.
func TestL7Mirror(t *testing.T) {
	testworld.RequireTool(t, "curl", "h2load")
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": "redirect"}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	podA := node.MustAddPod(t, "backend", "server-a")
	podS := node.MustAddPod(t, "backend", "shadow")
	primary, shadow := startRecorder(t, podA), startRecorder(t, podS)
	agent.Stop(t)
	a, s := podA.IP4.String(), podS.IP4.String()
	mirrored := func(name, vip, mirrorService string) map[string]any {
		return map[string]any{"name": name, "address": vip, "protocol": "http", "endpoints": []string{a + ":8080"},
			"httpRoutes": []any{map[string]any{"name": name, "rules": []any{map[string]any{
				"backendRefs": []any{map[string]any{"service": name}},
				"filters": []any{
					map[string]any{"type": "RequestHeaderModifier", "requestHeaderModifier": map[string]any{
						"set": []any{map[string]any{"name": "x-tag", "value": "copied"}}}},
					map[string]any{"type": "RequestMirror", "requestMirror": map[string]any{
						"backendRef": map[string]any{"service": mirrorService}}},
				},
			}}}}}
	}
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{
			mirrored("mir", vipMirror, "shadow"), mirrored("mirdown", vipMirrorDown, "deadshadow"),
			map[string]any{"name": "shadow", "protocol": "http", "endpoints": []string{s + ":8080"}},
			// Nothing listens on 9; ejection off so every copy tries.
			map[string]any{"name": "deadshadow", "protocol": "http", "endpoints": []string{s + ":9"},
				"cluster": map[string]any{"outlier": map[string]any{"disabled": true}}},
		},
	})
	client := node.MustAddPod(t, "demo", "client")
	policy := func(svc, what string) float64 {
		return agent.Metric(t, series("weir_route_policy_total", map[string]string{"service": svc, "route": svc + "/0", "policy": what}))
	}
	waitCount := func(t *testing.T, what string, want int, got func() int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for got() != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s: %d, want %d", what, got(), want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	t.Run("http1", func(t *testing.T) {
		for i, c := range curlCodes(t, client, "http://"+vipMirror+"/get?x=1", 10) {
			if c != "200" {
				t.Fatalf("GET %d answered %s", i, c)
			}
		}
		out, err := client.Curl(t, "http://"+vipMirror+"/post", "-d", "payload-1")
		if err != nil || strings.TrimSpace(out) != primary.name {
			t.Fatalf("POST: %v: %q, want the primary's answer", err, out)
		}
		isGet := func(c copySeen) bool { return c == copySeen{"GET", "/get?x=1", "copied", "", false} }
		isPost := func(c copySeen) bool { return c == copySeen{"POST", "/post", "copied", "payload-1", false} }
		waitCount(t, "GET copies at the shadow", 10, func() int { return shadow.count(isGet) })
		waitCount(t, "POST copies at the shadow", 1, func() int { return shadow.count(isPost) })
		if n, m := primary.count(isGet), primary.count(isPost); n != 10 || m != 1 {
			t.Errorf("primary got %d GETs and %d POSTs, want 10 and 1", n, m)
		}
		if got := policy("mir", "mirror"); got != 11 {
			t.Errorf("mirror copies counted %v, want 11", got)
		}
	})
	t.Run("h2c", func(t *testing.T) {
		out, err := client.Run("h2load", "-n", "20", "-c", "1", "-m", "4", "http://"+vipMirror+"/h2")
		if err != nil || !strings.Contains(out, "status codes: 20 2xx") {
			t.Fatalf("h2load: %v: %s", err, out)
		}
		isH2 := func(c copySeen) bool { return c == copySeen{"GET", "/h2", "copied", "", true} }
		waitCount(t, "h2c copies at the shadow", 20, func() int { return shadow.count(isH2) })
		if n := primary.count(isH2); n != 20 {
			t.Errorf("primary got %d h2c requests, want 20", n)
		}
	})
	t.Run("mirror-down", func(t *testing.T) {
		before := primary.count(func(copySeen) bool { return true })
		for i, c := range curlCodes(t, client, "http://"+vipMirrorDown+"/", 10) {
			if c != "200" {
				t.Fatalf("request %d answered %s with the mirror backend down", i, c)
			}
		}
		out, err := client.Run("h2load", "-n", "10", "-c", "1", "-m", "1", "http://"+vipMirrorDown+"/")
		if err != nil || !regexp.MustCompile(`status codes: 10 2xx, 0 3xx, 0 4xx, 0 5xx`).MatchString(out) {
			t.Fatalf("h2load with the mirror backend down: %v: %s", err, out)
		}
		if n := primary.count(func(copySeen) bool { return true }) - before; n != 20 {
			t.Errorf("primary got %d requests, want 20", n)
		}
		waitCount(t, "failed copies counted", 20, func() int { return int(policy("mirdown", "mirror_failed")) })
	})
}
