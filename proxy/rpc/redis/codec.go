package redis

import (
	"strings"
	"sync"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Codec is the RESP codec. Its zero value is ready.
type Codec struct{}

// Compile-time checks: the capabilities the framework finds.
var (
	_ rpc.Codec    = Codec{}
	_ rpc.Hijacker = Codec{}
	_ rpc.Keyer    = Codec{}
	_ rpc.Pinner   = Codec{}
	_ rpc.Recycler = Codec{}
	_ rpc.Reuser   = Codec{}
	_ rpc.Frame    = (*Frame)(nil)
)

// Protocol is the registered RESP codec, for rpc.NewPool.
var Protocol = rpc.Register(Codec{}, 0)

// Name is "redis".
func (Codec) Name() string { return "redis" }

// IDWidth is 0: replies come in request order.
func (Codec) IDWidth() int { return 0 }

// Decode frames a command (from the client) or a reply (from a server).
func (Codec) Decode(b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	return decodeInto(nil, b, from, max)
}

// DecodeInto is Decode into a frame Decode made before and the framework
// gave back (rpc.Reuser).
func (Codec) DecodeInto(reuse rpc.Frame, b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	dst, _ := reuse.(*Frame)
	return decodeInto(dst, b, from, max)
}

// decodeInto is Decode into dst, or a frame from frames when dst is nil.
func decodeInto(dst *Frame, b []byte, from rpc.Side, max int) (rpc.Frame, int, error) {
	if len(b) == 0 {
		return nil, 1, rpc.ErrNeedMore
	}
	var (
		f   *Frame
		n   int
		err error
	)
	if from == rpc.Client {
		f, n, err = decodeCommand(dst, b, max)
	} else {
		f, n, err = decodeReply(dst, b, max)
	}
	if err != nil {
		return nil, n, err
	}
	return f, n, nil
}

// frames recycles Frames (rpc.Recycler): a frame per command and one per
// reply were most of a pipelined command's garbage.
var frames = sync.Pool{New: func() any { return new(Frame) }}

// newFrame sets dst, or a frame from frames when dst is nil, to raw, kind
// and nargs, every other field zero. Decoding fails only before it is
// called, so a dst the framework handed in stays untouched on an error.
func newFrame(dst *Frame, raw []byte, kind rpc.Kind, nargs int) *Frame {
	if dst == nil {
		dst = frames.Get().(*Frame)
	}
	*dst = Frame{raw: raw, kind: kind, nargs: nargs}
	return dst
}

// Recycle takes back a frame the framework is done with.
func (Codec) Recycle(f rpc.Frame) {
	if rf, ok := f.(*Frame); ok {
		*rf = Frame{}
		frames.Put(rf)
	}
}

// ErrorReply is the error a client gets for a command weir could not
// forward: "-ERR weir: <why>", or, for bytes that were not RESP (req nil),
// "-ERR Protocol error: …" as redis-server sends before closing.
func (Codec) ErrorReply(req rpc.Frame, err error) []byte {
	msg := err.Error()
	if req != nil {
		msg = "weir: " + msg
	}
	msg = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, msg)
	return []byte("-ERR " + msg + "\r\n")
}

// BalanceKey is the hash of the command's first key (its {tag} if it has
// one), so a ring_hash or maglev cluster sends a key to the same server
// every time; keyless commands use the client's address.
func (Codec) BalanceKey(req rpc.Frame) (uint64, bool) {
	k := req.Attr(AttrKey)
	if k == nil {
		return 0, false
	}
	return hashKey(k), true
}

// Pins reports the commands that take the connection out of per-command
// balancing (see the package documentation).
func (Codec) Pins(req rpc.Frame) bool {
	f, ok := req.(*Frame)
	return ok && pins(f)
}
