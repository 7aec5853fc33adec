package integration

import (
	"fmt"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Issue 11, first slice: a service declared redis is balanced per command
// by key hash over two real redis-servers: every key lands on one server
// and is read back from it, both servers hold keys, MULTI/EXEC works
// (the connection is pinned), and the agent counts the sniffed protocol.
func TestRedisPerCommandByKey(t *testing.T) {
	testworld.RequireTool(t, "redis-server", "redis-cli")
	node := testworld.NewNode(t, v4world.nodeOptions())
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	var servers []*testworld.Pod
	for _, name := range []string{"redis-a", "redis-b"} {
		p := node.MustAddPod(t, "backend", name)
		p.Start(t, "redis-server", "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no")
		p.WaitPort(t, "127.0.0.1:6379")
		servers = append(servers, p)
	}
	agent.Stop(t)
	agent = node.StartAgent(t, map[string]any{
		"capture": map[string]any{"namespaces": []string{"demo"}},
		"services": []any{map[string]any{
			"name": "redis", "address": "10.96.0.40:6379", "protocol": "redis",
			"endpoints": []string{servers[0].IP4.String() + ":6379", servers[1].IP4.String() + ":6379"},
			"cluster":   map[string]any{"balancer": "maglev"},
		}},
	})
	client := node.MustAddPod(t, "demo", "client")
	cli := func(args ...string) string {
		t.Helper()
		out, err := client.Run("redis-cli", append([]string{"-h", "10.96.0.40", "-p", "6379"}, args...)...)
		if err != nil {
			t.Fatalf("redis-cli %v: %v: %s", args, err, out)
		}
		return strings.TrimSpace(out)
	}
	// One connection, pipelined: 20 SETs then 20 GETs.
	var script strings.Builder
	for i := range 20 {
		fmt.Fprintf(&script, "SET key%d value%d\n", i, i)
	}
	for i := range 20 {
		fmt.Fprintf(&script, "GET key%d\n", i)
	}
	out, err := client.Run("sh", "-c", fmt.Sprintf("printf '%s' | redis-cli -h 10.96.0.40 -p 6379", script.String()))
	if err != nil {
		t.Fatalf("pipelined redis-cli: %v: %s", err, out)
	}
	lines := strings.Fields(out)
	if len(lines) != 40 {
		t.Fatalf("40 answers expected, got %d: %q", len(lines), out)
	}
	for i := range 20 {
		if lines[i] != "OK" || lines[20+i] != fmt.Sprintf("value%d", i) {
			t.Fatalf("answer %d/%d: %q %q", i, 20+i, lines[i], lines[20+i])
		}
	}
	// Both servers hold some keys, and together all of them.
	total := 0
	for _, s := range servers {
		n, err := s.Run("redis-cli", "-p", "6379", "DBSIZE")
		if err != nil {
			t.Fatal(err)
		}
		var k int
		fmt.Sscan(strings.TrimSpace(n), &k)
		if k == 0 {
			t.Fatalf("%s holds no key: commands were not balanced per key", s.Name)
		}
		total += k
	}
	if total != 20 {
		t.Fatalf("servers hold %d keys together, want 20", total)
	}
	// A transaction pins the connection to one server.
	out, err = client.Run("sh", "-c", "printf 'MULTI\\nSET tx 1\\nINCR tx\\nEXEC\\n' | redis-cli -h 10.96.0.40 -p 6379")
	if err != nil || !strings.Contains(out, "QUEUED") || !strings.HasSuffix(strings.TrimSpace(out), "2") {
		t.Fatalf("MULTI/EXEC through the agent: %v: %q", err, out)
	}
	if got := cli("GET", "key7"); got != "value7" {
		t.Fatalf("GET key7 on a new connection: %q", got)
	}
	if n := agent.Metric(t, `weir_sniff_total{result="redis"}`); n < 3 {
		t.Fatalf("weir_sniff_total{result=\"redis\"} = %v, want at least 3", n)
	}
}
