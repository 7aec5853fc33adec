package sniff

// maxMethodLen bounds the method token. RFC 9110 sets no limit, but every
// registered method is under 20 bytes; the bound lets a stream of token
// bytes with no space (base64, hex, text protocols) fail fast.
const maxMethodLen = 32

// httpVersion is the shape of the request line's tail; the digit at
// httpMinorAt may be 0 or 1.
const (
	httpVersion = "HTTP/1.1\r\n"
	httpMinorAt = len("HTTP/1.")
)

// matchHTTP1 recognises an HTTP/1.0 or HTTP/1.1 request line (RFC 9112 §3):
//
//	method SP request-target SP HTTP-version CRLF
//
// It is strict where servers disagree, because a line that is not clearly
// HTTP is better relayed as opaque bytes for the server to judge than
// parsed by a proxy that might read it differently (request smuggling):
// exactly one SP between fields, CRLF and never a bare LF, no leading empty
// lines, no control bytes or whitespace in the target. It decides at the
// CRLF, before any header arrives.
func matchHTTP1(b []byte) (verdict, Result) {
	// method = token (RFC 9110 §9.1)
	i := 0
	for i < len(b) && i <= maxMethodLen && isTchar[b[i]] {
		i++
	}
	switch {
	case i > maxMethodLen:
		return noMatch, Result{}
	case i == len(b):
		return needMore, Result{}
	case i == 0 || b[i] != ' ':
		return noMatch, Result{}
	}
	method := b[:i]
	i++

	// request-target: origin-form "/…", absolute-form "scheme:…",
	// authority-form "host:port" or "[v6]:port", or asterisk-form "*".
	if i == len(b) {
		return needMore, Result{}
	}
	switch c := b[i]; {
	case c == '*':
		i++ // asterisk-form is the lone "*"
	case c == '/' || c == '[' || isAlnum(c):
		for i < len(b) && isTargetByte(b[i]) {
			i++
		}
	default:
		return noMatch, Result{}
	}
	switch {
	case i == len(b):
		return needMore, Result{}
	case b[i] != ' ':
		return noMatch, Result{}
	}
	i++

	// HTTP-version CRLF
	rest := b[i:]
	for j := 0; j < len(rest) && j < len(httpVersion); j++ {
		c := rest[j]
		if j == httpMinorAt {
			if c != '0' && c != '1' {
				return noMatch, Result{}
			}
		} else if c != httpVersion[j] {
			return noMatch, Result{}
		}
	}
	if len(rest) < len(httpVersion) {
		return needMore, Result{}
	}
	return match, Result{Method: methodString(method)}
}

// isTchar reports the token characters of RFC 9110 §5.6.2.
var isTchar = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
		t[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isAlnum(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}

// isTargetByte admits visible ASCII and, as servers do for raw UTF-8 paths,
// bytes from 0x80 up; it refuses controls, SP and DEL.
func isTargetByte(c byte) bool { return c > ' ' && c != 0x7f }

// methodString returns common methods as constants, so the usual request
// costs no allocation.
func methodString(m []byte) string {
	switch string(m) {
	case "GET":
		return "GET"
	case "HEAD":
		return "HEAD"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "DELETE":
		return "DELETE"
	case "CONNECT":
		return "CONNECT"
	case "OPTIONS":
		return "OPTIONS"
	case "TRACE":
		return "TRACE"
	case "PATCH":
		return "PATCH"
	}
	return string(m)
}
