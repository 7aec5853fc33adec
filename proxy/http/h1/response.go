package h1

import "bytes"

// Body framings.
const (
	bodyNone    uint8 = iota // no body
	bodyLength               // Content-Length bytes
	bodyChunked              // chunked, passed through as received after validation
	bodyClose                // until the connection closes (responses only)
)

// respHead is a parsed response head: views into raw, which it never
// writes.
type respHead struct {
	raw    []byte
	status int
	reason span
	minor  uint8
	fields

	framing       uint8
	contentLength int64
}

// Errors of upstream responses; any of them is answered 502.
var (
	errUpstreamCLAndTE = &protoError{502, "response with both Content-Length and Transfer-Encoding"}
	errUpstreamTE10    = &protoError{502, "Transfer-Encoding in an HTTP/1.0 response"}
	errUpstreamDupCL   = &protoError{502, "response with more than one Content-Length"}
	errUpstreamBadCL   = &protoError{502, "response with an invalid Content-Length"}
	errUpstreamDupTE   = &protoError{502, "response with more than one Transfer-Encoding"}
	errUpstreamTE      = &protoError{502, "response with a malformed Transfer-Encoding"}
	errStatus          = &protoError{502, "invalid status code"}
)

// keepAlive reports whether the upstream lets the connection be reused.
func (h *respHead) keepAlive() bool {
	if h.connClose || h.framing == bodyClose {
		return false
	}
	return h.minor == 1 || h.connKeepAlive
}

// parse parses raw, a complete response head ending with its empty line,
// and decides the framing of its body for a request that was a HEAD (or
// not). Framing follows RFC 9112 §6.3; a message that two parsers could
// frame differently (both Content-Length and Transfer-Encoding, several
// or invalid Content-Length) is an error, not a guess.
func (h *respHead) parse(raw []byte, isHead bool, lim *Limits) error {
	h.fields.reset()
	h.raw = raw
	h.status = 0
	h.contentLength = -1
	h.framing = bodyNone

	lf := bytes.IndexByte(raw, '\n')
	if lf < 0 {
		return errTruncated
	}
	if lf == 0 || raw[lf-1] != '\r' {
		return errBareLF
	}
	line := raw[:lf-1]
	// HTTP-version SP 3DIGIT SP [reason]; the second SP is tolerated
	// missing when the reason is empty.
	if len(line) < 12 || string(line[:5]) != "HTTP/" || line[6] != '.' || !isDigit(line[5]) || !isDigit(line[7]) || line[8] != ' ' {
		return errStatusLine
	}
	if line[5] != '1' {
		return errStatusLine
	}
	h.minor = 1
	if line[7] == '0' {
		h.minor = 0
	}
	if !isDigit(line[9]) || !isDigit(line[10]) || !isDigit(line[11]) {
		return errStatusLine
	}
	h.status = int(line[9]-'0')*100 + int(line[10]-'0')*10 + int(line[11]-'0')
	if h.status < 100 || h.status > 599 {
		return errStatus
	}
	switch {
	case len(line) == 12:
		h.reason = span{12, 12}
	case line[12] != ' ':
		return errStatusLine
	default:
		for _, c := range line[13:] {
			if !isFieldByte[c] {
				return errStatusLine
			}
		}
		h.reason = span{13, int32(len(line))}
	}
	if err := h.fields.parse(raw, lf+1, lim); err != nil {
		return err
	}
	return h.frame(isHead)
}

func (h *respHead) frame(isHead bool) error {
	f := &h.fields
	if f.nContentLength > 0 {
		if f.nContentLength > 1 {
			return errUpstreamDupCL
		}
		n, ok := parseContentLength(f.contentLength.of(h.raw))
		if !ok {
			return errUpstreamBadCL
		}
		h.contentLength = n
	}
	if f.nTransferEncoding > 0 {
		switch {
		case f.nContentLength > 0:
			return errUpstreamCLAndTE
		case h.minor == 0:
			return errUpstreamTE10
		case f.nTransferEncoding > 1:
			return errUpstreamDupTE
		}
	}
	switch {
	case isHead || h.status < 200 || h.status == 204 || h.status == 304:
		h.framing = bodyNone
	case f.nTransferEncoding > 0:
		chunkedLast, _, err := parseCodings(f.transferEncoding.of(h.raw))
		switch {
		case err != nil:
			return errUpstreamTE
		case chunkedLast:
			h.framing = bodyChunked
		default:
			// A final coding other than chunked: the body ends when the
			// connection does (RFC 9112 §6.3 item 4).
			h.framing = bodyClose
		}
	case h.contentLength >= 0:
		h.framing = bodyLength
		if h.contentLength == 0 {
			h.framing = bodyNone
		}
	default:
		h.framing = bodyClose
	}
	return nil
}
