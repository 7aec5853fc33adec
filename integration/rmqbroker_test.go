package integration

// A RocketMQ name server and broker written for the tests. No RocketMQ
// broker runs on these machines (it is Java); these speak the real
// remoting protocol (JSON headers, the message store's binary message
// format in pull and pop answers) as Apache's clients expect it, written
// from the protocol, with encoding/json rather than weir's codec. They are
// not RocketMQ: one in-memory topic store, no commit log, no replication,
// no transactions, no retry or delay queues, no filtering by tag, and
// consumer registrations shared by all test brokers (a client's heartbeat
// reaches one broker through the agent, see README).

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// rmqCmd is one remoting command.
type rmqCmd struct {
	Code      int32             `json:"code"`
	Language  string            `json:"language"`
	Version   int               `json:"version"`
	Opaque    int32             `json:"opaque"`
	Flag      int32             `json:"flag"`
	Remark    string            `json:"remark,omitempty"`
	ExtFields map[string]string `json:"extFields,omitempty"`
	body      []byte
}

func readRMQ(r io.Reader) (*rmqCmd, error) {
	var hdr [8]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	length := binary.BigEndian.Uint32(hdr[:])
	hw := binary.BigEndian.Uint32(hdr[4:])
	if hw>>24 != 0 {
		return nil, fmt.Errorf("serialize type %d: the test broker reads JSON headers only", hw>>24)
	}
	hl := hw & 0xffffff
	if length < 4+hl || length > 16<<20 {
		return nil, fmt.Errorf("frame of %d bytes with a header of %d", length, hl)
	}
	b := make([]byte, length-4)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	c := &rmqCmd{}
	if err := json.Unmarshal(b[:hl], c); err != nil {
		return nil, fmt.Errorf("header %q: %w", b[:hl], err)
	}
	c.body = b[hl:]
	return c, nil
}

func (c *rmqCmd) encode() []byte {
	h, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	b := binary.BigEndian.AppendUint32(nil, uint32(4+len(h)+len(c.body)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(h)))
	b = append(b, h...)
	return append(b, c.body...)
}

func (c *rmqCmd) reply(code int32, ext map[string]string, body []byte) *rmqCmd {
	return &rmqCmd{Code: code, Language: "JAVA", Version: 317, Opaque: c.Opaque, Flag: 1, ExtFields: ext, body: body}
}

// Response codes the test servers use.
const (
	rmqSuccess      = 0
	rmqPullNotFound = 19
)

// rmqServe accepts on ln and answers each request with handle, each in its
// own goroutine (long polls hold no other request), until ln closes.
// handle may send requests of its own to the client with send; answers to
// them go to answered.
func rmqServe(ln net.Listener, handle func(req *rmqCmd, send func(*rmqCmd)) *rmqCmd, answered func(*rmqCmd)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			var wmu sync.Mutex
			send := func(cmd *rmqCmd) {
				wmu.Lock()
				c.Write(cmd.encode())
				wmu.Unlock()
			}
			br := bufio.NewReader(c)
			for {
				req, err := readRMQ(br)
				if err != nil {
					return
				}
				if req.Flag&1 != 0 {
					answered(req)
					continue
				}
				go func() {
					resp := handle(req, send)
					if resp == nil || req.Flag&2 != 0 {
						return // one-way
					}
					send(resp)
				}()
			}
		}()
	}
}

