package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current output")

// fakeAgent serves answers recorded from a real weir-agent (the
// integration test's mesh: a captured client pod, two servers, service
// web-v4 with server B ejected): /config_dump, /metrics (two scrapes,
// served in turn, so the third looks like a restarted agent whose counters
// went back), and the rules of demo/client, backend/server-a and, as
// demo/damaged, the client after the output chain of its nftables table
// was flushed.
func fakeAgent(t *testing.T) *httptest.Server {
	t.Helper()
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	var mu sync.Mutex
	scrapes := 0
	mux := http.NewServeMux()
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(read("config_dump.json"))
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		scrapes++
		n := scrapes
		mu.Unlock()
		if n%2 == 1 {
			w.Write(read("metrics-1.txt"))
		} else {
			w.Write(read("metrics-2.txt"))
		}
	})
	rules := map[string]string{"demo/client": "rules-client.json", "backend/server-a": "rules-server-a.json", "demo/damaged": "rules-client-damaged.json"}
	mux.HandleFunc("GET /pods/{namespace}/{name}/rules", func(w http.ResponseWriter, r *http.Request) {
		pod := r.PathValue("namespace") + "/" + r.PathValue("name")
		f, ok := rules[pod]
		if !ok {
			http.Error(w, "no pod "+pod+" on this node", http.StatusNotFound)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write(read(f))
	})
	s := httptest.NewServer(mux)
	t.Cleanup(s.Close)
	return s
}

func noEnv(string) string { return "" }

// fakeClock makes top's rates exact: every scrape is one second after the
// one before.
func fakeClock(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var mu sync.Mutex
	n := 0
	old := now
	now = func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		n++
		return t0.Add(time.Duration(n) * time.Second)
	}
	t.Cleanup(func() { now = old })
}

func runCmd(t *testing.T, getenv func(string) string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var o, e bytes.Buffer
	code = run(context.Background(), args, getenv, &o, &e)
	return o.String(), e.String(), code
}

