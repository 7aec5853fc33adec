package integration

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// specVersions are the CNI spec versions every skeleton test runs under.
var specVersions = []string{"1.0.0", "1.1.0"}

// mesh is the standard small world: two nginx servers in an uncaptured
// namespace, an agent that captures namespace demo and balances the virtual
// service (10.96.0.10:80 and [fd00:96::10]:80) over the two servers, and a
// client pod in demo.
type mesh struct {
	w              world
	node           *testworld.Node
	agent          *testworld.Agent
	srvA, srvB     *testworld.Pod
	nginxA, nginxB *testworld.Nginx
	client         *testworld.Pod
}

func newMesh(t *testing.T, w world) *mesh { return newMeshWith(t, w, nil) }

// newMeshWith is newMesh with cluster settings for the service.
func newMeshWith(t *testing.T, w world, clusterCfg map[string]any) *mesh {
	t.Helper()
	return newMeshProto(t, w, clusterCfg, "")
}

// newMeshProto is newMeshWith with the service's declared protocol ("" is
// auto: sniffed, so HTTP goes through the L7 half).
func newMeshProto(t *testing.T, w world, clusterCfg map[string]any, protocol string) *mesh {
	t.Helper()
	return newMeshAgent(t, w, clusterCfg, protocol, nil)
}

// newMeshAgent is newMeshProto with more settings for the agent (merged
// into its configuration).
func newMeshAgent(t *testing.T, w world, clusterCfg map[string]any, protocol string, agentCfg map[string]any) *mesh {
	t.Helper()
	m := &mesh{w: w, node: testworld.NewNode(t, w.nodeOptions())}
	// The agent must answer every ADD, captured or not; start it, add the
	// servers, then restart it with the service pointing at them.
	m.agent = m.node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	m.srvA = m.node.MustAddPod(t, "backend", "server-a")
	m.srvB = m.node.MustAddPod(t, "backend", "server-b")
	m.nginxA = m.srvA.StartNginx(t, 8080, "server-a")
	m.nginxB = m.srvB.StartNginx(t, 8080, "server-b")
	m.agent.Stop(t)
	var services []any
	for _, fam := range w.families() {
		services = append(services, map[string]any{
			"name": "web-" + fam, "address": vip(fam).String(),
			"endpoints": []string{hostPort(addr(m.srvA, fam), 8080), hostPort(addr(m.srvB, fam), 8080)},
			"cluster":   clusterCfg,
			"protocol":  protocol,
		})
	}
	cfg := map[string]any{
		"capture":  map[string]any{"namespaces": []string{"demo"}},
		"services": services,
	}
	for k, v := range agentCfg {
		cfg[k] = v
	}
	m.agent = m.node.StartAgent(t, cfg)
	m.client = m.node.MustAddPod(t, "demo", "client")
	w.assertNoRulesIn(t, m.client)
	return m
}

func forEachSpec(t *testing.T, f func(t *testing.T, spec string)) {
	for _, v := range specVersions {
		t.Run("cni-"+v, func(t *testing.T) { f(t, v) })
	}
}

func outbound(t *testing.T, a *testworld.Agent) float64 {
	return a.Metric(t, `weir_connections_total{direction="outbound"}`)
}

func inbound(t *testing.T, a *testworld.Agent) float64 {
	return a.Metric(t, `weir_connections_total{direction="inbound"}`)
}

func url(a netip.AddrPort) string { return "http://" + a.String() + "/" }

// Must show 1: the service address is balanced over both endpoints, and the
// servers see the client pod's own IP.
func TestServiceAddressReachesBothEndpoints(t *testing.T) {
	forEachWorld(t, func(t *testing.T, w world) {
		m := newMesh(t, w)
		for _, fam := range w.families() {
			seen := map[string]int{}
			for i := 0; i < 20; i++ {
				body, err := m.client.Curl(t, url(vip(fam)))
				if err != nil {
					t.Fatalf("%s request %d to %s: %v: %s", fam, i, vip(fam), err, body)
				}
				seen[strings.TrimSpace(body)]++
			}
			if seen["server-a"] == 0 || seen["server-b"] == 0 || seen["server-a"]+seen["server-b"] != 20 {
				t.Fatalf("%s answers over 20 requests: %v; want both servers and nothing else", fam, seen)
			}
		}
		want := map[string]bool{}
		for _, fam := range w.families() {
			want[addr(m.client, fam).String()] = true
		}
		for _, n := range []*testworld.Nginx{m.nginxA, m.nginxB} {
			for _, c := range n.Clients(t) {
				if !want[c] {
					t.Fatalf("server logged client %s, want the client pod's own IP (%v)", c, want)
				}
			}
		}
		if got := outbound(t, m.agent); got < float64(20*len(w.families())) {
			t.Fatalf("outbound connections counted %v, want at least %d", got, 20*len(w.families()))
		}
	})
}

