package rocketmq

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Request codes weir names (RocketMQ's RequestCode); the "method"
// attribute of any other code is its number.
const (
	CodeSendMessage          = 10
	CodePullMessage          = 11
	CodeQueryConsumerOffset  = 14
	CodeUpdateConsumerOffset = 15
	CodeHeartbeat            = 34
	CodeGetConsumerList      = 38
	CodeLockBatchMQ          = 41
	CodeUnlockBatchMQ        = 42
	CodeGetRouteInfoByTopic  = 105
	CodeSendMessageV2        = 310
	CodeSendBatchMessage     = 320
	CodePopMessage           = 200050
	CodeAckMessage           = 200051
	CodeChangeInvisibleTime  = 200053
	CodeBatchAckMessage      = 200151

	// CodeSuccess, CodeSystemError and CodeSystemBusy are response codes.
	CodeSuccess     = 0
	CodeSystemError = 1
	// CodeSystemBusy is SYSTEM_BUSY: the broker refused the request
	// without running it (Busy).
	CodeSystemBusy = 2
)

var codeNames = map[int32]string{
	CodeSendMessage:          "SEND_MESSAGE",
	CodePullMessage:          "PULL_MESSAGE",
	12:                       "QUERY_MESSAGE",
	CodeQueryConsumerOffset:  "QUERY_CONSUMER_OFFSET",
	CodeUpdateConsumerOffset: "UPDATE_CONSUMER_OFFSET",
	29:                       "SEARCH_OFFSET_BY_TIMESTAMP",
	30:                       "GET_MAX_OFFSET",
	31:                       "GET_MIN_OFFSET",
	33:                       "VIEW_MESSAGE_BY_ID",
	CodeHeartbeat:            "HEART_BEAT",
	35:                       "UNREGISTER_CLIENT",
	36:                       "CONSUMER_SEND_MSG_BACK",
	37:                       "END_TRANSACTION",
	CodeGetConsumerList:      "GET_CONSUMER_LIST_BY_GROUP",
	39:                       "CHECK_TRANSACTION_STATE",
	40:                       "NOTIFY_CONSUMER_IDS_CHANGED",
	CodeLockBatchMQ:          "LOCK_BATCH_MQ",
	CodeUnlockBatchMQ:        "UNLOCK_BATCH_MQ",
	CodeGetRouteInfoByTopic:  "GET_ROUTEINFO_BY_TOPIC",
	CodeSendMessageV2:        "SEND_MESSAGE_V2",
	CodeSendBatchMessage:     "SEND_BATCH_MESSAGE",
	CodePopMessage:           "POP_MESSAGE",
	CodeAckMessage:           "ACK_MESSAGE",
	200052:                   "PEEK_MESSAGE",
	CodeChangeInvisibleTime:  "CHANGE_MESSAGE_INVISIBLETIME",
	CodeBatchAckMessage:      "BATCH_ACK_MESSAGE",
}

// methodNames are codeNames as attribute values, made once: the method
// attribute is read for every request's metrics.
var methodNames = func() map[int32][]byte {
	m := make(map[int32][]byte, len(codeNames))
	for c, n := range codeNames {
		m[c] = []byte(n)
	}
	return m
}()

// ErrNotRocketMQ is returned for bytes that are not a remoting command.
var ErrNotRocketMQ = errors.New("rocketmq: not a remoting command")

// Codec is the RocketMQ remoting codec. Its zero value is ready.
type Codec struct{}

// Compile-time checks: the capabilities the framework finds.
var (
	_ rpc.Codec    = Codec{}
	_ rpc.Hijacker = Codec{}
	_ rpc.Statuser = Codec{}

	_ rpc.ServerRequester = Codec{}
	_ rpc.Frame           = (*Frame)(nil)
)

// Protocol is the registered RocketMQ codec, for rpc.NewPool.
var Protocol = rpc.Register(Codec{}, 0)

// Name is "rocketmq".
func (Codec) Name() string { return "rocketmq" }

// IDWidth is 4: opaque is a 32-bit number.
func (Codec) IDWidth() int { return 4 }

// Decode frames one command and reads its header's code, flag and
// opaque; extFields wait for Attr and the body is not looked at.
func (Codec) Decode(b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	if len(b) < 8 {
		return nil, 8, rpc.ErrNeedMore
	}
	length := int64(binary.BigEndian.Uint32(b))
	hw := binary.BigEndian.Uint32(b[4:])
	ser, hl := byte(hw>>24), int64(hw&0xffffff)
	if ser != JSON && ser != RocketMQ {
		return nil, 0, fmt.Errorf("rocketmq: serialize type %d: %w", ser, ErrNotRocketMQ)
	}
	if length < 4+hl {
		return nil, 0, fmt.Errorf("rocketmq: header of %d bytes in a frame of %d: %w", hl, length, ErrNotRocketMQ)
	}
	total := 4 + length
	if total > int64(max) {
		return nil, 0, fmt.Errorf("rocketmq: frame of %d bytes: %w", total, rpc.ErrFrameTooLarge)
	}
	n := int(total)
	if len(b) < n {
		return nil, n, rpc.ErrNeedMore
	}
	f := &Frame{raw: b[:n:n], ser: ser, bodyAt: 8 + int(hl)}
	var err error
	if ser == RocketMQ {
		err = f.parseBinary(b[8:f.bodyAt])
	} else {
		err = f.parseJSON(b[8:f.bodyAt])
	}
	if err != nil {
		return nil, 0, err
	}
	switch {
	case f.flag&flagResponse != 0:
		f.kind = rpc.Response
	case f.flag&flagOneway != 0:
		f.kind = rpc.Oneway
	default:
		f.kind = rpc.Request
	}
	return f, n, nil
}

// parseBinary reads a ROCKETMQ header (h starts at frame offset 8).
func (f *Frame) parseBinary(h []byte) error {
	if len(h) < binFixed {
		return fmt.Errorf("rocketmq: binary header of %d bytes: %w", len(h), ErrNotRocketMQ)
	}
	f.code = int32(int16(binary.BigEndian.Uint16(h)))
	f.opaqueAt = 8 + 5
	f.opaque = int32(binary.BigEndian.Uint32(h[5:]))
	f.flag = int32(binary.BigEndian.Uint32(h[9:]))
	rl := int64(int32(binary.BigEndian.Uint32(h[13:])))
	rest := int64(len(h) - binFixed)
	if rl < 0 || rl+4 > rest {
		return fmt.Errorf("rocketmq: remark of %d bytes: %w", rl, ErrNotRocketMQ)
	}
	f.remarkAt, f.remarkN = 8+binFixed, int(rl)
	el := int64(int32(binary.BigEndian.Uint32(h[binFixed+rl:])))
	if el < 0 || el != rest-rl-4 {
		return fmt.Errorf("rocketmq: extFields of %d bytes: %w", el, ErrNotRocketMQ)
	}
	f.extAt, f.extN = 8+binFixed+int(rl)+4, int(el)
	return nil
}

// parseJSON reads the top level of a JSON header (h starts at frame
// offset 8): code, flag and opaque, and where remark and extFields are.
func (f *Frame) parseJSON(h []byte) error {
	bad := func(what string) error {
		return fmt.Errorf("rocketmq: JSON header: %s: %w", what, ErrNotRocketMQ)
	}
	s := scanner{b: h}
	if !s.consume('{') {
		return bad("not an object")
	}
	seen := 0
	if !s.consume('}') {
		for {
			k, ok := s.str()
			if !ok || !s.consume(':') {
				return bad("malformed key")
			}
			switch string(k) {
			case `"code"`, `"flag"`, `"opaque"`:
				v, start, _, ok := s.integer()
				if !ok || v < -1<<31 || v > 1<<31-1 {
					return bad(string(k) + " is not a 32-bit integer")
				}
				switch string(k) {
				case `"code"`:
					f.code, seen = int32(v), seen|1
				case `"flag"`:
					f.flag = int32(v)
				default:
					s.ws() // room for a longer id, see SetID
					f.opaque, f.opaqueAt, f.opaqueN, seen = int32(v), 8+start, s.i-start, seen|2
				}
			case `"remark"`:
				s.ws()
				start := s.i
				if s.literal("null") {
					f.remarkNull = true
				} else if _, ok := s.str(); !ok {
					return bad("remark is not a string")
				}
				f.remarkAt, f.remarkN = 8+start, s.i-start
			case `"extFields"`:
				s.ws()
				start := s.i
				if !s.skip(0) {
					return bad("malformed extFields")
				}
				f.extAt, f.extN = 8+start, s.i-start
			default:
				if !s.skip(0) {
					return bad("malformed value of " + string(k))
				}
			}
			if s.consume('}') {
				break
			}
			if !s.consume(',') {
				return bad("expected , or }")
			}
		}
	}
	s.ws()
	if s.i != len(h) {
		return bad("bytes after the object")
	}
	if seen != 3 {
		return bad("no code or opaque")
	}
	return nil
}

// ErrorReply is a response with code 1 (SYSTEM_ERROR), the request's
// opaque and the error as remark, in a JSON header. Bytes that are not a
// command (req nil) get nothing: there is no opaque to answer, so the
// connection closes.
func (Codec) ErrorReply(req rpc.Frame, err error) []byte {
	if req == nil {
		return nil
	}
	return Response(req.(*Frame).opaque, CodeSystemError, "weir: "+err.Error(), nil, nil)
}

// CodeNotSupported is REQUEST_CODE_NOT_SUPPORTED, the agent's answer to a
// broker's request on a shared connection.
const CodeNotSupported = 3

// ServerRequestReply answers a request a broker sends on a shared upstream
// connection (GET_CONSUMER_RUNNING_INFO, CONSUME_MESSAGE_DIRECTLY, …): it
// has no single client to go to, so it gets REQUEST_CODE_NOT_SUPPORTED;
// a one-way notification (NOTIFY_CONSUMER_IDS_CHANGED,
// CHECK_TRANSACTION_STATE) is dropped: clients rebalance on their own
// timer, and a broker checks a transaction again later.
func (Codec) ServerRequestReply(req rpc.Frame) []byte {
	if req.Kind() != rpc.Request {
		return nil
	}
	return Response(req.(*Frame).opaque, CodeNotSupported, "weir: a broker's request on a connection the agent shares among clients", nil, nil)
}

// Busy reports a broker's SYSTEM_BUSY: the request did not run, so a
// route may retry it on another broker.
func (Codec) Busy(resp rpc.Frame) bool {
	f, ok := resp.(*Frame)
	return ok && f.code == CodeSystemBusy
}

// Retryable says which requests may go to another broker than the one
// first picked: those naming no broker, and sends, which the agent
// balances over the writable brokers itself. A pull, offset, lock or ACK
// names the broker that holds its queue or its message, and must reach
// that broker or none.
func (Codec) Retryable(req rpc.Frame) bool {
	f, ok := req.(*Frame)
	if !ok {
		return false
	}
	switch f.code {
	case CodeSendMessage, CodeSendMessageV2, CodeSendBatchMessage:
		return true
	}
	return f.Attr(AttrBrokerName) == nil
}

// Status is a response's code for metrics: "ok" for success, else its
// number.
func (Codec) Status(resp rpc.Frame) string {
	f, ok := resp.(*Frame)
	if !ok || f.code == CodeSuccess {
		return "ok"
	}
	return strconv.Itoa(int(f.code))
}

// header is a JSON header as Response writes it.
type header struct {
	Code      int32             `json:"code"`
	Language  string            `json:"language"`
	Version   int               `json:"version"`
	Opaque    int32             `json:"opaque"`
	Flag      int32             `json:"flag"`
	Remark    string            `json:"remark,omitempty"`
	ExtFields map[string]string `json:"extFields,omitempty"`
}

// Response builds a response command with a JSON header.
func Response(opaque, code int32, remark string, ext map[string]string, body []byte) []byte {
	return command(header{Code: code, Language: "GO", Version: 317, Opaque: opaque, Flag: flagResponse, Remark: remark, ExtFields: ext}, body)
}

// command encodes h and body as a JSON-header command.
func command(h header, body []byte) []byte {
	hb, err := json.Marshal(h)
	if err != nil {
		panic(err) // strings and numbers only: cannot fail
	}
	return frame(JSON, hb, body)
}

// frame puts the length words around a header and a body.
func frame(ser byte, hdr, body []byte) []byte {
	b := make([]byte, 8, 8+len(hdr)+len(body))
	binary.BigEndian.PutUint32(b, uint32(4+len(hdr)+len(body)))
	binary.BigEndian.PutUint32(b[4:], uint32(ser)<<24|uint32(len(hdr)))
	b = append(b, hdr...)
	return append(b, body...)
}
