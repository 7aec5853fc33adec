package dubbo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Header layout and values.
const (
	headerLen = 16
	magicHi   = 0xda
	magicLo   = 0xbb

	flagRequest = 0x80
	flagTwoWay  = 0x40
	flagEvent   = 0x20
	serialMask  = 0x1f

	// Hessian2 is the serialization id of hessian2 bodies.
	Hessian2 = 2

	// Response statuses the agent sends.
	StatusOK            = 20
	StatusServerTimeout = 31
	StatusServerError   = 80
	// StatusThreadPoolExhausted is SERVER_THREADPOOL_EXHAUSTED_ERROR: the
	// provider refused the call without running it (Busy).
	StatusThreadPoolExhausted = 100
)

// ErrNotDubbo is returned for bytes that do not start with Dubbo's magic.
var ErrNotDubbo = errors.New("dubbo: bad magic")

// Codec is the Dubbo 2 codec. Its zero value is ready.
type Codec struct{}

// Compile-time checks: the capabilities the framework finds.
var (
	_ rpc.Codec       = Codec{}
	_ rpc.Heartbeater = Codec{}
	_ rpc.Hijacker    = Codec{}
	_ rpc.GoAwayer    = Codec{}
	_ rpc.Statuser    = Codec{}
	_ rpc.Frame       = (*Frame)(nil)
)

// Protocol is the registered Dubbo codec, for rpc.NewPool.
var Protocol = rpc.Register(Codec{}, 0)

// Name is "dubbo".
func (Codec) Name() string { return "dubbo" }

// IDWidth is 8: Dubbo ids are 64-bit.
func (Codec) IDWidth() int { return 8 }

// Decode frames one message from its header; the body is not read.
func (Codec) Decode(b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	return decodeInto(nil, b, max)
}

// DecodeInto is Decode into reuse, a frame the framework gave back
// (rpc.Reuser): a reader then reuses the frames of its answered calls
// with no sync.Pool operation per message. A reuse that is not a Dubbo
// frame is dropped; on an error reuse is left alone.
func (Codec) DecodeInto(reuse rpc.Frame, b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	dst, _ := reuse.(*Frame)
	return decodeInto(dst, b, max)
}

// decodeInto is Decode into dst, or into a frame from frames when dst is
// nil.
func decodeInto(dst *Frame, b []byte, max int) (rpc.Frame, int, error) {
	if len(b) >= 1 && b[0] != magicHi || len(b) >= 2 && b[1] != magicLo {
		return nil, 0, ErrNotDubbo
	}
	if len(b) < headerLen {
		return nil, headerLen, rpc.ErrNeedMore
	}
	body := binary.BigEndian.Uint32(b[12:16])
	if body > uint32(max) || int(body) > max-headerLen {
		return nil, 0, fmt.Errorf("dubbo: body of %d bytes: %w", body, rpc.ErrFrameTooLarge)
	}
	n := headerLen + int(body)
	if len(b) < n {
		return nil, n, rpc.ErrNeedMore
	}
	f := dst
	if f == nil {
		f = frames.Get().(*Frame)
	} else {
		*f = Frame{}
	}
	f.raw = b[:n:n]
	flags := b[2]
	switch {
	case flags&flagRequest == 0:
		f.kind = rpc.Response
	case flags&flagEvent != 0:
		f.kind = rpc.Heartbeat
		if isReadonly(f.raw[headerLen:]) {
			f.kind = rpc.GoAway
		}
	case flags&flagTwoWay == 0:
		f.kind = rpc.Oneway
	default:
		f.kind = rpc.Request
	}
	return f, n, nil
}

// frames recycles Frames (rpc.Recycler): one per message is a proxied
// call's largest garbage.
var frames = sync.Pool{New: func() any { return new(Frame) }}

// Recycle takes back a frame the framework is done with.
func (Codec) Recycle(f rpc.Frame) {
	if df, ok := f.(*Frame); ok {
		*df = Frame{}
		frames.Put(df)
	}
}

// readonlyBody is the hessian2 string "R": the body of the event a
// provider sends before it shuts down (clients then stop using the
// connection for new requests).
var readonlyBody = []byte{0x01, 'R'}

func isReadonly(body []byte) bool {
	return len(body) == len(readonlyBody) && body[0] == readonlyBody[0] && body[1] == readonlyBody[1]
}

// HeartbeatReply answers a heartbeat: an event response with the same id
// and serialization, status OK, and a null body.
func (Codec) HeartbeatReply(req rpc.Frame) []byte {
	h := req.Bytes()
	return message(h[2]&serialMask|flagEvent, StatusOK, binary.BigEndian.Uint64(h[4:12]), []byte{'N'})
}

// GoAwayFrame is the readonly event: a one-way event request whose body
// is the hessian2 string "R".
func (Codec) GoAwayFrame() []byte {
	return message(flagRequest|flagEvent|Hessian2, 0, 0, readonlyBody)
}

// ErrorReply is a response to req with status 31 for a response timeout
// and 80 otherwise, the reason as a hessian2 string. Bytes that are not
// Dubbo (req nil) get nothing: there is no id to answer, so the
// connection closes.
func (Codec) ErrorReply(req rpc.Frame, err error) []byte {
	if req == nil {
		return nil
	}
	status := byte(StatusServerError)
	if errors.Is(err, rpc.ErrResponseTimeout) {
		status = StatusServerTimeout
	}
	h := req.Bytes()
	serial := h[2] & serialMask
	if serial != Hessian2 {
		// The reason is written in hessian2: say so, or a client would
		// read it with the request's serialization.
		serial = Hessian2
	}
	return message(serial, status, binary.BigEndian.Uint64(h[4:12]), appendString(nil, "weir: "+err.Error()))
}

// message builds one Dubbo message.
func message(flags, status byte, id uint64, body []byte) []byte {
	b := make([]byte, headerLen, headerLen+len(body))
	b[0], b[1], b[2], b[3] = magicHi, magicLo, flags, status
	binary.BigEndian.PutUint64(b[4:12], id)
	binary.BigEndian.PutUint32(b[12:16], uint32(len(body)))
	return append(b, body...)
}

// Busy reports a provider's SERVER_THREADPOOL_EXHAUSTED_ERROR: the call
// did not run, so a route may retry it on another provider.
func (Codec) Busy(resp rpc.Frame) bool {
	f, ok := resp.(*Frame)
	return ok && f.Status() == StatusThreadPoolExhausted
}

// Status is a response's status for metrics: "ok" for 20, else the
// number.
func (Codec) Status(resp rpc.Frame) string {
	f, ok := resp.(*Frame)
	if !ok || f.Status() == StatusOK {
		return "ok"
	}
	return strconv.Itoa(int(f.Status()))
}