// TestSubcommands runs every subcommand in both output forms against the
// recorded answers and compares with testdata/golden (go test -update
// rewrites them).
func TestSubcommands(t *testing.T) {
	srv := fakeAgent(t)
	addr := strings.TrimPrefix(srv.URL, "http://")
	cases := []struct {
		name string
		args []string
		code int
	}{
		{"pods", []string{"pods"}, 0},
		{"rules-client", []string{"rules", "demo/client"}, 0},
		{"rules-bare-name", []string{"rules", "client"}, 0},
		{"rules-uncaptured", []string{"rules", "backend/server-a"}, 0},
		{"rules-damaged", []string{"rules", "demo/damaged"}, 1},
		{"routes", []string{"routes"}, 0},
		{"routes-one", []string{"routes", "web-v4"}, 0},
		{"endpoints", []string{"endpoints", "web-v4"}, 0},
		{"top", []string{"top", "--interval", "10ms"}, 0},
		{"top-count", []string{"top", "--interval", "10ms", "--count", "2"}, 0},
		{"config", []string{"config"}, 0},
	}
	for _, c := range cases {
		for _, form := range []string{"table", "json"} {
			t.Run(c.name+"/"+form, func(t *testing.T) {
				fakeClock(t)
				args := append([]string{"--admin", addr}, c.args...)
				if form == "json" {
					// Flags go anywhere: after the command here.
					args = append(c.args, "--admin", addr, "-o", "json")
				}
				out, errOut, code := runCmd(t, noEnv, args...)
				if code != c.code || errOut != "" {
					t.Fatalf("exit %d, want %d; stderr: %s", code, c.code, errOut)
				}
				if form == "json" {
					dec := json.NewDecoder(strings.NewReader(out))
					for dec.More() {
						var v any
						if err := dec.Decode(&v); err != nil {
							t.Fatalf("not JSON: %v\n%s", err, out)
						}
					}
				}
				golden := filepath.Join("testdata", "golden", c.name+"."+form)
				if *update {
					os.MkdirAll(filepath.Dir(golden), 0o755)
					if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(golden)
				if err != nil {
					t.Fatalf("%v (go test -update writes it)", err)
				}
				if out != string(want) {
					t.Fatalf("output differs from %s:\n--- got\n%s--- want\n%s", golden, out, want)
				}
			})
		}
	}
}

// TestRecordedValues checks the figures that matter in the recorded
// answers, independently of the golden files.
func TestRecordedValues(t *testing.T) {
	srv := fakeAgent(t)
	addr := strings.TrimPrefix(srv.URL, "http://")
	t.Run("pods", func(t *testing.T) {
		var pods []podView
		out, _, _ := runCmd(t, noEnv, "pods", "--admin", addr, "-o", "json")
		if err := json.Unmarshal([]byte(out), &pods); err != nil {
			t.Fatal(err)
		}
		if len(pods) != 3 || pods[2].Name != "client" || !pods[2].Captured || pods[2].Mode != "redirect" ||
			pods[2].Reason != "namespace demo is captured" || pods[0].Captured || pods[0].Mode != "" {
			t.Fatalf("%+v", pods)
		}
	})
	t.Run("endpoints", func(t *testing.T) {
		out, _, _ := runCmd(t, noEnv, "endpoints", "web-v4", "--admin", addr)
		lines := strings.Split(out, "\n")
		if !strings.Contains(lines[1], "10.22.0.2:8080") || !strings.Contains(lines[1], "healthy") || !strings.Contains(lines[1], " no ") {
			t.Fatalf("endpoint A: %q", lines[1])
		}
		if !strings.Contains(lines[2], "10.22.0.3:8080") || !strings.Contains(lines[2], "ejected") || !strings.Contains(lines[2], "yes (59.9s left)") {
			t.Fatalf("endpoint B: %q", lines[2])
		}
	})
	t.Run("top", func(t *testing.T) {
		fakeClock(t)
		out, _, _ := runCmd(t, noEnv, "top", "--interval", "1ms", "--admin", addr, "-o", "json")
		var v topView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatal(err)
		}
		// metrics-1 → metrics-2: web-v4 went from 5 to 26 connections
		// and 0 to 1 retry, outbound from 5 to 25, one second apart.
		if len(v.Clusters) != 1 || v.Clusters[0].Cluster != "web-v4" || v.Clusters[0].PerSecond != 21 || v.Clusters[0].RetriesPerSecond != 1 {
			t.Fatalf("clusters: %+v", v.Clusters)
		}
		var outbound float64
		for _, d := range v.Conns {
			if d.Direction == "outbound" {
				outbound = d.PerSecond
			}
		}
		if outbound != 20 || v.Interval != 1 {
			t.Fatalf("connections: %+v over %vs", v.Conns, v.Interval)
		}
		if len(v.HTTP) != 1 || v.HTTP[0].Protocol != "http1" || v.HTTP[0].PerSecond != 20 || v.HTTP[0].ByClass["2xx"] != 20 ||
			v.HTTP[0].Mean == nil || v.HTTP[0].P50 == nil || v.HTTP[0].P99 == nil || *v.HTTP[0].P50 > *v.HTTP[0].P99 {
			t.Fatalf("http: %+v", v.HTTP)
		}
	})
}