// Must show 2: a direct pod-IP connection is captured too, counted exactly.
func TestDirectPodIPGoesThroughAgent(t *testing.T) {
	forEachWorld(t, func(t *testing.T, w world) {
		m := newMesh(t, w)
		for _, fam := range w.families() {
			before := outbound(t, m.agent)
			const n = 5
			for i := 0; i < n; i++ {
				body, err := m.client.Curl(t, url(netip.AddrPortFrom(addr(m.srvA, fam), 8080)))
				if err != nil || strings.TrimSpace(body) != "server-a" {
					t.Fatalf("%s request %d: %v: %q", fam, i, err, body)
				}
			}
			if got := outbound(t, m.agent) - before; got != n {
				t.Fatalf("%s: outbound counter rose by %v, want exactly %d", fam, got, n)
			}
		}
	})
}

// Must show 3: a connection into a captured pod passes the inbound listener;
// under TPROXY and eBPF the app sees the real client's IP.
func TestInboundThroughAgent(t *testing.T) {
	forEachWorld(t, func(t *testing.T, w world) {
		assertInbound(t, newMesh(t, w))
	})
}

// assertInbound adds an nginx pod to m's captured namespace and calls it
// from server-a in each family: one inbound connection each, and under
// TPROXY and eBPF the app sees server-a's own address.
func assertInbound(t *testing.T, m *mesh) {
	t.Helper()
	w := m.w
	app := m.node.MustAddPod(t, "demo", "app")
	ngx := app.StartNginx(t, 8080, "app")
	for _, fam := range w.families() {
		before := inbound(t, m.agent)
		body, err := m.srvA.Curl(t, url(netip.AddrPortFrom(addr(app, fam), 8080)))
		if err != nil || strings.TrimSpace(body) != "app" {
			t.Fatalf("%s request into captured pod: %v: %q", fam, err, body)
		}
		if got := inbound(t, m.agent) - before; got != 1 {
			t.Fatalf("%s: inbound counter rose by %v, want 1", fam, got)
		}
		clients := ngx.Clients(t)
		last := clients[len(clients)-1]
		if (w.mode == "tproxy" || w.mode == "ebpf") && last != addr(m.srvA, fam).String() {
			t.Fatalf("%s %s: app logged client %s, want the real client %s", w.mode, fam, last, addr(m.srvA, fam))
		}
	}
}

// Must show 4: an uncaptured pod has no weir rule and works normally.
func TestUncapturedPodUntouched(t *testing.T) {
	forEachWorld(t, func(t *testing.T, w world) {
		m := newMesh(t, w)
		other := m.node.MustAddPod(t, "other", "plain")
		if installed(t, m.node, other) {
			t.Fatal("uncaptured pod holds weir's capture")
		}
		w.assertNoRulesIn(t, other)
		before := outbound(t, m.agent)
		body, err := other.Curl(t, url(netip.AddrPortFrom(addr(m.srvB, w.families()[0]), 8080)))
		if err != nil || strings.TrimSpace(body) != "server-b" {
			t.Fatalf("uncaptured pod request: %v: %q", err, body)
		}
		if got := outbound(t, m.agent) - before; got != 0 {
			t.Fatalf("agent counted %v outbound connections from an uncaptured pod", got)
		}
	})
}

