package sniff

import "time"

// Protocol is what Detect found. The zero value is Unknown, which callers
// treat as opaque TCP.
type Protocol uint8

// Outcomes of Detect. The first three say why no protocol was recognised;
// the rest name one. Values are not persisted anywhere, so a new protocol is
// appended before numProtocols.
const (
	// Unknown: bytes arrived and every matcher said no, a cap was reached
	// first, or the client closed its side before anyone decided.
	Unknown Protocol = iota
	// Timeout: the client sent nothing, or not enough to decide, before the
	// deadline. Server-first protocols (SMTP, MySQL, …) always end here
	// unless their port is declared and sniffing skipped.
	Timeout
	// Skipped: Options.Timeout was zero, so Detect read nothing. The caller
	// has declared the protocol or wants opaque TCP.
	Skipped
	// TLS: a TLS ClientHello; Result.SNI and Result.ALPN say what it asked for.
	TLS
	// HTTP2: the HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4).
	HTTP2
	// HTTP1: an HTTP/1.0 or HTTP/1.1 request line (RFC 9112 §3);
	// Result.Method is its method.
	HTTP1
	// Redis: a RESP command, "*<count>\r\n$<length>" (inline commands are
	// not recognised).
	Redis
	// Dubbo: a Dubbo 2 request header (magic 0xda 0xbb, request flag).
	Dubbo

	numProtocols
)

// protocolNames are the String values, also used as metric labels; a new
// protocol adds its name here.
var protocolNames = [numProtocols]string{
	Unknown: "unknown",
	Timeout: "timeout",
	Skipped: "skipped",
	TLS:     "tls",
	HTTP2:   "http2",
	HTTP1:   "http1",
	Redis:   "redis",
	Dubbo:   "dubbo",
}

// String is the lower-case name used in logs and as the result label of
// weir_sniff_total.
func (p Protocol) String() string {
	if p < numProtocols {
		return protocolNames[p]
	}
	return "invalid"
}

// Result is what Detect found about one connection.
type Result struct {
	Protocol Protocol
	// SNI is the ClientHello's host_name as sent, in the client's letter
	// case (TLS only; empty if absent or if it is not a plausible DNS
	// name). DNS names are case-insensitive: routing should fold case.
	SNI string
	// ALPN lists the protocols the ClientHello offered, in its order (TLS
	// only; nil if it offered none).
	ALPN []string
	// Method is the request method (HTTP1 only).
	Method string
	// Elapsed is how long detection took, including waiting for the client.
	Elapsed time.Duration
}
