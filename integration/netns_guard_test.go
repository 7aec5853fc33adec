package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// Issue 15, part 3: the agent never captures a node. A netns that is the
// node's own, PID 1's, no network namespace at all, or another container's
// is refused with a CNI error naming it; nothing is programmed anywhere, no
// listener is opened, and the agent goes on serving normal pods.
//
// Safety: no case may ever program the machine's real host namespace, even
// with the guard broken. So /proc/1/ns/net is only ever sent to the agent's
// API, never to weir-cni (which would run iptables-restore there if the
// agent said "captured"): once to an agent whose PID 1 is a throwaway
// stand-in (StartAgentUnderInit), and once to a normal agent for a pod of a
// namespace it does not capture, so even a broken guard opens nothing.

// guardWorld is a node with an agent capturing namespace demo and an nginx
// server in an uncaptured namespace, for the "still works" checks.
type guardWorld struct {
	node   *testworld.Node
	agent  *testworld.Agent
	server *testworld.Pod
	n      int
}

func newGuardWorld(t *testing.T, initNS *testworld.Netns) *guardWorld {
	t.Helper()
	testworld.RequireTool(t, "ss", "iptables-save", "ip6tables-save")
	g := &guardWorld{node: testworld.NewNode(t, testworld.NodeOptions{})}
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}}
	if initNS != nil {
		g.agent = g.node.StartAgentUnderInit(t, cfg, initNS)
	} else {
		g.agent = g.node.StartAgent(t, cfg)
	}
	g.server = g.node.MustAddPod(t, "backend", "server")
	g.server.StartNginx(t, 8080, "server")
	return g
}

// stillWorks adds a fresh pod to demo and has it reach the server through
// the agent.
func (g *guardWorld) stillWorks(t *testing.T) {
	t.Helper()
	g.n++
	p := g.node.MustAddPod(t, "demo", fmt.Sprintf("after-%d", g.n))
	if installed, err := redirect.Installed(p.Path); err != nil || !installed {
		t.Fatalf("normal pod after a refusal: installed=%v err=%v", installed, err)
	}
	before := outbound(t, g.agent)
	body, err := p.Curl(t, url(netip.AddrPortFrom(g.server.IP4, 8080)))
	if err != nil || strings.TrimSpace(body) != "server" {
		t.Fatalf("normal pod after a refusal cannot reach the server: %v: %q", err, body)
	}
	if got := outbound(t, g.agent) - before; got != 1 {
		t.Fatalf("normal pod after a refusal: outbound counter rose by %v, want 1", got)
	}
}

// pods is the agent's view of its pods (/config_dump).
func (g *guardWorld) pods(t *testing.T) []struct{ Netns, ContainerID string } {
	t.Helper()
	body, err := g.agent.Get("/config_dump")
	if err != nil {
		t.Fatalf("config_dump: %v", err)
	}
	var dump struct {
		Pods []struct{ Netns, ContainerID string }
	}
	if err := json.Unmarshal([]byte(body), &dump); err != nil {
		t.Fatalf("config_dump: %v", err)
	}
	return dump.Pods
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// netState is what weir could change in a namespace: the rules of every
// iptables flavour in both families (counters and comments stripped), the
// nftables ruleset, the policy routing rules, and the TCP listeners. ns nil is the test's own
// namespace; there only weir's traces count (other programs may change it).
func netState(t *testing.T, ns *testworld.Netns) string {
	t.Helper()
	run := func(name string, args ...string) (string, error) {
		if ns != nil {
			return ns.Run(name, args...)
		}
		out, err := exec.Command(name, args...).CombinedOutput()
		return string(out), err
	}
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save", "iptables-legacy-save", "ip6tables-legacy-save", "iptables-nft-save", "ip6tables-nft-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		out, err := run(tool)
		if err != nil {
			t.Fatalf("%s: %v\n%s", tool, err, out)
		}
		fmt.Fprintf(&b, "== %s\n", tool)
		for _, l := range strings.Split(out, "\n") {
			if l == "" || strings.HasPrefix(l, "#") || (ns == nil && !strings.Contains(l, "WEIR")) {
				continue
			}
			b.WriteString(counters.ReplaceAllString(l, "") + "\n")
		}
	}
	// weir's native nftables table (the backend auto picks on an
	// nftables node): iptables-save does not show it.
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := run("nft", "list", "ruleset")
		if err != nil {
			t.Fatalf("nft list ruleset: %v\n%s", err, out)
		}
		b.WriteString("== nft list ruleset\n")
		for _, l := range strings.Split(out, "\n") {
			if ns == nil && !strings.Contains(l, "weir") {
				continue
			}
			b.WriteString(l + "\n")
		}
	}
	for _, fam := range []string{"-4", "-6"} {
		out, err := run("ip", fam, "rule", "show")
		if err != nil {
			t.Fatalf("ip %s rule: %v\n%s", fam, err, out)
		}
		if ns != nil {
			fmt.Fprintf(&b, "== ip %s rule\n%s", fam, out)
		}
	}
	out, err := run("ss", "-Hltn")
	if err != nil {
		t.Fatalf("ss: %v\n%s", err, out)
	}
	var listeners []string
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) >= 4 {
			if ns == nil && !strings.HasSuffix(f[3], ":15001") && !strings.HasSuffix(f[3], ":15006") {
				continue
			}
			listeners = append(listeners, f[3])
		}
	}
	slices.Sort(listeners)
	fmt.Fprintf(&b, "== listeners\n%s\n", strings.Join(listeners, "\n"))
	return b.String()
}

