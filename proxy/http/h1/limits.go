package h1

import (
	"errors"
	"strconv"
	"time"
)

// Limits bound what one peer can make the codec buffer for a message head.
// The zero value of each field takes its default.
type Limits struct {
	// MaxRequestLine bounds the request line (method, target, version);
	// a longer one is answered 414 URI Too Long. Default 8 KiB.
	MaxRequestLine int
	// MaxHeadBytes bounds a whole head (start line and every field line) and
	// a chunked body's trailer section; more is answered 431 Request Header
	// Fields Too Large. Default 64 KiB.
	MaxHeadBytes int
	// MaxFields bounds the field lines of one head or trailer section; more
	// is answered 431. Default 100.
	MaxFields int
}

// Default limits.
const (
	DefaultMaxRequestLine = 8 << 10
	DefaultMaxHeadBytes   = 64 << 10
	DefaultMaxFields      = 100
)

func (l Limits) withDefaults() Limits {
	if l.MaxRequestLine <= 0 {
		l.MaxRequestLine = DefaultMaxRequestLine
	}
	if l.MaxHeadBytes <= 0 {
		l.MaxHeadBytes = DefaultMaxHeadBytes
	}
	if l.MaxFields <= 0 {
		l.MaxFields = DefaultMaxFields
	}
	l.MaxRequestLine = min(l.MaxRequestLine, l.MaxHeadBytes)
	return l
}

// What a LimitError says was exceeded.
const (
	LimitRequestLine = "request line"
	LimitHeadBytes   = "head size"
	LimitFields      = "field count"
)

// LimitError is a head that exceeds one of Limits. It says which limit and
// its value, never the bytes received.
type LimitError struct {
	Limit string // LimitRequestLine, LimitHeadBytes or LimitFields
	Max   int
}

func (e *LimitError) Error() string {
	return "http/1.1 message exceeds the " + e.Limit + " limit of " + strconv.Itoa(e.Max)
}

// Status is the answer to a request that exceeds the limit: 414 for the
// request line, 431 for the head size and field count.
func (e *LimitError) Status() int {
	if e.Limit == LimitRequestLine {
		return 414
	}
	return 431
}

// protoError is a message that breaks HTTP/1.1 syntax or framing. It
// carries the status a request breaking it is answered with and a fixed
// text: never bytes of the message. The values are package variables, so
// refusing a message allocates nothing.
type protoError struct {
	status int
	msg    string
}

func (e *protoError) Error() string { return "http/1.1: " + e.msg }

// statusOf maps a request parse error to its answer, in one place: the
// limit's status for a LimitError, the error's own for a protocol error,
// 400 otherwise.
func statusOf(err error) int {
	if le, ok := errors.AsType[*LimitError](err); ok {
		return le.Status()
	}
	if pe, ok := errors.AsType[*protoError](err); ok {
		return pe.status
	}
	return 400
}

// Options tune a Pool and every connection served with it. The zero value
// of each field takes its default.
type Options struct {
	// Limits bound message heads, both directions.
	Limits Limits
	// MaxIdlePerEndpoint bounds the idle upstream connections kept per
	// endpoint address; default 64.
	MaxIdlePerEndpoint int
	// IdleTimeout closes an upstream connection idle in the pool this long;
	// default 30s (below the 60s and more most servers keep idle
	// connections, so the pool usually closes first).
	IdleTimeout time.Duration
	// ClientIdleTimeout closes a downstream connection whose next request
	// head has not arrived this long after the previous response (up to
	// an eighth longer: the deadline is coarse); default 60s.
	ClientIdleTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for a response head after the
	// request (with its body) was sent; the request is then answered 504
	// (up to an eighth later: the deadline is coarse, unlike a route's
	// timeouts). Default 15s. A per-route timeout will come with the route model.
	ResponseHeaderTimeout time.Duration
	// ConnectTimeout bounds connects to a passthrough destination (cluster
	// endpoints use their cluster's connect timeout); default 5s.
	ConnectTimeout time.Duration
}

// Defaults of Options.
const (
	DefaultMaxIdlePerEndpoint    = 64
	DefaultIdleTimeout           = 30 * time.Second
	DefaultClientIdleTimeout     = 60 * time.Second
	DefaultResponseHeaderTimeout = 15 * time.Second
	DefaultConnectTimeout        = 5 * time.Second
)

func (o Options) withDefaults() Options {
	o.Limits = o.Limits.withDefaults()
	if o.MaxIdlePerEndpoint <= 0 {
		o.MaxIdlePerEndpoint = DefaultMaxIdlePerEndpoint
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultIdleTimeout
	}
	if o.ClientIdleTimeout <= 0 {
		o.ClientIdleTimeout = DefaultClientIdleTimeout
	}
	if o.ResponseHeaderTimeout <= 0 {
		o.ResponseHeaderTimeout = DefaultResponseHeaderTimeout
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	return o
}
