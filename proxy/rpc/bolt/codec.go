package bolt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"strconv"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Types, command codes and statuses.
const (
	typeResponse = 0
	typeRequest  = 1
	typeOneway   = 2

	cmdHeartbeat = 0
	cmdRequest   = 1
	cmdResponse  = 2

	// StatusSuccess and the statuses the agent answers with.
	StatusSuccess         = 0
	StatusServerException = 2
	// StatusThreadPoolBusy is SERVER_THREADPOOL_BUSY: the server refused
	// the call without running it (Busy).
	StatusThreadPoolBusy = 4
	StatusTimeout        = 7
)

// layout is where the fields of one header shape are.
type layout struct {
	size                      int // header length
	typ, cmd, id, codec, lens int // offsets; lens: classLen, headerLen, contentLen
	status                    int // responses only, else -1
	swtch                     int // v2 only, else -1
}

var (
	v1Request  = layout{size: 22, typ: 1, cmd: 2, id: 5, codec: 9, lens: 14, status: -1, swtch: -1}
	v1Response = layout{size: 20, typ: 1, cmd: 2, id: 5, codec: 9, lens: 12, status: 10, swtch: -1}
	v2Request  = layout{size: 24, typ: 2, cmd: 3, id: 6, codec: 10, lens: 16, status: -1, swtch: 11}
	v2Response = layout{size: 22, typ: 2, cmd: 3, id: 6, codec: 10, lens: 14, status: 12, swtch: 11}
)

// ErrNotBolt is returned for bytes that are not a Bolt v1 or v2 frame.
var ErrNotBolt = errors.New("bolt: not a bolt v1/v2 frame")

// Codec is the SOFABolt codec. Its zero value is ready.
type Codec struct{}

// Compile-time checks: the capabilities the framework finds.
var (
	_ rpc.Codec       = Codec{}
	_ rpc.Heartbeater = Codec{}
	_ rpc.Hijacker    = Codec{}
	_ rpc.Statuser    = Codec{}
	_ rpc.Frame       = (*Frame)(nil)
)

// Protocol is the registered Bolt codec, for rpc.NewPool.
var Protocol = rpc.Register(Codec{}, 0)

// Name is "bolt".
func (Codec) Name() string { return "bolt" }

// IDWidth is 4: Bolt ids are 32-bit.
func (Codec) IDWidth() int { return 4 }

// Decode frames one command from its header; nothing past the header is
// read.
func (Codec) Decode(b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	if len(b) == 0 {
		return nil, 1, rpc.ErrNeedMore
	}
	var l *layout
	switch b[0] {
	case 1, 2:
		// The type byte says request or response.
		t := 1
		if b[0] == 2 {
			t = 2
		}
		if len(b) <= t {
			return nil, t + 1, rpc.ErrNeedMore
		}
		switch {
		case b[0] == 1 && b[t] == typeResponse:
			l = &v1Response
		case b[0] == 1 && (b[t] == typeRequest || b[t] == typeOneway):
			l = &v1Request
		case b[t] == typeResponse:
			l = &v2Response
		case b[t] == typeRequest || b[t] == typeOneway:
			l = &v2Request
		default:
			return nil, 0, fmt.Errorf("bolt: command type %d: %w", b[t], ErrNotBolt)
		}
	default:
		return nil, 0, fmt.Errorf("bolt: protocol code %d: %w", b[0], ErrNotBolt)
	}
	if len(b) < l.size {
		return nil, l.size, rpc.ErrNeedMore
	}
	classLen := int(binary.BigEndian.Uint16(b[l.lens:]))
	headerLen := int(binary.BigEndian.Uint16(b[l.lens+2:]))
	contentLen := int64(int32(binary.BigEndian.Uint32(b[l.lens+4:])))
	if contentLen < 0 {
		return nil, 0, fmt.Errorf("bolt: content length %d: %w", contentLen, ErrNotBolt)
	}
	crc := l.swtch >= 0 && b[1] >= 2 && b[l.swtch]&1 != 0
	total := int64(l.size+classLen+headerLen) + contentLen
	if crc {
		total += 4
	}
	if total > int64(max) {
		return nil, 0, fmt.Errorf("bolt: frame of %d bytes: %w", total, rpc.ErrFrameTooLarge)
	}
	n := int(total)
	if len(b) < n {
		return nil, n, rpc.ErrNeedMore
	}
	cmd := binary.BigEndian.Uint16(b[l.cmd:])
	f := &Frame{raw: b[:n:n], l: l, crc: crc, classLen: classLen, headerLen: headerLen}
	switch typ := b[l.typ]; {
	case typ == typeResponse:
		f.kind = rpc.Response
	case cmd == cmdHeartbeat:
		f.kind = rpc.Heartbeat
	case cmd != cmdRequest:
		return nil, 0, fmt.Errorf("bolt: request with command code %d: %w", cmd, ErrNotBolt)
	case typ == typeOneway:
		f.kind = rpc.Oneway
	default:
		f.kind = rpc.Request
	}
	return f, n, nil
}

// HeartbeatReply is the heartbeat ack: a response with the heartbeat
// command code, the request's id, status success and nothing after the
// header, in the request's protocol version.
func (Codec) HeartbeatReply(req rpc.Frame) []byte {
	return response(req.(*Frame), cmdHeartbeat, StatusSuccess)
}

// ErrorReply is a response with status 7 (timeout) for a response timeout
// and 2 (server exception) otherwise, with no content; clients report a
// server exception. Bytes that are not Bolt (req nil) get nothing: there
// is no id to answer, so the connection closes.
func (Codec) ErrorReply(req rpc.Frame, err error) []byte {
	if req == nil {
		return nil
	}
	status := uint16(StatusServerException)
	if errors.Is(err, rpc.ErrResponseTimeout) {
		status = StatusTimeout
	}
	return response(req.(*Frame), cmdResponse, status)
}

// Busy reports a server's SERVER_THREADPOOL_BUSY: the call did not run,
// so a route may retry it on another server.
func (Codec) Busy(resp rpc.Frame) bool {
	f, ok := resp.(*Frame)
	return ok && f.l.status >= 0 && binary.BigEndian.Uint16(f.raw[f.l.status:]) == StatusThreadPoolBusy
}

// Status is a response's status for metrics: "ok" for success, else its
// number.
func (Codec) Status(resp rpc.Frame) string {
	f, ok := resp.(*Frame)
	if !ok || f.l.status < 0 {
		return "ok"
	}
	s := binary.BigEndian.Uint16(f.raw[f.l.status:])
	if s == StatusSuccess {
		return "ok"
	}
	return strconv.Itoa(int(s))
}

// response builds an empty response to req.
func response(req *Frame, cmd, status uint16) []byte {
	l := &v1Response
	if req.raw[0] == 2 {
		l = &v2Response
	}
	b := make([]byte, l.size)
	b[0] = req.raw[0]
	if l == &v2Response {
		b[1] = req.raw[1]
		b[l.swtch] = 0 // no CRC
	}
	b[l.typ] = typeResponse
	binary.BigEndian.PutUint16(b[l.cmd:], cmd)
	b[l.cmd+2] = req.raw[req.l.cmd+2] // ver2
	copy(b[l.id:l.id+4], req.raw[req.l.id:req.l.id+4])
	b[l.codec] = req.raw[req.l.codec]
	binary.BigEndian.PutUint16(b[l.status:], status)
	return b
}

// checksum is the CRC32 a v2 frame carries, over everything before it.
func checksum(b []byte) uint32 { return crc32.ChecksumIEEE(b) }
