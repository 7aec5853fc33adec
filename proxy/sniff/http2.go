package sniff

// http2Preface is the client connection preface a prior-knowledge HTTP/2
// client sends first (RFC 9113 §3.4); h2 over TLS is found by ALPN instead.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// matchHTTP2 compares every byte of the 24-byte preface as it arrives.
func matchHTTP2(b []byte) (verdict, Result) {
	n := min(len(b), len(http2Preface))
	switch {
	case string(b[:n]) != http2Preface[:n]:
		return noMatch, Result{}
	case n < len(http2Preface):
		return needMore, Result{}
	}
	return match, Result{}
}