// snapshot records netState of each namespace (nil: the test's own).
func snapshot(t *testing.T, nss ...*testworld.Netns) map[*testworld.Netns]string {
	t.Helper()
	out := map[*testworld.Netns]string{}
	for _, ns := range nss {
		out[ns] = netState(t, ns)
	}
	return out
}

// unchanged fails the test when a namespace's state moved since before.
func unchanged(t *testing.T, before map[*testworld.Netns]string) {
	t.Helper()
	for ns, was := range before {
		if now := netState(t, ns); now != was {
			name := "the test's own netns"
			if ns != nil {
				name = ns.Name
			}
			t.Fatalf("a refused ADD changed %s:\nbefore:\n%s\nafter:\n%s", name, was, now)
		}
	}
}

// pluginAdd runs weir-cni ADD as a runtime would, for container cid of pod
// demo/name in netns, with prevResult prev, and returns its error JSON
// (zero when it succeeded) and the raw output.
func pluginAdd(t *testing.T, node *testworld.Node, cid, name, netns, prev string) (cniError, string) {
	t.Helper()
	conf := `{"cniVersion":"1.0.0","name":"weir-test","type":"weir-cni","agentSocket":"` + node.Socket + `","logFile":"` + node.CNILog + `","prevResult":` + prev + `}`
	cmd := exec.Command(filepath.Join(node.Bin, "weir-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=ADD", "CNI_CONTAINERID=" + cid, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + node.Bin,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=" + name + ";K8S_POD_UID=uid-" + cid,
	}
	cmd.Stdin = strings.NewReader(conf)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := node.Do(func() error { return cmd.Run() })
	if err == nil {
		return cniError{}, out.String()
	}
	var e cniError
	if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
		t.Fatalf("weir-cni failed without CNI error JSON: %v: %q (stderr %q)", err, out.String(), errb.String())
	}
	return e, out.String()
}

const guardPrev = `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.22.0.250/16","interface":0}]}`

// agentAdd sends an ADD straight to the agent's socket, as weir-cni does,
// and returns the HTTP status and the agent's error message.
func agentAdd(t *testing.T, node *testworld.Node, cid string, pod api.Pod, netns string) (int, string) {
	t.Helper()
	body, _ := json.Marshal(api.AddRequest{
		Version: api.Version, Attachment: api.Attachment{ContainerID: cid, IfName: "eth0"},
		Netns: netns, Pod: pod, IPs: []string{"10.22.0.251/16"}, Mode: "redirect",
	})
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", node.Socket)
		},
	}}
	resp, err := c.Post("http://weir-agent"+api.PathAdd, "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("agent ADD: %v", err)
	}
	defer resp.Body.Close()
	var e api.Error
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// wantCNIError checks the plugin's error: its code, and a message naming
// the namespace path and the reason.
func wantCNIError(t *testing.T, e cniError, code uint, path, why string) {
	t.Helper()
	msg := e.Msg + " " + e.Details
	if e.Code != code || !strings.Contains(msg, path) || !strings.Contains(msg, why) {
		t.Fatalf("CNI error %+v; want code %d naming %s and %q", e, code, path, why)
	}
}

