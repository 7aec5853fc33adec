package rocketmq

import (
	"testing"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// BenchmarkRoutePull is the agent's per-request work on a pull as
// rocketmq-client-go sends it: decode, read the broker name and the
// method (route and metrics), set the upstream opaque and back.
func BenchmarkRoutePull(b *testing.B) {
	req := jsonCmd(CodePullMessage, 123456, 0, map[string]string{
		"consumerGroup": "cg", "topic": "orders", "queueId": "3", "queueOffset": "1024", "maxMsgNums": "32",
		"sysFlag": "3", "commitOffset": "1000", "suspendTimeoutMillis": "20000", "subscription": "*",
		"subVersion": "1700000000000", "expressionType": "TAG", "bname": "broker-b",
	}, nil)
	buf := make([]byte, len(req))
	b.SetBytes(int64(len(req)))
	b.ReportAllocs()
	for b.Loop() {
		copy(buf, req)
		f, _, err := Codec{}.Decode(buf, rpc.Client, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		if len(f.Attr(AttrBrokerName)) == 0 || len(f.Attr(AttrMethod)) == 0 {
			b.Fatal("no attributes")
		}
		f.SetID(77)
		f.SetID(123456)
	}
}
