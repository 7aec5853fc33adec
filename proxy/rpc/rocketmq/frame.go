package rocketmq

// Wire format (see doc.go for the fields):
//
//	+-----------+------+-------------+-----------------+------+
//	| length(4) | type | headerLen(3)| header          | body |
//	+-----------+------+-------------+-----------------+------+
//	length = 4 + headerLen + len(body); type 0 JSON, 1 ROCKETMQ binary

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"strconv"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Serialize types, the high byte of the header length word.
const (
	JSON     = 0
	RocketMQ = 1
)

// Flag bits.
const (
	flagResponse = 1 << 0
	flagOneway   = 1 << 1
)

// binFixed is the ROCKETMQ header's size before the remark.
const binFixed = 2 + 1 + 2 + 4 + 4 + 4

// Attribute names of a request (Frame.Attr). Any other name is a header
// field (extFields).
const (
	AttrService    = "service"
	AttrTopic      = "topic"
	AttrGroup      = "group"
	AttrMethod     = "method"
	AttrCode       = "code"
	AttrBrokerName = "brokerName"
)

// Frame is one remoting command holding the bytes it was read from. Its
// extFields are read only by Attr.
type Frame struct {
	raw  []byte
	kind rpc.Kind
	ser  byte
	code int32
	flag int32
	// opaque: its value and, in a JSON header, where its digits are (the
	// span, padding spaces included).
	opaque            int32
	opaqueAt, opaqueN int
	remarkAt, remarkN int // JSON: the string token with quotes; binary: the bytes
	remarkNull        bool
	extAt, extN       int // the extFields object (JSON) or block (binary)
	bodyAt            int
}

// Kind is Request, Oneway or Response.
func (f *Frame) Kind() rpc.Kind { return f.kind }

// Bytes is the command as read, its opaque as last set.
func (f *Frame) Bytes() []byte { return f.raw }

// ID is the opaque, as an unsigned 32-bit number.
func (f *Frame) ID() uint64 { return uint64(uint32(f.opaque)) }

// Code is the request code, or a response's status code.
func (f *Frame) Code() int32 { return f.code }

// Body is what follows the header.
func (f *Frame) Body() []byte { return f.raw[f.bodyAt:] }

// Remark is the remark text (a response's error message), unescaped.
func (f *Frame) Remark() string {
	if f.remarkN == 0 || f.remarkNull {
		return ""
	}
	r := f.raw[f.remarkAt : f.remarkAt+f.remarkN]
	if f.ser == RocketMQ {
		return string(r)
	}
	var s string
	if json.Unmarshal(r, &s) != nil {
		return ""
	}
	return s
}

// SetID sets the opaque. In a binary header it is patched in place; in a
// JSON header its decimal text is rewritten, padded with spaces when
// shorter, and the frame rebuilt (into new bytes) when longer.
func (f *Frame) SetID(id uint64) {
	f.opaque = int32(uint32(id))
	if f.ser == RocketMQ {
		binary.BigEndian.PutUint32(f.raw[f.opaqueAt:], uint32(f.opaque))
		return
	}
	var digits [12]byte
	d := strconv.AppendInt(digits[:0], int64(f.opaque), 10)
	if len(d) <= f.opaqueN {
		n := copy(f.raw[f.opaqueAt:], d)
		for i := f.opaqueAt + n; i < f.opaqueAt+f.opaqueN; i++ {
			f.raw[i] = ' '
		}
		return
	}
	// Longer: leave room for any int32 so later ids fit in place.
	const width = len("-2147483648")
	grow := width - f.opaqueN
	nb := make([]byte, 0, len(f.raw)+grow)
	nb = append(nb, f.raw[:f.opaqueAt]...)
	nb = append(nb, d...)
	for range width - len(d) {
		nb = append(nb, ' ')
	}
	nb = append(nb, f.raw[f.opaqueAt+f.opaqueN:]...)
	binary.BigEndian.PutUint32(nb, binary.BigEndian.Uint32(nb)+uint32(grow))
	hl := binary.BigEndian.Uint32(nb[4:])&0xffffff + uint32(grow)
	binary.BigEndian.PutUint32(nb[4:], uint32(f.ser)<<24|hl)
	shift := func(at *int) {
		if *at > f.opaqueAt {
			*at += grow
		}
	}
	shift(&f.remarkAt)
	shift(&f.extAt)
	shift(&f.bodyAt)
	f.raw, f.opaqueN = nb, width
}