// wantAgentRefusal checks the agent's own answer to a direct ADD.
func wantAgentRefusal(t *testing.T, status int, msg, path, why string) {
	t.Helper()
	if status != http.StatusBadRequest || !strings.Contains(msg, path) || !strings.Contains(msg, why) {
		t.Fatalf("agent answered %d %q; want 400 naming %s and %q", status, msg, path, why)
	}
}

// wantNotKnown checks the agent holds nothing for path.
func (g *guardWorld) wantNotKnown(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range g.pods(t) {
		if slices.Contains(paths, p.Netns) {
			t.Fatalf("the agent keeps a pod (%s) in refused netns %s", p.ContainerID, p.Netns)
		}
	}
}

func TestNetnsGuard(t *testing.T) {
	g := newGuardWorld(t, nil)
	node := g.node
	captured := func() float64 { return g.agent.Metric(t, "weir_pods_captured") }

	t.Run("node netns (the agent's own)", func(t *testing.T) {
		before := snapshot(t, node.Netns, g.server.Netns)
		n := captured()
		// The node netns is this test's own isolated namespace: even with
		// the guard broken, the real plugin could only program it.
		e, _ := pluginAdd(t, node, "node-ns", "node", node.Path, guardPrev)
		wantCNIError(t, e, 100, node.Path, "the agent's own network namespace (the node's)")
		status, msg := agentAdd(t, node, "node-ns-api", api.Pod{Namespace: "demo", Name: "node"}, "/proc/self/ns/net")
		wantAgentRefusal(t, status, msg, "/proc/self/ns/net", "the agent's own network namespace")
		unchanged(t, before)
		if got := captured(); got != n {
			t.Fatalf("captured pods %v → %v after a refusal", n, got)
		}
		g.wantNotKnown(t, node.Path, "/proc/self/ns/net")
		g.stillWorks(t)
	})

	t.Run("host netns (the machine's PID 1)", func(t *testing.T) {
		before := snapshot(t, nil, node.Netns)
		// Agent API only, and for a namespace the agent does not capture:
		// even a broken guard would open nothing in the real host's netns.
		status, msg := agentAdd(t, node, "pid1", api.Pod{Namespace: "not-captured", Name: "pid1"}, "/proc/1/ns/net")
		why := "the host's network namespace (PID 1's"
		if _, err := os.Stat("/proc/1/ns/net"); err != nil {
			// A sandbox that hides PID 1's namespaces (EACCES) from this
			// test hides them from the agent too: it still refuses.
			t.Logf("PID 1's netns unreadable here (%v): the refusal can only say so", err)
			why = "cannot be opened"
		}
		wantAgentRefusal(t, status, msg, "/proc/1/ns/net", why)
		unchanged(t, before)
		g.wantNotKnown(t, "/proc/1/ns/net")
		g.stillWorks(t)
	})

	t.Run("mount namespace", func(t *testing.T) {
		before := snapshot(t, node.Netns, g.server.Netns)
		n := captured()
		// /proc/self/ns/mnt is a namespace file (the plugin's own check
		// passes) of the wrong type; setns would say EINVAL.
		e, _ := pluginAdd(t, node, "mnt-ns", "mnt", "/proc/self/ns/mnt", guardPrev)
		wantCNIError(t, e, 100, "/proc/self/ns/mnt", "not a network namespace: it is a mount namespace")
		status, msg := agentAdd(t, node, "mnt-ns-api", api.Pod{Namespace: "demo", Name: "mnt"}, "/proc/self/ns/mnt")
		wantAgentRefusal(t, status, msg, "/proc/self/ns/mnt", "not a network namespace: it is a mount namespace")
		unchanged(t, before)
		if got := captured(); got != n {
			t.Fatalf("captured pods %v → %v after a refusal", n, got)
		}
		g.wantNotKnown(t, "/proc/self/ns/mnt")
		g.stillWorks(t)
	})

	t.Run("regular file", func(t *testing.T) {
		file := filepath.Join(node.Dir, "not-a-netns")
		if err := os.WriteFile(file, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		before := snapshot(t, node.Netns, g.server.Netns)
		n := captured()
		// weir-cni's own check stops it before the agent (code 8) …
		e, _ := pluginAdd(t, node, "file-ns", "file", file, guardPrev)
		wantCNIError(t, e, 8, file, "is not a network namespace")
		// … and the agent refuses it as well.
		status, msg := agentAdd(t, node, "file-ns-api", api.Pod{Namespace: "demo", Name: "file"}, file)
		wantAgentRefusal(t, status, msg, file, "not a network namespace")
		unchanged(t, before)
		if got := captured(); got != n {
			t.Fatalf("captured pods %v → %v after a refusal", n, got)
		}
		g.wantNotKnown(t, file)
		g.stillWorks(t)
	})

	t.Run("pod netns reused under another container id", func(t *testing.T) {
		victim := node.MustAddPod(t, "demo", "victim")
		before := snapshot(t, node.Netns, victim.Netns, g.server.Netns)
		n := captured()
		if ls := before[victim.Netns]; !strings.Contains(ls, ":15006") {
			t.Fatalf("victim pod has no capture listener to begin with:\n%s", ls)
		}
		e, _ := pluginAdd(t, node, "intruder", "intruder", victim.Path, guardPrev)
		wantCNIError(t, e, 100, victim.Path, "already the network namespace of pod demo/victim (container "+victim.ContainerID)
		unchanged(t, before)
		if got := captured(); got != n {
			t.Fatalf("captured pods %v → %v after a refusal", n, got)
		}
		for _, p := range g.pods(t) {
			if p.ContainerID == "intruder" {
				t.Fatalf("the agent keeps the intruding attachment")
			}
		}
		// A DEL for the intruder (the runtime cleaning up the ADD it saw
		// fail) must not strip the victim's rules either.
		del := pluginCmd(node, "DEL", "intruder", "intruder", victim.Path, "")
		if e := runWeirCNI(t, del, func() error { return node.Do(del.Run) }); e.Code != 0 {
			t.Fatalf("DEL of the intruder: %+v", e)
		}
		unchanged(t, before)
		// (netState lists the iptables flavours; the victim's rules may be
		// in nftables: CHECK looks at whichever backend holds them.)
		if err := node.Check(victim); err != nil {
			t.Fatalf("CHECK of the victim after the intruder's DEL: %v", err)
		}
		// The same attachment added again is no reuse: the ADD is
		// idempotent, and changes nothing either.
		prev, err := json.Marshal(victim.Result)
		if err != nil {
			t.Fatal(err)
		}
		if e, out := pluginAdd(t, node, victim.ContainerID, "victim", victim.Path, string(prev)); e.Code != 0 {
			t.Fatalf("re-ADD of the same attachment refused: %+v %s", e, out)
		}
		unchanged(t, before)
		if err := node.Check(victim); err != nil {
			t.Fatalf("CHECK of the victim after the refusal: %v", err)
		}
		body, err := victim.Curl(t, url(netip.AddrPortFrom(g.server.IP4, 8080)))
		if err != nil || strings.TrimSpace(body) != "server" {
			t.Fatalf("victim pod after the refusal: %v: %q", err, body)
		}
		g.stillWorks(t)
	})
}

// The host's namespace by PID 1: the agent runs under a stand-in PID 1 in a
// throwaway namespace, so /proc/1/ns/net, which the test sends straight to
// the agent's API, is never the machine's real one.
func TestNetnsGuardPID1(t *testing.T) {
	initNS := testworld.NewNetns(t, "wi-")
	g := newGuardWorld(t, initNS)
	before := snapshot(t, initNS, g.node.Netns, g.server.Netns)
	// A namespace the agent captures: with the guard broken it would open
	// its listeners in the stand-in, which the snapshot would show.
	status, msg := agentAdd(t, g.node, "pid1", api.Pod{Namespace: "demo", Name: "pid1"}, "/proc/1/ns/net")
	wantAgentRefusal(t, status, msg, "/proc/1/ns/net", "the host's network namespace (PID 1's")
	unchanged(t, before)
	if got := g.agent.Metric(t, "weir_pods_captured"); got != 0 {
		t.Fatalf("captured pods %v after the refusal, want 0", got)
	}
	g.wantNotKnown(t, "/proc/1/ns/net")
	g.stillWorks(t)
}

// pluginCmd builds a weir-cni command for verb as a runtime would run it,
// for container cid of pod demo/name in netns, with prevResult prev ("" for
// none), run by argv (the plugin's path is appended).
func pluginCmd(node *testworld.Node, verb, cid, name, netns, prev string, argv ...string) *exec.Cmd {
	conf := `{"cniVersion":"1.0.0","name":"weir-test","type":"weir-cni","agentSocket":"` + node.Socket + `","logFile":"` + node.CNILog + `"`
	if prev != "" {
		conf += `,"prevResult":` + prev
	}
	conf += `}`
	argv = append(argv, filepath.Join(node.Bin, "weir-cni"))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = []string{
		"CNI_COMMAND=" + verb, "CNI_CONTAINERID=" + cid, "CNI_NETNS=" + netns, "CNI_IFNAME=eth0", "CNI_PATH=" + node.Bin,
		"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=" + name + ";K8S_POD_UID=uid-" + cid,
		"PATH=" + os.Getenv("PATH"),
	}
	cmd.Stdin = strings.NewReader(conf)
	return cmd
}

// runPlugin runs cmd and returns its CNI error (zero when it succeeded).
func runWeirCNI(t *testing.T, cmd *exec.Cmd, run func() error) cniError {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := run()
	if err == nil {
		return cniError{}
	}
	var e cniError
	if jerr := json.Unmarshal(out.Bytes(), &e); jerr != nil {
		t.Fatalf("weir-cni failed without CNI error JSON: %v: %q (stderr %q)", err, out.String(), errb.String())
	}
	return e
}

// baitNFT puts a `table inet weir` with a chain into ns, where weir never
// programs anything: a DEL that looked inside would delete it, since DEL
// removes weir's table wherever it finds it.
func baitNFT(t *testing.T, ns *testworld.Netns) {
	t.Helper()
	ns.MustRun(t, "nft", "add table inet weir")
	ns.MustRun(t, "nft", "add chain inet weir bait")
}

func wantBait(t *testing.T, ns *testworld.Netns) {
	t.Helper()
	if out, err := ns.Run("nft", "list", "table", "inet", "weir"); err != nil || !strings.Contains(out, "chain bait") {
		t.Fatalf("the bait table in %s was touched: %v\n%s", ns.Name, err, out)
	}
}

// A DEL and a CHECK naming a namespace weir never captures do not look
// inside it: a DEL succeeds (a failure would stop the runtime's DEL chain
// before the primary plugin frees the pod's address) and touches nothing; a
// CHECK fails with the agent's refusal, code 100, naming the namespace.
func TestNetnsGuardDelCheck(t *testing.T) {
	testworld.RequireTool(t, "nft", "sh", "mount")
	g := newGuardWorld(t, nil)
	node := g.node

	t.Run("node netns (the agent's own)", func(t *testing.T) {
		baitNFT(t, node.Netns)
		before := snapshot(t, node.Netns, g.server.Netns)
		n := g.agent.Metric(t, "weir_pods_captured")
		// libcni's skel, after cmdDel returns, fails a DEL naming the
		// plugin's own netns (code 8); what counts is that cmdDel never
		// entered it (the bait stays, the log says why).
		del := pluginCmd(node, "DEL", "node-ns", "node", node.Path, "")
		if e := runWeirCNI(t, del, func() error { return node.Do(del.Run) }); e.Code != 8 || !strings.Contains(e.Msg, "plugin's netns and netns from CNI_NETNS should not be the same") {
			t.Fatalf("DEL naming the node netns: %+v; want skel's code 8", e)
		}
		check := pluginCmd(node, "CHECK", "node-ns", "node", node.Path, guardPrev)
		e := runWeirCNI(t, check, func() error { return node.Do(check.Run) })
		wantCNIError(t, e, 100, node.Path, "the agent's own network namespace (the node's)")
		wantBait(t, node.Netns)
		unchanged(t, before)
		if got := g.agent.Metric(t, "weir_pods_captured"); got != n {
			t.Fatalf("captured pods %v → %v", n, got)
		}
		if b, _ := os.ReadFile(node.CNILog); !strings.Contains(string(b), "DEL names a namespace weir never captures") {
			t.Fatalf("weir-cni did not log why it left the node netns alone:\n%s", b)
		}
		g.stillWorks(t)
	})

	t.Run("mount namespace", func(t *testing.T) {
		before := snapshot(t, node.Netns, g.server.Netns)
		del := pluginCmd(node, "DEL", "mnt-ns", "mnt", "/proc/self/ns/mnt", "")
		if e := runWeirCNI(t, del, func() error { return node.Do(del.Run) }); e.Code != 0 {
			t.Fatalf("DEL naming a mount namespace failed: %+v", e)
		}
		check := pluginCmd(node, "CHECK", "mnt-ns", "mnt", "/proc/self/ns/mnt", guardPrev)
		e := runWeirCNI(t, check, func() error { return node.Do(check.Run) })
		wantCNIError(t, e, 100, "/proc/self/ns/mnt", "not a network namespace: it is a mount namespace")
		unchanged(t, before)
		g.stillWorks(t)
	})

	t.Run("host netns (PID 1's)", func(t *testing.T) {
		// weir-cni runs in the node netns under a stand-in PID 1 that lives
		// in a throwaway namespace holding the bait: for this plugin
		// /proc/1/ns/net is the stand-in, never the machine's real one,
		// whatever the guard does.
		initNS := testworld.NewNetns(t, "wi-")
		baitNFT(t, initNS)
		before := snapshot(t, initNS, node.Netns)
		del := pluginCmd(node, "DEL", "pid1", "pid1", "/proc/1/ns/net", "", "sh", "-c", `mount -t proc proc /proc || exit 1; ip netns exec "$0" "$@"`, node.Name)
		wrapped := initNS.Command(context.Background(), del.Args[0], del.Args[1:]...)
		wrapped.Env, wrapped.Stdin = del.Env, del.Stdin
		wrapped.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
		if e := runWeirCNI(t, wrapped, wrapped.Run); e.Code != 0 {
			t.Fatalf("DEL naming PID 1's netns failed: %+v", e)
		}
		wantBait(t, initNS)
		unchanged(t, before)
		if b, _ := os.ReadFile(node.CNILog); !strings.Contains(string(b), "the same as /proc/1/ns/net") {
			t.Fatalf("weir-cni did not say it refused PID 1's netns:\n%s", b)
		}
		// CHECK is judged by the agent (whose PID 1 is the machine's: it
		// only compares identities) before weir-cni looks anywhere.
		check := pluginCmd(node, "CHECK", "pid1", "pid1", "/proc/1/ns/net", guardPrev)
		e := runWeirCNI(t, check, func() error { return node.Do(check.Run) })
		if _, err := os.Stat("/proc/1/ns/net"); err != nil {
			// A sandbox that hides PID 1's namespaces from this test hides
			// them from weir-cni too, whose own check refuses first.
			wantCNIError(t, e, 8, "/proc/1/ns/net", "cannot be opened")
		} else {
			wantCNIError(t, e, 100, "/proc/1/ns/net", "the host's network namespace (PID 1's")
		}
		g.stillWorks(t)
	})
}