func TestErrors(t *testing.T) {
	srv := fakeAgent(t)
	addr := strings.TrimPrefix(srv.URL, "http://")
	// An address nothing listens on.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := ln.Addr().String()
	ln.Close()
	forbidden := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "forbidden", http.StatusForbidden)
	}))
	defer forbidden.Close()
	notAgent := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" || r.URL.Path == "/config_dump" || r.URL.Path == "/metrics" {
			w.Write([]byte("<html>hello</html>"))
			return
		}
		http.NotFound(w, r)
	}))
	defer notAgent.Close()
	oldAgent := httptest.NewServer(http.NotFoundHandler())
	defer oldAgent.Close()
	raw := func(s *httptest.Server) string { return strings.TrimPrefix(s.URL, "http://") }
	env := func(addr string) func(string) string {
		return func(k string) string {
			if k == "WEIR_ADMIN" {
				return addr
			}
			return ""
		}
	}
	cases := []struct {
		name   string
		getenv func(string) string
		args   []string
		code   int
		want   string
	}{
		{"refused", noEnv, []string{"pods", "--admin", dead}, 1, "no weir-agent answers at " + dead + ": is it running? (--admin / WEIR_ADMIN)"},
		{"refused by env", env(dead), []string{"top"}, 1, "no weir-agent answers at " + dead + ": is it running?"},
		{"env used", env(addr), []string{"routes"}, 0, ""},
		{"flag beats env", env(dead), []string{"routes", "--admin", addr}, 0, ""},
		{"unix socket absent", noEnv, []string{"config", "--admin", "unix:" + filepath.Join(t.TempDir(), "admin.sock")}, 1, "no weir-agent answers at unix:"},
		{"forbidden", noEnv, []string{"pods", "--admin", raw(forbidden)}, 1, "permission denied"},
		{"not an agent", noEnv, []string{"config", "--admin", raw(notAgent)}, 1, "is not a weir-agent's JSON"},
		{"not an agent metrics", noEnv, []string{"top", "--interval", "1ms", "--admin", raw(notAgent)}, 1, "is not Prometheus text"},
		{"agent without the rules endpoint", noEnv, []string{"rules", "demo/client", "--admin", raw(oldAgent)}, 1, "is the agent as new as weirctl?"},
		{"unknown host", noEnv, []string{"pods", "--admin", "weir-agent.invalid:15020"}, 1, "wrong address?"},
		{"unknown pod", noEnv, []string{"rules", "demo/nobody", "--admin", addr}, 1, "no pod demo/nobody on this node (weirctl pods lists them)"},
		{"unknown bare pod", noEnv, []string{"rules", "nobody", "--admin", addr}, 1, `no pod named "nobody" on this node`},
		{"unknown service", noEnv, []string{"endpoints", "nosuch", "--admin", addr}, 1, `no service "nosuch" in the agent's routes (weirctl routes lists them)`},
		{"unknown route", noEnv, []string{"routes", "nosuch", "--admin", addr}, 1, `no service "nosuch"`},
		{"no command", noEnv, nil, 2, "no command given"},
		{"unknown command", noEnv, []string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{"bad output", noEnv, []string{"pods", "-o", "yaml"}, 2, `-o "yaml": want table or json`},
		{"bad flag", noEnv, []string{"pods", "--nope"}, 2, "flag provided but not defined: -nope"},
		{"missing argument", noEnv, []string{"endpoints"}, 2, "endpoints: wrong number of arguments"},
		{"extra argument", noEnv, []string{"pods", "x"}, 2, "pods: wrong number of arguments"},
		{"bad count", noEnv, []string{"top", "--count", "0"}, 2, "--count must be at least 1"},
		{"bad pod", noEnv, []string{"rules", "demo/", "--admin", addr}, 2, "want namespace/name"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, errOut, code := runCmd(t, c.getenv, c.args...)
			if code != c.code || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, want %d; stderr %q, want it to hold %q", code, c.code, errOut, c.want)
			}
			if c.code == 0 && errOut != "" {
				t.Fatalf("stderr on success: %q", errOut)
			}
		})
	}
}

func TestHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"--help"}} {
		out, _, code := runCmd(t, noEnv, args...)
		if code != 0 || !strings.Contains(out, "Usage: weirctl COMMAND") {
			t.Fatalf("%v: exit %d\n%s", args, code, out)
		}
	}
}

func TestParseMetrics(t *testing.T) {
	got, err := parseMetrics(`# HELP x y
# TYPE x counter
x_total{a="1",b="q\"uo\\te"} 3
x_total{a="2"} 4.5 1700000000
y 7
z{ } 1e3
`)
	if err != nil {
		t.Fatal(err)
	}
	if len(got["x_total"]) != 2 || got["x_total"][0].labels["b"] != `q"uo\te` || got["x_total"][1].value != 4.5 ||
		got["y"][0].value != 7 || got["z"][0].value != 1000 {
		t.Fatalf("%+v", got)
	}
	for _, bad := range []string{`x{a="1} 2`, "x", `x{a=1} 2`, "x abc"} {
		if _, err := parseMetrics(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestQuantile(t *testing.T) {
	inf := bucket{le: math.Inf(1), count: 100}
	bs := []bucket{{0.1, 50}, {0.2, 90}, {1, 100}, inf}
	if q := quantile(bs, 0.5); q == nil || *q != 0.1 {
		t.Fatalf("p50 %v", q)
	}
	if q := quantile(bs, 0.7); q == nil || *q < 0.149 || *q > 0.151 {
		t.Fatalf("p70 %v", *q)
	}
	if q := quantile([]bucket{{1, 0}, {math.Inf(1), 0}}, 0.5); q != nil {
		t.Fatalf("empty histogram gave %v", *q)
	}
	if d := delta(10, 3); d != 3 {
		t.Fatalf("a reset counter's delta is %v", d)
	}
}
