package integration

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// vipRocketMQ is the service address TestRocketMQ's clients are given as
// their name server.
const vipRocketMQ = "10.96.0.60:9876"

// Issue 11, RocketMQ: Apache's Go client (rocketmq-client-go, producer and
// push consumer) and a pop/ack client speaking the real frames reach a name
// server and three test brokers (broker-a and broker-b writable, broker-c
// read only; see rmqbroker_test.go for what they are) only through the
// service address, in both capture modes. The agent rewrites the name
// server's route reply so every broker address is the service address;
// it balances sends over the writable brokers (rpcRoute "send"), and
// routes every request that names a broker (bname, an ACK's extraInfo) to
// that broker. Shown: sends on both writable brokers and none on the
// read-only one; every pull, offset query and update reaching the broker
// that owns the queue, and the committed offsets at each queue's end;
// every message consumed exactly once; pops balanced over the readable
// brokers and ACKs per broker equal to pops per broker, none refused, also
// for messages popped before an agent takeover and ACKed after it; every
// request a broker sends on the shared connection answered by the agent
// with the connection kept; and a pull in flight when the agent drains
// answered by its broker before the connection closes.
func TestRocketMQ(t *testing.T) {
	for _, mode := range []string{"redirect", "tproxy"} {
		t.Run(mode, func(t *testing.T) { testRocketMQ(t, mode) })
	}
}