// Attr returns a request's routing attribute (see the Attr constants; any
// other name is an extFields entry), or nil.
func (f *Frame) Attr(name string) []byte {
	if f.kind == rpc.Response {
		return nil
	}
	v2 := f.code == CodeSendMessageV2 || f.code == CodeSendBatchMessage
	switch name {
	case AttrMethod:
		if n := methodNames[f.code]; n != nil {
			return n
		}
		return strconv.AppendInt(nil, int64(f.code), 10)
	case AttrCode:
		return strconv.AppendInt(nil, int64(f.code), 10)
	case AttrService, AttrTopic:
		if v2 {
			return f.field("b")
		}
		return f.field("topic")
	case AttrGroup:
		if v2 {
			return f.field("a")
		}
		if v := f.field("consumerGroup"); v != nil {
			return v
		}
		return f.field("producerGroup")
	case AttrBrokerName:
		if v := f.field("bname"); len(v) > 0 {
			return v
		}
		if v := f.field("brokerName"); len(v) > 0 {
			return v
		}
		if v2 {
			return f.field("n")
		}
		switch f.code {
		case CodeAckMessage, CodeChangeInvisibleTime:
			return extraInfoBroker(f.field("extraInfo"))
		case CodeLockBatchMQ, CodeUnlockBatchMQ, CodeBatchAckMessage:
			// Their broker is in the JSON body: a lock's mqSet (one
			// broker's queues) or a batch ACK's brokerName.
			return bodyBrokerName(f.Body())
		}
		return nil
	}
	return f.field(name)
}

var brokerNameKey = []byte(`"brokerName"`)

// bodyBrokerName is the first "brokerName" string value in a JSON body,
// or nil. Read only when a route asks for a lock's or batch ACK's broker.
func bodyBrokerName(body []byte) []byte {
	i := bytes.Index(body, brokerNameKey)
	if i < 0 {
		return nil
	}
	s := scanner{b: body, i: i + len(brokerNameKey)}
	if !s.consume(':') {
		return nil
	}
	tok, ok := s.str()
	if !ok || len(tok) <= 2 {
		return nil
	}
	return unquote(tok)
}

// extraInfoBroker is the broker name in a pop's extraInfo (RocketMQ's
// ExtraInfoUtil: "ckQueueOffset popTime invisibleTime reviveQid topicType
// brokerName queueId queueOffset", space separated), or nil.
func extraInfoBroker(s []byte) []byte {
	for i := 0; i < 5; i++ {
		j := bytes.IndexByte(s, ' ')
		if j < 0 {
			return nil
		}
		s = s[j+1:]
	}
	if j := bytes.IndexByte(s, ' '); j >= 0 {
		s = s[:j]
	}
	if len(s) == 0 {
		return nil
	}
	return s
}

// field returns an extFields value by key (the first, if repeated), or
// nil. It scans the header's fields each time and keeps nothing: a route
// and the metrics ask for two or three names, cheaper to find than to
// index, and with no allocation.
func (f *Frame) field(name string) []byte {
	ext := f.raw[f.extAt : f.extAt+f.extN]
	if f.ser == RocketMQ {
		return binaryField(ext, name)
	}
	return jsonField(ext, name)
}

// binaryField finds a ROCKETMQ extFields entry: keyLen(2) key
// valueLen(4) value, repeated. A malformed block ends the search.
func binaryField(b []byte, name string) []byte {
	for len(b) >= 2 {
		kn := int(binary.BigEndian.Uint16(b))
		b = b[2:]
		if kn > len(b) {
			return nil
		}
		k := b[:kn]
		b = b[kn:]
		if len(b) < 4 {
			return nil
		}
		vn := int64(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if vn < 0 || vn > int64(len(b)) {
			return nil
		}
		if string(k) == name {
			return b[:vn:vn]
		}
		b = b[vn:]
	}
	return nil
}

// jsonField finds a string value in a JSON object (extFields). A value
// without escapes aliases b; an escaped one is unescaped into new bytes. A
// malformed object ends the search; a value that is not a string is
// skipped.
func jsonField(b []byte, name string) []byte {
	s := scanner{b: b}
	if !s.consume('{') || s.consume('}') {
		return nil
	}
	for {
		k, ok := s.str()
		if !ok || !s.consume(':') {
			return nil
		}
		s.ws()
		if s.i < len(s.b) && s.b[s.i] == '"' {
			v, ok := s.str()
			if !ok {
				return nil
			}
			if string(unquote(k)) == name {
				return unquote(v)
			}
		} else if !s.skip(0) {
			return nil
		}
		if !s.consume(',') {
			return nil
		}
	}
}

// unquote turns a JSON string token (quotes included) into its value.
func unquote(tok []byte) []byte {
	inner := tok[1 : len(tok)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	var s string
	if json.Unmarshal(tok, &s) != nil {
		return inner
	}
	return []byte(s)
}
