package rpc

import (
	"errors"
	"fmt"
	"sync"
)

// ErrNeedMore is what Codec.Decode returns when the bytes so far are a
// consistent but incomplete frame. With it, Decode's length is a lower
// bound of the whole frame's length, so the framework reads at least that
// much before asking again.
var ErrNeedMore = errors.New("rpc: need more bytes")

// ErrFrameTooLarge is a frame whose header declares more than the maximum
// frame length. Codecs return it from the header, before the body is read.
var ErrFrameTooLarge = errors.New("rpc: frame too large")

// Side says who sent the bytes being decoded.
type Side uint8

// Sides of a proxied connection.
const (
	// Client: the downstream application the agent captured.
	Client Side = iota
	// Server: an upstream endpoint.
	Server
)

// Kind is what a frame is to the framework.
type Kind uint8

// Frame kinds.
const (
	// Request expects one Response with the same id (or, for codecs
	// without ids, the next response on the connection).
	Request Kind = iota
	// Oneway is a request that gets no response.
	Oneway
	// Response answers a Request.
	Response
	// Heartbeat is a liveness probe the framework answers itself when the
	// codec is a Heartbeater (else it is forwarded as a Request).
	Heartbeat
	// GoAway tells the peer to stop sending requests on this connection.
	GoAway
)

// Frame is one decoded message. It holds the bytes it was decoded from:
// the framework never overwrites them while the frame is in use.
type Frame interface {
	Kind() Kind
	// Bytes is the frame as it was read; with SetID, the bytes forwarded.
	Bytes() []byte
	// ID is the request id, 0 for codecs whose IDWidth is 0.
	ID() uint64
	// SetID patches the id in Bytes in place (never called when the
	// codec's IDWidth is 0).
	SetID(id uint64)
	// Attr returns a routing attribute by name (codecs document theirs:
	// "service", "method", "command", "key", …), decoding it on first use;
	// nil when the frame has none. The slice aliases Bytes.
	Attr(name string) []byte
}

// Codec frames one protocol. Implementations are stateless and safe for
// concurrent use.
type Codec interface {
	// Name is the protocol's name in logs and metrics ("redis", "dubbo").
	Name() string
	// IDWidth is the request id's width in bytes (1 to 8), or 0 when the
	// protocol has no ids and answers requests in order (Redis): the
	// framework then pipelines and matches responses first in, first out.
	IDWidth() int
	// Decode reads the frame at the start of b, which side sent. It
	// returns the frame and its length; or ErrNeedMore and a lower bound
	// of the frame's length (more than len(b)); or ErrFrameTooLarge,
	// decided from the header as soon as it declares more than max bytes;
	// or another error for bytes that are not the protocol. It must not
	// panic on any input; the frame may alias b.
	Decode(b []byte, from Side, max int) (Frame, int, error)
}

// Optional capabilities, found by type assertion once, in Register.
type (
	// Heartbeater answers heartbeats locally: HeartbeatReply is the
	// response to req (a Heartbeat frame).
	Heartbeater interface {
		HeartbeatReply(req Frame) []byte
	}
	// Hijacker makes the protocol's own error reply for a request the
	// agent could not forward (no endpoint, upstream broke, draining), so
	// a client sees an error frame, never a silent close.
	Hijacker interface {
		ErrorReply(req Frame, err error) []byte
	}
	// GoAwayer builds the frame that asks the client to move away when
	// the agent drains.
	GoAwayer interface {
		GoAwayFrame() []byte
	}
	// Keyer gives a request's balancing key (for ring_hash and maglev
	// clusters); ok false uses the client's address hash.
	Keyer interface {
		BalanceKey(req Frame) (key uint64, ok bool)
	}
	// Pinner says which requests cannot be balanced on their own
	// (transactions, subscriptions, blocking reads, connection state):
	// from such a request on, the downstream connection is relayed as
	// bytes to one upstream connection of its own.
	Pinner interface {
		Pins(req Frame) bool
	}
	// Statuser names a response's status for metrics ("ok", or the
	// protocol's code); without it every response counts as "ok".
	Statuser interface {
		Status(resp Frame) string
	}
	// ServerRequester is for protocols whose servers send requests to
	// clients on the clients' connections (RocketMQ brokers notify
	// consumers). On a shared upstream connection such a request has no
	// one client to go to: the agent answers it with ServerRequestReply
	// (nil: nothing, for one-way requests) and the connection lives on.
	// Without it, a server's request ends the shared connection.
	ServerRequester interface {
		ServerRequestReply(req Frame) []byte
	}
	// Busier recognises a response saying the server was too busy to run
	// the call (it did not run it), which a route may retry elsewhere
	// (RetryBusy).
	Busier interface {
		Busy(resp Frame) bool
	}
	// Retrier vetoes retries of requests that must reach one endpoint
	// and no other (a RocketMQ request naming its broker). Requests the
	// Keyer gives a key are never retried either: another endpoint would
	// be another shard.
	Retrier interface {
		Retryable(req Frame) bool
	}
	// Recycler takes back a frame the framework is done with, so the
	// codec can reuse it in a later Decode instead of allocating one per
	// message (an allocation per request and per response is most of a
	// proxied call's garbage). The framework hands back only frames no one
	// holds any more: a request once it was answered and released (not
	// one that timed out, which its connection may still match), a
	// response once its bytes went to the answer (not when the route
	// rewrites answers: Upstream.Answer). Each frame at most once.
	Recycler interface {
		Recycle(f Frame)
	}
	// Reuser is a Recycler that decodes into a frame it made before,
	// which the framework hands back (under Recycler's rules) instead of
	// recycling it: a reader then reuses the frames of its own answered
	// messages with no sync.Pool operation per message. DecodeInto is
	// Decode, filling reuse (or another frame when reuse is not one of
	// the codec's); on an error it leaves reuse alone.
	Reuser interface {
		DecodeInto(reuse Frame, b []byte, from Side, max int) (Frame, int, error)
	}
)