func testRocketMQ(t *testing.T, mode string) {
	client := testworld.RocketMQClient(t)
	node := testworld.NewNode(t, testworld.NodeOptions{SpecVersion: "1.1.0", Weir: map[string]any{"mode": mode}})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})

	const port = 10911
	shared := &rmqConsumers{byGroup: map[string]map[string]bool{}}
	var brokers []*testBroker
	for _, name := range []string{"broker-a", "broker-b", "broker-c"} {
		p := node.MustAddPod(t, "backend", name)
		b := newTestBroker(name, netip.AddrPortFrom(p.IP4, port), name == "broker-c", shared)
		b.serve(p.Listen(t, fmt.Sprintf(":%d", port)))
		brokers = append(brokers, b)
	}
	nsPod := node.MustAddPod(t, "backend", "namesrv")
	testNameServer(t, nsPod.Listen(t, ":9876"), brokers)
	ep := func(b *testBroker) string { return b.addr.String() }
	agent.Stop(t)
	services := []any{
		map[string]any{
			"name": "mq", "address": vipRocketMQ, "protocol": "rocketmq",
			// Requests that name no broker (heartbeats, consumer lists,
			// pops): any readable broker.
			"endpoints": []string{ep(brokers[0]), ep(brokers[1]), ep(brokers[2])},
			"rpcRoutes": []any{
				map[string]any{"name": "namesrv", "matches": []any{map[string]any{"method": "GET_ROUTEINFO_BY_TOPIC"}},
					"backendRefs": []any{map[string]any{"service": "mq-namesrv"}}},
				map[string]any{"name": "send", "matches": []any{
					map[string]any{"method": "SEND_MESSAGE"}, map[string]any{"method": "SEND_MESSAGE_V2"}, map[string]any{"method": "SEND_BATCH_MESSAGE"}},
					"backendRefs": []any{map[string]any{"service": "mq-writable"}}},
			},
		},
		map[string]any{"name": "mq-namesrv", "endpoints": []string{nsPod.IP4.String() + ":9876"}},
		map[string]any{"name": "mq-writable", "endpoints": []string{ep(brokers[0]), ep(brokers[1])}},
	}
	for _, b := range brokers {
		svc := "mq-" + b.name
		services = append(services, map[string]any{"name": svc, "endpoints": []string{ep(b)}})
		rt := services[0].(map[string]any)
		rt["rpcRoutes"] = append(rt["rpcRoutes"].([]any), map[string]any{
			"name": b.name, "matches": []any{map[string]any{"attributes": map[string]any{"brokerName": b.name}}},
			"backendRefs": []any{map[string]any{"service": svc}}})
	}
	cfg := map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}, "services": services}
	agent = node.StartAgent(t, cfg)
	pod := node.MustAddPod(t, "demo", "app")

	run := func(args ...string) string {
		t.Helper()
		out, err := pod.Run(client, args...)
		if err != nil {
			t.Fatalf("rmq-client %v: %v\n%s\nagent log:\n%s", args, err, lastLines(out, 30), lastLines(agent.Log(), 30))
		}
		return out
	}
	report := func() string {
		var s strings.Builder
		for _, b := range brokers {
			b.mu.Lock()
			fmt.Fprintf(&s, "%s: %v unknown codes %v\n", b.name, b.counts, b.unknown)
			b.mu.Unlock()
		}
		return s.String()
	}

	// Sends: balanced over the writable brokers only.
	const n = 40
	sent := run("produce", "-ns", vipRocketMQ, "-topic", "orders", "-n", strconv.Itoa(n))
	if got := strings.Count(sent, "sent msg-"); got != n {
		t.Fatalf("%d of %d sends reported:\n%s", got, n, lastLines(sent, 10))
	}
	a, b, c := brokers[0].stored("orders"), brokers[1].stored("orders"), brokers[2].stored("orders")
	if a == 0 || b == 0 || a+b != n || brokers[2].count("send") != 0 || c != 0 {
		t.Fatalf("sends: broker-a %d, broker-b %d, broker-c (read only) %d, want both writable brokers and %d in all\n%s", a, b, c, n, report())
	}
	t.Logf("sends: broker-a %d, broker-b %d, broker-c 0", a, b)

	// Push consumption: every message exactly once; pulls and offsets at
	// the broker owning the queue.
	got := run("consume", "-ns", vipRocketMQ, "-topic", "orders", "-group", "cg", "-want", strconv.Itoa(n))
	seen := map[string]int{}
	for _, l := range strings.Split(got, "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "got" {
			seen[f[1]]++
		}
	}
	for i := range n {
		if k := seen[fmt.Sprintf("msg-%d", i)]; k != 1 {
			t.Errorf("msg-%d consumed %d times", i, k)
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct messages consumed, want %d", len(seen), n)
	}
	// The consumer persisted its offsets on shutdown (one-way, every
	// queue it held, to its broker): give them a moment to arrive.
	deadline := time.Now().Add(20 * time.Second)
	for !brokers[0].committed("cg", "orders") || !brokers[1].committed("cg", "orders") ||
		brokers[0].count("offset-update") == 0 || brokers[1].count("offset-update") == 0 || brokers[2].count("offset-update") == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("committed offsets not at the queues' ends, or no UPDATE_CONSUMER_OFFSET at a broker, after the consumer's shutdown:\n%s", report())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, br := range brokers {
		for _, what := range []string{"pull", "offset-query", "offset-update"} {
			if br.count(what) == 0 {
				t.Errorf("%s got no %s (each broker owns 4 of the consumer's queues)\n%s", br.name, what, report())
			}
		}
		for _, what := range []string{"pull", "pull-commit", "offset-query", "offset-update", "ack"} {
			if k := br.count("foreign " + what); k != 0 {
				t.Errorf("%s got %d %s requests for another broker's queue\n%s", br.name, k, what, report())
			}
		}
	}

	// Pop and ACK over one connection: pops balanced by the agent, every
	// ACK back at the broker that served its pop.
	const popN = 30
	run("produce", "-ns", vipRocketMQ, "-topic", "pops", "-n", strconv.Itoa(popN))
	pc := dialRMQ(t, pod)
	cks := pc.pop("pops", popN)
	popped, acked := len(cks), pc.ack("pops", cks)
	if popped != popN || acked != popN {
		t.Fatalf("pop client: %d popped, %d acked, want %d\n%s", popped, acked, popN, report())
	}
	for _, br := range brokers {
		if p, k := br.count("pop"), br.count("ack"); p != k {
			t.Errorf("%s: %d messages popped, %d acked\n%s", br.name, p, k, report())
		}
		if br.count("pop requests") == 0 {
			t.Errorf("%s got no pop request: pops not balanced\n%s", br.name, report())
		}
	}
	// Each heartbeat made its broker send a one-way notification and a
	// request on the shared connection: the agent answered every request
	// (REQUEST_CODE_NOT_SUPPORTED) and kept the connection, which the
	// rest of the test used.
	deadline = time.Now().Add(10 * time.Second)
	for _, br := range brokers {
		for br.count("heartbeat") != br.count("answer 3 to a broker request") {
			if time.Now().After(deadline) {
				t.Fatalf("%s: broker requests not answered by the agent\n%s", br.name, report())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	t.Logf("brokers:\n%s", report())
	if v := agent.Metric(t, `weir_rpc_requests_total{method="ACK_MESSAGE",protocol="rocketmq",service="mq",status="ok"}`); v != popN {
		t.Errorf("weir_rpc_requests_total for ACK_MESSAGE = %v, want %d", v, popN)
	}

	// Takeover: messages popped through this agent are ACKed through its
	// successor, each at the broker that served its pop (the ACK names
	// it: the agent keeps no pop state to lose), and none is refused.
	run("produce", "-ns", vipRocketMQ, "-topic", "handover", "-n", strconv.Itoa(popN))
	var before [2][]int
	for _, br := range brokers {
		before[0] = append(before[0], br.count("pop"))
		before[1] = append(before[1], br.count("ack"))
	}
	cks = dialRMQ(t, pod).pop("handover", popN)
	if len(cks) != popN {
		t.Fatalf("popped %d of %d before the takeover\n%s", len(cks), popN, report())
	}
	successor := node.StartAgent(t, cfg)
	deadline = time.Now().Add(30 * time.Second)
	for !strings.Contains(successor.Log(), `"took over"`) {
		if time.Now().After(deadline) {
			t.Fatalf("successor never took over:\n%s", lastLines(successor.Log(), 30))
		}
		time.Sleep(50 * time.Millisecond)
	}
	agent = successor
	if got := dialRMQ(t, pod).ack("handover", cks); got != popN {
		t.Fatalf("%d of %d ACKs accepted after the takeover\n%s", got, popN, report())
	}
	for i, br := range brokers {
		if p, k := br.count("pop")-before[0][i], br.count("ack")-before[1][i]; p != k {
			t.Errorf("%s across the takeover: %d messages popped, %d acked\n%s", br.name, p, k, report())
		}
	}
	if v := agent.Metric(t, `weir_rpc_requests_total{method="ACK_MESSAGE",protocol="rocketmq",service="mq",status="ok"}`); v != popN {
		t.Errorf("successor's weir_rpc_requests_total for ACK_MESSAGE = %v, want %d", v, popN)
	}

	// Drain: a pull the broker is holding (long poll) when the agent is
	// told to stop is answered by the broker, not by the agent, and the
	// connection closes after it.
	conn, err := pod.Dial(vipRocketMQ, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	pulls := brokers[0].count("pull")
	pull := &rmqCmd{Code: 11, Language: "GO", Version: 317, Opaque: 7, ExtFields: map[string]string{
		"consumerGroup": "cg", "topic": "empty", "queueId": "0", "queueOffset": "0", "maxMsgNums": "1",
		"sysFlag": "0", "commitOffset": "0", "suspendTimeoutMillis": "1000", "bname": "broker-a"}}
	if _, err := conn.Write(pull.encode()); err != nil {
		t.Fatal(err)
	}
	for brokers[0].count("pull") == pulls {
		if time.Now().After(deadline.Add(20 * time.Second)) {
			t.Fatalf("the pull never reached broker-a\n%s", report())
		}
		time.Sleep(10 * time.Millisecond)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- agent.Stop(t) }()
	br := bufio.NewReader(conn)
	resp, err := readRMQ(br)
	if err != nil {
		t.Fatalf("in-flight pull during drain: %v", err)
	}
	if resp.Opaque != 7 || resp.Code != rmqPullNotFound {
		t.Fatalf("in-flight pull during drain answered code %d opaque %d %q, want the broker's %d", resp.Code, resp.Opaque, resp.Remark, rmqPullNotFound)
	}
	if _, err := readRMQ(br); err == nil {
		t.Fatal("the connection stayed open after the drain")
	}
	if err := <-stopped; err != nil {
		t.Fatalf("agent exit: %v", err)
	}
}

// rmqConn is the test's pop/ack client: one captured connection to the
// service address, speaking RocketMQ 5's pop and ack frames.
type rmqConn struct {
	t      *testing.T
	conn   net.Conn
	br     *bufio.Reader
	opaque int32
}

func dialRMQ(t *testing.T, pod *testworld.Pod) *rmqConn {
	t.Helper()
	c, err := pod.Dial(vipRocketMQ, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(90 * time.Second))
	return &rmqConn{t: t, conn: c, br: bufio.NewReader(c), opaque: 100}
}

func (r *rmqConn) call(code int32, ext map[string]string) *rmqCmd {
	r.t.Helper()
	r.opaque++
	req := &rmqCmd{Code: code, Language: "JAVA", Version: 317, Opaque: r.opaque, ExtFields: ext}
	if _, err := r.conn.Write(req.encode()); err != nil {
		r.t.Fatalf("pop client write: %v", err)
	}
	resp, err := readRMQ(r.br)
	if err != nil {
		r.t.Fatalf("pop client read: %v", err)
	}
	if resp.Opaque != r.opaque || resp.Flag&1 == 0 {
		r.t.Fatalf("pop client: answer opaque %d flag %d to request %d", resp.Opaque, resp.Flag, r.opaque)
	}
	return resp
}

// pop pops topic's messages, 4 at a time, until want were popped or 20
// empty pops in a row, and returns each one's extraInfo (POP_CK).
func (r *rmqConn) pop(topic string, want int) (cks []string) {
	r.t.Helper()
	for empty := 0; len(cks) < want && empty < 20; {
		resp := r.call(200050, map[string]string{
			"consumerGroup": "popg", "topic": topic, "queueId": "-1", "maxMsgNums": "4",
			"invisibleTime": "60000", "pollTime": "0", "bornTime": strconv.FormatInt(time.Now().UnixMilli(), 10), "initMode": "0",
		})
		if resp.Code == rmqPullNotFound {
			empty++
			continue
		}
		if resp.Code != rmqSuccess {
			r.t.Fatalf("pop answered %d %q", resp.Code, resp.Remark)
		}
		msgs, err := decodeMsgProps(resp.body)
		if err != nil {
			r.t.Fatalf("pop body: %v", err)
		}
		for _, m := range msgs {
			cks = append(cks, m["POP_CK"])
		}
		empty = 0
	}
	return cks
}

// ack ACKs each popped message with its extraInfo, as RocketMQ 5's
// clients do, and returns how many the brokers accepted.
func (r *rmqConn) ack(topic string, cks []string) (acked int) {
	r.t.Helper()
	for _, ck := range cks {
		f := strings.Fields(ck)
		if len(f) < 8 {
			r.t.Fatalf("POP_CK %q", ck)
		}
		resp := r.call(200051, map[string]string{"consumerGroup": "popg", "topic": topic, "queueId": f[6], "extraInfo": ck, "offset": f[7]})
		if resp.Code != rmqSuccess {
			r.t.Errorf("ACK of %q answered %d %q", ck, resp.Code, resp.Remark)
			continue
		}
		acked++
	}
	return acked
}
