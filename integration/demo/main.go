// Command demo shows weir's main job on its embedded default: a node built
// from network namespaces, two servers and a client attached by the real CNI
// chain with weir-cni chained last, the agent capturing the client's
// namespace, and the client reaching a virtual service address that exists
// only in the agent's config. It prints what it does and tears it all down.
package main

import (
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/weir-mesh/weir/integration/testworld"
)

func main() {
	requests := flag.Int("requests", 6, "requests the client sends to the service")
	spec := flag.String("cni-version", "1.0.0", "CNI spec version of the chain (1.0.0 or 1.1.0)")
	flag.Parse()
	d := &demoT{}
	code := 0
	func() {
		defer func() {
			if r := recover(); r != nil && r != errStop {
				panic(r)
			}
		}()
		defer d.cleanup()
		run(d, *requests, *spec)
	}()
	if d.failed {
		code = 1
	}
	os.Exit(code)
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func run(t *demoT, requests int, spec string) {
	step("building weir-cni and weir-agent")
	fmt.Println("    binaries in", testworld.Binaries(t))

	step("creating an isolated node network namespace (CNI spec %s)", spec)
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: spec})
	fmt.Println("    node netns:", node.Name, "(no link to this machine's network)")

	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}}
	step("starting weir-agent inside the node; it captures pods of namespace \"demo\"")
	agent := node.StartAgent(t, cfg)

	step("adding two server pods in namespace \"backend\" through the CNI chain (bridge + host-local, then weir-cni)")
	a := node.MustAddPod(t, "backend", "server-a")
	b := node.MustAddPod(t, "backend", "server-b")
	a.StartNginx(t, 8080, "server-a")
	b.StartNginx(t, 8080, "server-b")
	fmt.Printf("    server-a %s:8080, server-b %s:8080 (nginx)\n", a.IP4, b.IP4)

	step("reconfiguring the agent: service web = 10.96.0.10:80 -> both servers")
	agent.Stop(t)
	cfg["services"] = []any{map[string]any{"name": "web", "address": "10.96.0.10:80",
		"endpoints": []string{a.IP4.String() + ":8080", b.IP4.String() + ":8080"}}}
	agent = node.StartAgent(t, cfg)
	b2, _ := os.ReadFile(agent.Config)
	fmt.Println(indent(string(b2)))

	step("adding the client pod in captured namespace \"demo\"")
	client := node.MustAddPod(t, "demo", "client")
	fmt.Printf("    client %s; weir rules in its netns:\n", client.IP4)
	// The agent logs which backend it chose; nftables unless the node
	// keeps to iptables.
	if rules, err := client.Run("nft", "list", "table", "inet", "weir"); err == nil {
		fmt.Println(indent(rules))
	} else {
		fmt.Println(indent(client.MustRun(t, "iptables-save", "-t", "nat")))
	}

	step("client: curl http://10.96.0.10/ x%d (the address exists only in the agent's config)", requests)
	count := map[string]int{}
	for i := 1; i <= requests; i++ {
		body, err := client.Curl(t, "http://10.96.0.10/")
		if err != nil {
			t.Fatalf("request %d failed: %v: %s", i, err, body)
		}
		who := strings.TrimSpace(body)
		count[who]++
		fmt.Printf("    request %d answered by %s\n", i, who)
	}

	step("agent counters")
	metrics, _ := agent.Get("/metrics")
	var lines []string
	for _, l := range strings.Split(metrics, "\n") {
		// Connections the agent accepted, what the sniffer made of them,
		// and the HTTP requests it balanced one by one (curl's requests
		// are HTTP/1.1, so they take the L7 half).
		if strings.HasPrefix(l, "weir_connections_total") || strings.HasPrefix(l, "weir_pods_captured") ||
			strings.HasPrefix(l, "weir_upstream_connect_errors_total") || strings.HasPrefix(l, "weir_endpoint_connections_total") ||
			(strings.HasPrefix(l, "weir_sniff_total") && !strings.HasSuffix(l, " 0")) ||
			(strings.HasPrefix(l, "weir_http_requests_total") && !strings.HasSuffix(l, " 0")) {
			lines = append(lines, l)
		}
	}
	sort.Strings(lines)
	fmt.Println(indent(strings.Join(lines, "\n")))

	step("tearing down (CNI DEL, agent SIGTERM, namespaces deleted)")
	if count["server-a"] > 0 && count["server-b"] > 0 {
		fmt.Printf("\nweir demo: OK, %d requests balanced over %v\n", requests, count)
	} else {
		t.Errorf("expected both servers to answer, got %v", count)
	}
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}

// demoT lets the test world run outside `go test`.
type demoT struct {
	cleanups []func()
	failed   bool
	tmp      []string
}

var errStop = fmt.Errorf("stop")

func (d *demoT) Helper()                         {}
func (d *demoT) Logf(format string, args ...any) { fmt.Printf("    "+format+"\n", args...) }
func (d *demoT) Errorf(format string, args ...any) {
	d.failed = true
	fmt.Fprintf(os.Stderr, "weir demo: "+format+"\n", args...)
}
func (d *demoT) Fatalf(format string, args ...any) { d.Errorf(format, args...); panic(errStop) }
func (d *demoT) Skipf(format string, args ...any)  { d.Fatalf(format, args...) }
func (d *demoT) Fatal(args ...any)                 { d.Fatalf("%s", fmt.Sprint(args...)) }
func (d *demoT) Cleanup(f func())                  { d.cleanups = append(d.cleanups, f) }
func (d *demoT) Failed() bool                      { return d.failed }
func (d *demoT) TempDir() string {
	dir, err := os.MkdirTemp("", "weir-demo-")
	if err != nil {
		d.Fatal(err)
	}
	d.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func (d *demoT) cleanup() {
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		d.cleanups[i]()
	}
}