// Protocol is a registered codec with its optional capabilities resolved.
type Protocol struct {
	Codec
	heartbeater Heartbeater
	hijacker    Hijacker
	goAwayer    GoAwayer
	keyer       Keyer
	pinner      Pinner
	statuser    Statuser
	serverReqs  ServerRequester
	busier      Busier
	retrier     Retrier
	recycler    Recycler
	reuser      Reuser // nil unless recycler is set too
	maxFrame    int
	// ids: the codec's IDWidth is not 0, asked once rather than through
	// the interface per message
	ids bool
}

// DefaultMaxFrame bounds a frame when Register is given 0.
const DefaultMaxFrame = 64 << 20

var registry sync.Map // name -> *Protocol

// Register resolves c's optional capabilities and records it under
// c.Name(); maxFrame (0: DefaultMaxFrame) bounds every frame either side
// sends. Registering a name twice panics: it is a program error.
func Register(c Codec, maxFrame int) *Protocol {
	if w := c.IDWidth(); w < 0 || w > 8 {
		panic(fmt.Sprintf("rpc: codec %s declares an id width of %d bytes", c.Name(), w))
	}
	if maxFrame <= 0 {
		maxFrame = DefaultMaxFrame
	}
	p := &Protocol{Codec: c, maxFrame: maxFrame, ids: c.IDWidth() > 0}
	p.heartbeater, _ = c.(Heartbeater)
	p.hijacker, _ = c.(Hijacker)
	p.goAwayer, _ = c.(GoAwayer)
	p.keyer, _ = c.(Keyer)
	p.pinner, _ = c.(Pinner)
	p.statuser, _ = c.(Statuser)
	p.serverReqs, _ = c.(ServerRequester)
	p.busier, _ = c.(Busier)
	p.retrier, _ = c.(Retrier)
	p.recycler, _ = c.(Recycler)
	if p.recycler != nil {
		p.reuser, _ = c.(Reuser)
	}
	if _, dup := registry.LoadOrStore(c.Name(), p); dup {
		panic("rpc: protocol " + c.Name() + " registered twice")
	}
	return p
}

// Lookup returns the protocol registered under name, or nil.
func Lookup(name string) *Protocol {
	if v, ok := registry.Load(name); ok {
		return v.(*Protocol)
	}
	return nil
}

// recycle hands f back to the codec, if it takes frames back.
func (p *Protocol) recycle(f Frame) {
	if p.recycler != nil && f != nil {
		p.recycler.Recycle(f)
	}
}

// status names resp's status for metrics.
func (p *Protocol) status(resp Frame) string {
	if p.statuser == nil {
		return "ok"
	}
	return p.statuser.Status(resp)
}

// retryable reports whether req may go to another endpoint than the one
// first picked: not one-way, not keyed to one shard, not pinned to one
// endpoint by the codec.
func (p *Protocol) retryable(req Frame) bool {
	if req.Kind() == Oneway {
		return false
	}
	if p.keyer != nil {
		if _, keyed := p.keyer.BalanceKey(req); keyed {
			return false
		}
	}
	return p.retrier == nil || p.retrier.Retryable(req)
}

// busy reports whether resp says the server was too busy to run the call.
func (p *Protocol) busy(resp Frame) bool {
	return p.busier != nil && p.busier.Busy(resp)
}

// withID returns reply (a frame the codec made) with its id set to id;
// reply as it is if it does not decode.
func (p *Protocol) withID(reply []byte, id uint64) []byte {
	if len(reply) == 0 {
		return reply
	}
	f, n, err := p.Decode(reply, Server, p.maxFrame)
	if err != nil || n != len(reply) {
		return reply
	}
	f.SetID(id)
	return f.Bytes()
}

// MaxFrame is the protocol's frame bound.
func (p *Protocol) MaxFrame() int { return p.maxFrame }

// idMask keeps the low IDWidth bytes of an id.
func (p *Protocol) idMask() uint64 {
	w := p.IDWidth()
	if w >= 8 {
		return ^uint64(0)
	}
	return 1<<(8*w) - 1
}