// testNameServer answers GET_ROUTEINFO_BY_TOPIC for any topic with the
// same route: every broker with 4 queues, perm 6 (read and write) or 4
// (read only), at its own address.
func testNameServer(t *testing.T, ln net.Listener, brokers []*testBroker) {
	type queueData struct {
		BrokerName     string `json:"brokerName"`
		ReadQueueNums  int    `json:"readQueueNums"`
		WriteQueueNums int    `json:"writeQueueNums"`
		Perm           int    `json:"perm"`
		TopicSynFlag   int    `json:"topicSynFlag"`
	}
	type brokerData struct {
		Cluster     string            `json:"cluster"`
		BrokerName  string            `json:"brokerName"`
		BrokerAddrs map[string]string `json:"brokerAddrs"`
	}
	var route struct {
		QueueDatas  []queueData  `json:"queueDatas"`
		BrokerDatas []brokerData `json:"brokerDatas"`
	}
	for _, b := range brokers {
		perm := 6
		if b.readOnly {
			perm = 4
		}
		route.QueueDatas = append(route.QueueDatas, queueData{BrokerName: b.name, ReadQueueNums: rmqQueues, WriteQueueNums: rmqQueues, Perm: perm})
		route.BrokerDatas = append(route.BrokerDatas, brokerData{Cluster: "weir", BrokerName: b.name, BrokerAddrs: map[string]string{"0": b.addr.String()}})
	}
	body, err := json.Marshal(route)
	if err != nil {
		t.Fatal(err)
	}
	go rmqServe(ln, func(req *rmqCmd, _ func(*rmqCmd)) *rmqCmd {
		if req.Code != 105 {
			return req.reply(3, nil, nil) // REQUEST_CODE_NOT_SUPPORTED
		}
		return req.reply(rmqSuccess, nil, body)
	}, func(*rmqCmd) {})
}

// rmqQueues is every test broker's queue count.
const rmqQueues = 4

type storedMsg struct {
	topic, props string
	body         []byte
	popped       bool
}

// rmqConsumers is the consumer registrations the test brokers share.
type rmqConsumers struct {
	mu      sync.Mutex
	byGroup map[string]map[string]bool
}

// testBroker is one broker: a topic's queues in memory, consumer offsets,
// and counts of what reached it.
type testBroker struct {
	name     string
	addr     netip.AddrPort
	readOnly bool
	shared   *rmqConsumers

	mu      sync.Mutex
	queues  map[string]*[rmqQueues][]storedMsg // by topic
	offsets map[string]int64                   // group/topic/queue
	// counts by request: "send", "pull", "pull-commit" (a pull's
	// commitOffset), "offset-query", "offset-update",
	// "pop" (messages popped), "ack", and "foreign <what>" for a request
	// naming another broker (bname, or an ACK's extraInfo)
	counts  map[string]int
	unknown map[int32]int
}

func newTestBroker(name string, addr netip.AddrPort, readOnly bool, shared *rmqConsumers) *testBroker {
	return &testBroker{name: name, addr: addr, readOnly: readOnly, shared: shared,
		queues: map[string]*[rmqQueues][]storedMsg{}, offsets: map[string]int64{}, counts: map[string]int{}, unknown: map[int32]int{}}
}

func (b *testBroker) count(what string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.counts[what]
}

func (b *testBroker) stored(topic string) (n int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if q := b.queues[topic]; q != nil {
		for i := range q {
			n += len(q[i])
		}
	}
	return n
}

// committed reports whether the group's stored offset of every queue of
// topic is at its end (everything consumed and committed).
func (b *testBroker) committed(group, topic string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queues[topic]
	if q == nil {
		return true
	}
	for i := range q {
		if b.offsets[fmt.Sprintf("%s/%s/%d", group, topic, i)] != int64(len(q[i])) {
			return false
		}
	}
	return true
}

// checkBroker counts a request that names a broker: the agent must have
// brought it to the broker it names.
func (b *testBroker) checkBroker(what, named string) {
	b.counts[what]++
	if named != "" && named != b.name {
		b.counts["foreign "+what]++
	}
}

func (b *testBroker) queue(topic string) *[rmqQueues][]storedMsg {
	q := b.queues[topic]
	if q == nil {
		q = &[rmqQueues][]storedMsg{}
		b.queues[topic] = q
	}
	return q
}

func rmqInt(s string) int64 {
	v, _ := strconv.ParseInt(s, 10, 64)
	return v
}

func (b *testBroker) serve(ln net.Listener) {
	go rmqServe(ln, b.handle, func(resp *rmqCmd) {
		b.mu.Lock()
		b.counts[fmt.Sprintf("answer %d to a broker request", resp.Code)]++
		b.mu.Unlock()
	})
}

