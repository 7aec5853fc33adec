package sniff

// Verdict is a matcher's answer about the bytes a client has sent so far.
type Verdict uint8

// Verdicts. The zero value is NoMatch, so a matcher that forgets to answer
// gives way to the next one instead of stalling detection.
const (
	// NoMatch: these bytes cannot start this protocol, whatever follows.
	NoMatch Verdict = iota
	// NeedMore: consistent with this protocol so far, but not yet conclusive.
	NeedMore
	// Match: conclusively this protocol; more bytes would not change that.
	Match
)

// String names the verdict for test failures.
func (v Verdict) String() string {
	switch v {
	case NoMatch:
		return "NoMatch"
	case NeedMore:
		return "NeedMore"
	case Match:
		return "Match"
	}
	return "invalid"
}

// A matcher looks at everything the client has sent so far (b, never
// empty) and decides. It must be monotone: once it says Match or NoMatch,
// longer inputs with the same prefix get the same answer. It fills r only
// when it returns Match, must not keep b, and must not panic on any input.
// It uses every magic byte it can and says NoMatch as early as possible, so
// an opaque binary protocol is declared Unknown after its first bytes
// rather than at the deadline.
type matcher func(b []byte, r *Result) Verdict

// matchers is the detection order. Each entry is tried only after every
// entry before it said NoMatch; the first Match wins, and an entry that
// says NeedMore makes Detect read more before any later entry is asked.
// Matchers should be disjoint (their first bytes differ); the order settles
// what overlap there is. Adding a protocol: a Protocol constant and its name
// in protocol.go, one file with its matcher, and one line here.
var matchers = [...]struct {
	proto Protocol
	match matcher
}{
	{TLS, matchTLS},     // 0x16 0x03: a handshake record
	{HTTP2, matchHTTP2}, // "PRI * HTTP/2.0…": shaped like a request line, so before HTTP1
	{HTTP1, matchHTTP1}, // token SP target SP "HTTP/1.x" CRLF
}

// decide runs the matchers in order over b. It returns the protocol and
// true once one is settled (Unknown when every matcher said NoMatch), or
// false while the first matcher not to say NoMatch still needs more bytes.
func decide(b []byte, r *Result) (Protocol, bool) {
	for _, m := range matchers {
		switch m.match(b, r) {
		case Match:
			return m.proto, true
		case NeedMore:
			return Unknown, false
		}
	}
	return Unknown, true
}