// Must show 5: with the agent down, ADD of a captured pod fails naming the
// socket and leaves no rule; with the agent back, ADD works.
func TestAgentDownFailsClosed(t *testing.T) {
	forEachSpec(t, func(t *testing.T, spec string) {
		node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: spec})
		cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}}
		node.WriteAgentConfig(t, cfg)
		p, err := node.AddPod(t, "demo", "early")
		if err == nil {
			t.Fatal("ADD succeeded with no agent running")
		}
		if !strings.Contains(err.Error(), node.Socket) {
			t.Fatalf("ADD error does not name the agent socket %s: %v", node.Socket, err)
		}
		if installed, ierr := redirect.Installed(p.Path); ierr != nil || installed {
			t.Fatalf("failed ADD left weir rules (installed=%v, err=%v)", installed, ierr)
		}
		agent := node.StartAgent(t, cfg)
		p2 := node.MustAddPod(t, "demo", "late")
		if installed, err := redirect.Installed(p2.Path); err != nil || !installed {
			t.Fatalf("ADD with the agent up: installed=%v err=%v", installed, err)
		}
		_ = agent
	})
}

func listeningPorts(t *testing.T, p *testworld.Pod) string {
	t.Helper()
	return p.MustRun(t, "ss", "-Hltn")
}

// Must show 6: DEL removes every rule and listener; repeated and orphan DELs
// succeed; CHECK fails when a rule was removed by hand (a flushed chain),
// in every backend, and in eBPF mode when the pod's enrolment was taken
// out of the pinned maps by hand.
func TestDelAndCheck(t *testing.T) {
	forEachSpec(t, func(t *testing.T, spec string) {
		for _, w := range []world{
			{spec, "redirect", "v4", nftables}, {spec, "redirect", "v4", nft}, {spec, "redirect", "v4", legacy},
			{spec, "ebpf", "dual", ""},
		} {
			name := w.backend
			if w.mode == "ebpf" {
				name = w.mode
			}
			t.Run(name, func(t *testing.T) { delAndCheck(t, w) })
		}
	})
}

// flushOutput empties weir's outbound chain in p the way an operator
// would, with the backend's own tool, and returns the text CHECK's error
// must hold. In eBPF mode it takes the pod's netns out of the pinned maps.
func flushOutput(t *testing.T, node *testworld.Node, p *testworld.Pod, w world) string {
	t.Helper()
	backend := w.backend
	if w.mode == "ebpf" {
		// What an operator deleting the pod's map entries with bpftool
		// would leave, without weir-cni's DEL.
		if err := redirect.Remove(p.Path, redirect.WithPinPath(node.PinPath)); err != nil {
			t.Fatalf("release pod %s from the pinned maps by hand: %v", p.Name, err)
		}
		return "not enrolled"
	}
	if backend == nftables {
		p.MustRun(t, "nft", "flush", "chain", "inet", "weir", "output")
		return "weir/output"
	}
	p.MustRun(t, "iptables-"+backend, "-w", "-t", "nat", "-F", "WEIR_OUTPUT")
	return "WEIR_OUTPUT"
}

func delAndCheck(t *testing.T, w world) {
	node := testworld.NewNode(t, w.nodeOptions())
	node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	p := node.MustAddPod(t, "demo", "victim")
	w.assertNoRulesIn(t, p)
	if err := node.Check(p); err != nil {
		t.Fatalf("CHECK of a fresh pod: %v", err)
	}
	if ls := listeningPorts(t, p); !strings.Contains(ls, ":15001") || !strings.Contains(ls, ":15006") {
		t.Fatalf("agent listeners missing in pod netns:\n%s", ls)
	}
	// Flush weir's outbound chain by hand: CHECK must fail and say
	// what is missing.
	chain := flushOutput(t, node, p, w)
	err := node.Check(p)
	want := "missing rule"
	if w.mode == "ebpf" {
		want = "ebpf"
	}
	if err == nil || !strings.Contains(err.Error(), chain) || !strings.Contains(err.Error(), want) {
		t.Fatalf("CHECK after removing %s by hand: %v; want an error naming it", chain, err)
	}
	for i := 0; i < 2; i++ {
		if err := node.Del(p); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
	}
	if installed(t, node, p) {
		t.Fatal("capture left after DEL")
	}
	if ls := listeningPorts(t, p); strings.Contains(ls, ":15001") || strings.Contains(ls, ":15006") {
		t.Fatalf("agent listeners left in pod netns after DEL:\n%s", ls)
	}
	// The agent, which held the pod, took its rules out (weir-cni did not
	// have to enter the namespace and wait on the kernel's release).
	if b, _ := os.ReadFile(node.CNILog); !strings.Contains(string(b), `"rulesRemovedByAgent":true`) {
		t.Fatalf("no DEL whose rules the agent removed in the weir-cni log:\n%s", b)
	}
	// A later ADD into the same netns under a new container id (a runtime
	// reusing a sandbox's namespace) programs it afresh and passes CHECK.
	again := &testworld.Pod{Netns: p.Netns, Namespace: "demo", Name: "victim", ContainerID: p.ContainerID + "-again"}
	if err := node.Add(t, again); err != nil {
		t.Fatalf("ADD into the netns of a deleted pod: %v", err)
	}
	if err := node.Check(again); err != nil {
		t.Fatalf("CHECK after ADD into the netns of a deleted pod: %v", err)
	}
	if err := node.Del(again); err != nil {
		t.Fatalf("DEL of the re-added pod: %v", err)
	}
	if installed, err := redirect.Installed(p.Path); err != nil || installed {
		t.Fatalf("after the second pod's DEL: installed=%v err=%v", installed, err)
	}
	// Orphan DEL: a pod never added.
	never := node.NewPodNetns(t, "demo", "never")
	if err := node.Del(never); err != nil {
		t.Fatalf("DEL of a pod never added: %v", err)
	}
	// DEL after the netns is gone.
	gone := node.MustAddPod(t, "demo", "gone")
	gone.MustRunDelete(t)
	if err := node.Del(gone); err != nil {
		t.Fatalf("DEL of a pod whose netns is gone: %v", err)
	}
}

