package sniff

// verdict is a matcher's answer about the bytes a client has sent so far.
type verdict uint8

// Verdicts. The zero value is noMatch, so a matcher that forgets to answer
// gives way to the next one instead of stalling detection.
const (
	// noMatch: these bytes cannot start this protocol, whatever follows.
	noMatch verdict = iota
	// needMore: consistent with this protocol so far, but not yet conclusive.
	needMore
	// match: conclusively this protocol; more bytes would not change that.
	match
)

// String names the verdict for test failures.
func (v verdict) String() string {
	switch v {
	case noMatch:
		return "NoMatch"
	case needMore:
		return "NeedMore"
	case match:
		return "Match"
	}
	return "invalid"
}

// A matcher looks at everything the client has sent so far (b, never
// empty) and decides. It must be monotone: once it says match or noMatch,
// longer inputs with the same prefix get the same answer. With match it
// returns what it learnt (Detect sets Protocol); otherwise a zero Result.
// It must not keep b and must not panic on any input. It uses every magic
// byte it can and says noMatch as early as possible, so an opaque binary
// protocol is declared Unknown after its first bytes rather than at the
// deadline.
type matcher func(b []byte) (verdict, Result)

// matchers is the detection order. Each entry is tried only after every
// entry before it said noMatch; the first match wins, and an entry that
// says needMore makes Detect read more before any later entry is asked.
// Matchers should be disjoint (their first bytes differ); the order settles
// what overlap there is. Adding a protocol: a Protocol constant and its name
// in protocol.go, one file with its matcher, and one line here.
var matchers = [...]struct {
	proto Protocol
	fn    matcher
}{
	{TLS, matchTLS},     // 0x16 0x03: a handshake record
	{HTTP2, matchHTTP2}, // "PRI * HTTP/2.0…": shaped like a request line, so before HTTP1
	{HTTP1, matchHTTP1}, // token SP target SP "HTTP/1.x" CRLF
	{Redis, matchRedis}, // "*" count CRLF "$" digit: "*" is a token byte, so after HTTP1
	{Dubbo, matchDubbo}, // 0xda 0xbb, a request flag byte
}

// decide runs the matchers in order over b. It returns the result and
// true once one is settled (Unknown when every matcher said noMatch), or
// false while the first matcher not to say noMatch still needs more bytes.
// Matchers return a Result rather than fill one: a pointer handed to a
// function value escapes, and would cost an allocation per Detect.
func decide(b []byte) (Result, bool) {
	for _, m := range matchers {
		switch v, r := m.fn(b); v {
		case match:
			r.Protocol = m.proto
			return r, true
		case needMore:
			return Result{}, false
		}
	}
	return Result{Protocol: Unknown}, true
}