func (b *testBroker) handle(req *rmqCmd, send func(*rmqCmd)) *rmqCmd {
	x := req.ExtFields
	switch req.Code {
	case 10, 310, 320: // SEND_MESSAGE, _V2, SEND_BATCH_MESSAGE
		topic, qid, props, bname := x["topic"], x["queueId"], x["properties"], x["bname"]
		if req.Code != 10 {
			topic, qid, props, bname = x["b"], x["e"], x["i"], x["n"]
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		b.counts["send"]++
		if bname != b.name {
			b.counts["send named elsewhere"]++ // the agent balanced it here
		}
		if b.readOnly {
			b.counts["send to read-only"]++
			return req.reply(16, nil, nil) // NO_PERMISSION
		}
		q := b.queue(topic)
		i := int(rmqInt(qid)) % rmqQueues
		q[i] = append(q[i], storedMsg{topic: topic, props: props, body: req.body})
		off := len(q[i]) - 1
		return req.reply(rmqSuccess, map[string]string{
			"msgId": fmt.Sprintf("%s%08X%016X", strings.Repeat("0", 8), i, off), "queueId": strconv.Itoa(i), "queueOffset": strconv.Itoa(off),
		}, nil)
	case 11: // PULL_MESSAGE
		return b.pull(req)
	case 14: // QUERY_CONSUMER_OFFSET
		b.mu.Lock()
		defer b.mu.Unlock()
		b.checkBroker("offset-query", x["bname"])
		off := b.offsets[x["consumerGroup"]+"/"+x["topic"]+"/"+x["queueId"]]
		return req.reply(rmqSuccess, map[string]string{"offset": strconv.FormatInt(off, 10)}, nil)
	case 15: // UPDATE_CONSUMER_OFFSET
		b.mu.Lock()
		defer b.mu.Unlock()
		b.checkBroker("offset-update", x["bname"])
		b.offsets[x["consumerGroup"]+"/"+x["topic"]+"/"+x["queueId"]] = rmqInt(x["commitOffset"])
		return req.reply(rmqSuccess, nil, nil)
	case 34: // HEART_BEAT: the client's groups
		var hb struct {
			ClientID        string `json:"clientID"`
			ConsumerDataSet []struct {
				GroupName string `json:"groupName"`
			} `json:"consumerDataSet"`
		}
		json.Unmarshal(req.body, &hb)
		b.shared.mu.Lock()
		for _, c := range hb.ConsumerDataSet {
			if b.shared.byGroup[c.GroupName] == nil {
				b.shared.byGroup[c.GroupName] = map[string]bool{}
			}
			b.shared.byGroup[c.GroupName][hb.ClientID] = true
		}
		b.shared.mu.Unlock()
		b.mu.Lock()
		b.counts["heartbeat"]++
		b.mu.Unlock()
		// As a broker does when a group changes, and as a console asks
		// for a consumer's state: a one-way NOTIFY_CONSUMER_IDS_CHANGED and
		// a GET_CONSUMER_RUNNING_INFO request on the client's connection.
		send(&rmqCmd{Code: 40, Language: "JAVA", Version: 317, Opaque: 1 << 30, Flag: 2, ExtFields: map[string]string{"consumerGroup": "cg"}})
		send(&rmqCmd{Code: 307, Language: "JAVA", Version: 317, Opaque: 1<<30 + 1, ExtFields: map[string]string{"consumerGroup": "cg", "clientId": hb.ClientID}})
		return req.reply(rmqSuccess, nil, nil)
	case 38: // GET_CONSUMER_LIST_BY_GROUP
		b.shared.mu.Lock()
		var ids []string
		for id := range b.shared.byGroup[x["consumerGroup"]] {
			ids = append(ids, id)
		}
		b.shared.mu.Unlock()
		body, _ := json.Marshal(map[string][]string{"consumerIdList": ids})
		return req.reply(rmqSuccess, nil, body)
	case 35: // UNREGISTER_CLIENT
		return req.reply(rmqSuccess, nil, nil)
	case 30, 31, 29: // GET_MAX_OFFSET, GET_MIN_OFFSET, SEARCH_OFFSET_BY_TIMESTAMP
		b.mu.Lock()
		defer b.mu.Unlock()
		off := 0
		if req.Code == 30 {
			off = len(b.queue(x["topic"])[rmqInt(x["queueId"])%rmqQueues])
		}
		return req.reply(rmqSuccess, map[string]string{"offset": strconv.Itoa(off)}, nil)
	case 200050: // POP_MESSAGE
		return b.pop(req)
	case 200051: // ACK_MESSAGE
		return b.ack(req)
	}
	b.mu.Lock()
	b.unknown[req.Code]++
	b.mu.Unlock()
	return req.reply(3, nil, nil)
}

// pull answers from the queue's offset, holding the request (long poll,
// at most 1 s here) while the queue has nothing new. A pull's commitOffset
// (sysFlag bit 0) is an offset update too.
func (b *testBroker) pull(req *rmqCmd) *rmqCmd {
	x := req.ExtFields
	qid := int(rmqInt(x["queueId"])) % rmqQueues
	from := rmqInt(x["queueOffset"])
	max := int(rmqInt(x["maxMsgNums"]))
	b.mu.Lock()
	b.checkBroker("pull", x["bname"])
	if rmqInt(x["sysFlag"])&1 != 0 && rmqInt(x["commitOffset"]) > 0 {
		b.checkBroker("pull-commit", x["bname"])
		b.offsets[x["consumerGroup"]+"/"+x["topic"]+"/"+x["queueId"]] = rmqInt(x["commitOffset"])
	}
	b.mu.Unlock()
	deadline := time.Now().Add(time.Second)
	for {
		b.mu.Lock()
		q := b.queue(x["topic"])[qid]
		n := int64(len(q))
		if from < n || time.Now().After(deadline) {
			ext := map[string]string{"minOffset": "0", "maxOffset": strconv.FormatInt(n, 10), "suggestWhichBrokerId": "0"}
			if from >= n {
				b.mu.Unlock()
				ext["nextBeginOffset"] = strconv.FormatInt(n, 10)
				return req.reply(rmqPullNotFound, ext, nil)
			}
			var body []byte
			i := from
			for ; i < n && int(i-from) < max; i++ {
				body = append(body, b.encodeMsg(q[i], qid, i, "")...)
			}
			b.mu.Unlock()
			ext["nextBeginOffset"] = strconv.FormatInt(i, 10)
			return req.reply(rmqSuccess, ext, body)
		}
		b.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

// pop hands out up to maxMsgNums messages of the topic no one popped yet,
// each with its POP_CK: the extraInfo RocketMQ writes ("ckQueueOffset
// popTime invisibleTime reviveQid topicType brokerName queueId
// queueOffset"), which the client's ACK carries back.
func (b *testBroker) pop(req *rmqCmd) *rmqCmd {
	x := req.ExtFields
	max := int(rmqInt(x["maxMsgNums"]))
	b.mu.Lock()
	defer b.mu.Unlock()
	q := b.queue(x["topic"])
	var body []byte
	n := 0
	now := time.Now().UnixMilli()
	for qid := range q {
		for off := range q[qid] {
			if n == max {
				break
			}
			m := &q[qid][off]
			if m.popped {
				continue
			}
			m.popped = true
			n++
			ck := fmt.Sprintf("%d %d %s 0 0 %s %d %d", off, now, x["invisibleTime"], b.name, qid, off)
			body = append(body, b.encodeMsg(*m, qid, int64(off), ck)...)
		}
	}
	b.counts["pop"] += n
	b.counts["pop requests"]++
	if n == 0 {
		return req.reply(rmqPullNotFound, nil, nil)
	}
	return req.reply(rmqSuccess, map[string]string{"popTime": strconv.FormatInt(now, 10), "invisibleTime": x["invisibleTime"], "reviveQid": "0", "restNum": "0"}, body)
}

// ack accepts an ACK only for a message this broker popped: its extraInfo
// names this broker, and the queue and offset in it were popped here.
func (b *testBroker) ack(req *rmqCmd) *rmqCmd {
	x := req.ExtFields
	f := strings.Fields(x["extraInfo"])
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(f) < 8 || f[5] != b.name {
		b.counts["foreign ack"]++
		return req.reply(24, nil, nil) // not this broker's pop
	}
	qid, off := rmqInt(f[6]), rmqInt(f[7])
	q := b.queue(x["topic"])
	if qid < 0 || qid >= rmqQueues || off < 0 || off >= int64(len(q[qid])) || !q[qid][off].popped {
		b.counts["foreign ack"]++
		return req.reply(24, nil, nil)
	}
	b.counts["ack"]++
	return req.reply(rmqSuccess, nil, nil)
}

// encodeMsg writes a message in the store's format, as pulls and pops
// return it; popCK, when set, is added as the POP_CK property.
func (b *testBroker) encodeMsg(m storedMsg, qid int, off int64, popCK string) []byte {
	props := m.props
	if popCK != "" {
		props += "POP_CK\x01" + popCK + "\x02"
	}
	host := b.addr.Addr().As4()
	var w []byte
	w = binary.BigEndian.AppendUint32(w, 0) // total size, below
	w = binary.BigEndian.AppendUint32(w, 0xdaa320a7)
	w = binary.BigEndian.AppendUint32(w, crc32.ChecksumIEEE(m.body))
	w = binary.BigEndian.AppendUint32(w, uint32(qid))
	w = binary.BigEndian.AppendUint32(w, 0)                              // flag
	w = binary.BigEndian.AppendUint64(w, uint64(off))                    // queue offset
	w = binary.BigEndian.AppendUint64(w, uint64(off))                    // physical offset
	w = binary.BigEndian.AppendUint32(w, 0)                              // sysFlag: IPv4 hosts
	w = binary.BigEndian.AppendUint64(w, uint64(time.Now().UnixMilli())) // born
	w = append(w, host[:]...)
	w = binary.BigEndian.AppendUint32(w, uint32(b.addr.Port()))
	w = binary.BigEndian.AppendUint64(w, uint64(time.Now().UnixMilli())) // stored
	w = append(w, host[:]...)
	w = binary.BigEndian.AppendUint32(w, uint32(b.addr.Port()))
	w = binary.BigEndian.AppendUint32(w, 0) // reconsume times
	w = binary.BigEndian.AppendUint64(w, 0) // prepared transaction offset
	w = binary.BigEndian.AppendUint32(w, uint32(len(m.body)))
	w = append(w, m.body...)
	w = append(w, byte(len(m.topic)))
	w = append(w, m.topic...)
	w = binary.BigEndian.AppendUint16(w, uint16(len(props)))
	w = append(w, props...)
	binary.BigEndian.PutUint32(w, uint32(len(w)))
	return w
}

// decodeMsgProps reads the messages of a pull or pop body and returns each
// one's properties (the test's pop client needs POP_CK), or an error.
func decodeMsgProps(b []byte) ([]map[string]string, error) {
	var out []map[string]string
	for len(b) > 0 {
		if len(b) < 4 {
			return nil, fmt.Errorf("message of %d bytes", len(b))
		}
		size := int(binary.BigEndian.Uint32(b))
		if size < 4 || size > len(b) {
			return nil, fmt.Errorf("message size %d of %d", size, len(b))
		}
		m := b[:size]
		b = b[size:]
		// fixed part up to the body length, IPv4 hosts
		const bodyLenAt = 4 + 4 + 4 + 4 + 4 + 8 + 8 + 4 + 8 + 8 + 8 + 8 + 4 + 8
		if len(m) < bodyLenAt+4 {
			return nil, fmt.Errorf("short message")
		}
		i := bodyLenAt + 4 + int(binary.BigEndian.Uint32(m[bodyLenAt:]))
		if i >= len(m) {
			return nil, fmt.Errorf("body past the message")
		}
		i += 1 + int(m[i])
		if i+2 > len(m) {
			return nil, fmt.Errorf("topic past the message")
		}
		pl := int(binary.BigEndian.Uint16(m[i:]))
		i += 2
		if i+pl > len(m) {
			return nil, fmt.Errorf("properties past the message")
		}
		props := map[string]string{}
		for _, kv := range strings.Split(string(m[i:i+pl]), "\x02") {
			if k, v, ok := strings.Cut(kv, "\x01"); ok {
				props[k] = v
			}
		}
		out = append(out, props)
	}
	return out, nil
}