// Must show 8a: a bulk transfer arrives byte-exact through the agent.
func TestBulkTransferByteExact(t *testing.T) {
	m := newMesh(t, world{"1.0.0", "redirect", "v4", ""})
	ln := m.srvA.Listen(t, "0.0.0.0:9000")
	const size = 1 << 30
	got := make(chan [32]byte, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(got)
			return
		}
		defer c.Close()
		h := sha256.New()
		io.Copy(h, c)
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		got <- sum
	}()
	c, err := m.client.Dial(fmt.Sprintf("%s:9000", m.srvA.IP4), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(newPattern(), size), h)
	if _, err := io.Copy(c, src); err != nil {
		t.Fatalf("send: %v", err)
	}
	c.CloseWrite()
	var want [32]byte
	copy(want[:], h.Sum(nil))
	select {
	case sum, ok := <-got:
		if !ok || sum != want {
			t.Fatalf("received data differs (sha256 %x, sent %x)", sum, want)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("bulk transfer did not finish in 2 minutes")
	}
	c.Close()
	if up := m.agent.Metric(t, `weir_bytes_total{direction="outbound",stream="client_to_upstream"}`); up < size {
		t.Fatalf("agent counted %v bytes upstream, want >= %d", up, size)
	}
}

// Must show 8b: after the client half-closes, the rest of the response
// still arrives.
func TestHalfCloseDeliversResponse(t *testing.T) {
	m := newMesh(t, world{"1.0.0", "redirect", "v4", ""})
	ln := m.srvA.Listen(t, "0.0.0.0:9001")
	const reply = 3 << 20
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c) // read until the client's FIN
		fmt.Fprintf(c, "got %d\n", n)
		io.Copy(c, io.LimitReader(newPattern(), reply))
	}()
	c, err := m.client.Dial(fmt.Sprintf("%s:9001", m.srvA.IP4), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Minute))
	c.Write([]byte("hello, half-closed world"))
	c.CloseWrite()
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read after half-close: %v", err)
	}
	head := "got 24\n"
	if !strings.HasPrefix(string(b), head) || len(b) != len(head)+reply {
		t.Fatalf("response after half-close: %d bytes, prefix %q; want %q + %d bytes", len(b), string(b[:min(len(b), 16)]), head, reply)
	}
}

// pattern is a cheap, endless, non-repeating-ish byte source.
type pattern struct{ x uint64 }

func newPattern() *pattern { return &pattern{x: 0x9e3779b97f4a7c15} }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		p.x ^= p.x << 13
		p.x ^= p.x >> 7
		p.x ^= p.x << 17
		b[i] = byte(p.x)
	}
	return len(b), nil
}

var _ net.Conn = (*net.TCPConn)(nil)
