package h1

import (
	"bytes"
)

// A head is parsed in place: every field of reqHead and respHead is a span
// of offsets into raw, the head's bytes in the connection's read buffer,
// which the parser never writes. Spans (not slices) keep the structs free
// of pointers into the buffer and make it plain that they mean nothing once
// the buffer moves on.

// span is raw[off:end].
type span struct{ off, end int32 }

func (s span) of(raw []byte) []byte { return raw[s.off:s.end] }
func (s span) len() int             { return int(s.end - s.off) }

// Field kinds the codec acts on; every other field is fieldOther.
const (
	fieldOther uint8 = iota
	fieldHost
	fieldContentLength
	fieldTransferEncoding
	fieldConnection
	fieldKeepAlive
	fieldProxyConnection
	fieldTE
	fieldUpgrade
	fieldExpect
	fieldTrailer
)

// fieldLine is one header field line.
type fieldLine struct {
	line  span // from the name to the end of the line's CRLF, as received
	name  span
	value span // without leading and trailing whitespace
	kind  uint8
	hop   bool // hop-by-hop: not forwarded as received
}

// fields is the parsed field section of a head, with what the codec needs
// to know of framing and connection management gathered on the way.
type fields struct {
	list []fieldLine

	nContentLength, nTransferEncoding, nHost int
	contentLength                            span // the last one
	transferEncoding                         span
	host                                     span
	upgrade                                  span
	hasUpgrade                               bool
	// Connection options.
	connClose, connKeepAlive, connUpgrade, connTE bool
	teTrailers                                    bool // TE lists "trailers"
	expectContinue                                bool
}

func (f *fields) reset() {
	list := f.list[:0]
	*f = fields{list: list}
}

// get returns the value of the first field named lowerName.
func (f *fields) get(raw []byte, lowerName string) ([]byte, bool) {
	for i := range f.list {
		fl := &f.list[i]
		if fl.name.len() == len(lowerName) && equalFold(fl.name.of(raw), lowerName) {
			return fl.value.of(raw), true
		}
	}
	return nil, false
}

// Errors of head syntax and framing. The request status is what a client
// sending it is answered; an upstream sending it is answered 502.
var (
	errBareLF        = &protoError{400, "line ends in a bare LF"}
	errBareCR        = &protoError{400, "bare CR in a line"}
	errObsFold       = &protoError{400, "obsolete line folding"}
	errFieldName     = &protoError{400, "invalid field name"}
	errFieldValue    = &protoError{400, "invalid character in a field value"}
	errRequestLine   = &protoError{400, "malformed request line"}
	errMethod        = &protoError{400, "invalid method"}
	errTarget        = &protoError{400, "invalid request target"}
	errVersion       = &protoError{400, "malformed HTTP version"}
	errMajorVersion  = &protoError{505, "HTTP major version is not 1"}
	errStatusLine    = &protoError{400, "malformed status line"}
	errNoHost        = &protoError{400, "HTTP/1.1 request without Host"}
	errDupHost       = &protoError{400, "more than one Host"}
	errBadHost       = &protoError{400, "invalid Host"}
	errDupCL         = &protoError{400, "more than one Content-Length"}
	errBadCL         = &protoError{400, "invalid Content-Length"}
	errCLAndTE       = &protoError{400, "both Content-Length and Transfer-Encoding"}
	errDupTE         = &protoError{400, "more than one Transfer-Encoding"}
	errTEOn10        = &protoError{400, "Transfer-Encoding in an HTTP/1.0 message"}
	errTENotChunked  = &protoError{400, "Transfer-Encoding whose final coding is not chunked"}
	errTEUnsupported = &protoError{501, "unsupported transfer coding"}
	errTEList        = &protoError{400, "malformed Transfer-Encoding"}
	errTruncated     = &protoError{400, "head does not end with an empty line"}
)

// parseFields parses the field lines of raw from pos; raw must end with
// the empty line that ends the head. lim bounds the count (the size was
// bounded by the caller).
func (f *fields) parse(raw []byte, pos int, lim *Limits) error {
	for {
		i := bytes.IndexByte(raw[pos:], '\n')
		if i < 0 {
			return errTruncated
		}
		lf := pos + i
		if i == 0 || raw[lf-1] != '\r' {
			return errBareLF
		}
		line := raw[pos : lf-1]
		if len(line) == 0 {
			if lf+1 != len(raw) {
				return errTruncated
			}
			break
		}
		if line[0] == ' ' || line[0] == '\t' {
			return errObsFold
		}
		if len(f.list) >= lim.MaxFields {
			return &LimitError{Limit: LimitFields, Max: lim.MaxFields}
		}
		fl, err := parseFieldLine(raw, pos, lf-1)
		if err != nil {
			return err
		}
		f.list = append(f.list, fl)
		f.note(raw, len(f.list)-1)
		pos = lf + 1
	}
	f.applyConnection(raw)
	return nil
}

// parseFieldLine parses raw[start:end] (end at the CR) as one field line:
// token ":" OWS value OWS. Whitespace before the colon is refused (RFC 9112
// §5.1), and so is any control character but HTAB in the value, which
// includes a bare CR.
func parseFieldLine(raw []byte, start, end int) (fieldLine, error) {
	i := start
	for i < end && isToken[raw[i]] {
		i++
	}
	if i == start || i == end || raw[i] != ':' {
		return fieldLine{}, errFieldName
	}
	fl := fieldLine{line: span{int32(start), int32(end + 2)}, name: span{int32(start), int32(i)}}
	v := i + 1
	for v < end && (raw[v] == ' ' || raw[v] == '\t') {
		v++
	}
	e := end
	for e > v && (raw[e-1] == ' ' || raw[e-1] == '\t') {
		e--
	}
	for j := v; j < e; j++ {
		if !isFieldByte[raw[j]] {
			if raw[j] == '\r' {
				return fieldLine{}, errBareCR
			}
			return fieldLine{}, errFieldValue
		}
	}
	fl.value = span{int32(v), int32(e)}
	fl.kind = kindOf(fl.name.of(raw))
	fl.hop = hopByHop(fl.kind)
	return fl, nil
}

// note gathers what field i says about framing and the connection.
func (f *fields) note(raw []byte, i int) {
	fl := &f.list[i]
	switch fl.kind {
	case fieldHost:
		f.nHost++
		f.host = fl.value
	case fieldContentLength:
		f.nContentLength++
		f.contentLength = fl.value
	case fieldTransferEncoding:
		f.nTransferEncoding++
		f.transferEncoding = fl.value
	case fieldUpgrade:
		f.hasUpgrade = true
		f.upgrade = fl.value
	case fieldExpect:
		if equalFold(fl.value.of(raw), "100-continue") {
			f.expectContinue = true
		}
	case fieldTE:
		forEachToken(fl.value.of(raw), func(t []byte) {
			// "trailers" may carry a weight in theory; it never does.
			if equalFold(t, "trailers") {
				f.teTrailers = true
			}
		})
	}
}

// applyConnection reads the Connection options and marks the fields they
// name as hop-by-hop (RFC 9110 §7.6.1). Options naming framing fields
// (Content-Length, Transfer-Encoding) or Host are ignored: dropping those
// on a peer's say-so would change how the next hop frames the message,
// which is how "hop-by-hop abuse" smuggles requests.
func (f *fields) applyConnection(raw []byte) {
	for i := range f.list {
		if f.list[i].kind != fieldConnection {
			continue
		}
		forEachToken(f.list[i].value.of(raw), func(t []byte) {
			switch {
			case equalFold(t, "close"):
				f.connClose = true
			case equalFold(t, "keep-alive"):
				f.connKeepAlive = true
			case equalFold(t, "upgrade"):
				f.connUpgrade = true
			case equalFold(t, "te"):
				f.connTE = true
			}
			switch kindOf(t) {
			case fieldContentLength, fieldTransferEncoding, fieldHost:
				return
			}
			for j := range f.list {
				fl := &f.list[j]
				if fl.name.len() == len(t) && equalFoldBytes(fl.name.of(raw), t) {
					fl.hop = true
				}
			}
		})
	}
}

// forEachToken calls fn for each element of a comma-separated list,
// trimmed of whitespace; empty elements are skipped.
func forEachToken(v []byte, fn func([]byte)) {
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
		} else {
			t, v = v, nil
		}
		t = trimOWS(t)
		if len(t) > 0 {
			fn(t)
		}
	}
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// kindOf classifies a field name, case-insensitively.
func kindOf[T string | []byte](n T) uint8 {
	switch len(n) {
	case 2:
		if equalFold(n, "te") {
			return fieldTE
		}
	case 4:
		if equalFold(n, "host") {
			return fieldHost
		}
	case 6:
		if equalFold(n, "expect") {
			return fieldExpect
		}
	case 7:
		switch {
		case equalFold(n, "upgrade"):
			return fieldUpgrade
		case equalFold(n, "trailer"):
			return fieldTrailer
		}
	case 10:
		switch {
		case equalFold(n, "connection"):
			return fieldConnection
		case equalFold(n, "keep-alive"):
			return fieldKeepAlive
		}
	case 14:
		if equalFold(n, "content-length") {
			return fieldContentLength
		}
	case 16:
		if equalFold(n, "proxy-connection") {
			return fieldProxyConnection
		}
	case 17:
		if equalFold(n, "transfer-encoding") {
			return fieldTransferEncoding
		}
	}
	return fieldOther
}

// hopByHop reports whether a field of this kind belongs to one connection
// only and is not forwarded as received (RFC 9110 §7.6.1), in both
// directions; the codec sends its own Connection, TE and Upgrade where they
// apply. Fields named by Connection options are hop-by-hop too (see
// applyConnection). Transfer-Encoding and Content-Length are framing: the
// body passes through as received (validated), so they are forwarded as
// received. Trailer is end-to-end metadata and is kept.
func hopByHop(kind uint8) bool {
	switch kind {
	case fieldConnection, fieldKeepAlive, fieldProxyConnection, fieldTE, fieldUpgrade:
		return true
	}
	return false
}

// equalFold compares b with lower, an ASCII lower-case string.
func equalFold[T string | []byte](b T, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

// equalFoldBytes compares two byte strings, ASCII case-insensitively.
func equalFoldBytes[A, B string | []byte](a A, b B) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range len(a) {
		x, y := a[i], b[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

// Character classes of RFC 9110 §5.6.2 (tchar) and §5.5 (field-vchar,
// SP, HTAB, obs-text), and the bytes a request target or a Host may hold.
var isToken, isFieldByte, isTargetByte, isHostByte = func() (tok, fld, tgt, hst [256]bool) {
	for c := 0; c < 256; c++ {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			tok[c] = true
			hst[c] = true
		case c < 128 && bytes.IndexByte([]byte("!#$%&'*+-.^_`|~"), byte(c)) >= 0:
			tok[c] = true
		}
		fld[c] = c == '\t' || (c >= 0x20 && c != 0x7f)
		// Target: visible ASCII, and obs-text passed through as received;
		// never '#': no request-target form holds a fragment (RFC 9112
		// §3.2), and one after an absolute form's authority would go
		// upstream as a target that is no path (found by FuzzRequestHead).
		tgt[c] = c > 0x20 && c != 0x7f && c != '#'
		// Host: reg-name, IP-literal and port characters (RFC 3986 §3.2.2).
		if c < 128 && bytes.IndexByte([]byte("-._~!$&'()*+,;=:[]%"), byte(c)) >= 0 {
			hst[c] = true
		}
	}
	return
}()

// parseContentLength reads 1*DIGIT; anything else (a sign, a list,
// whitespace inside, more than 18 digits) is invalid.
func parseContentLength(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseCodings reads a Transfer-Encoding list: whether its final coding
// is chunked, and whether it holds a coding other than chunked. chunked
// twice, or not last, and empty elements are errors (RFC 9112 §6.1, §7).
func parseCodings(v []byte) (chunkedLast, other bool, err error) {
	if len(v) == 0 {
		return false, false, errTEList
	}
	for len(v) > 0 {
		var t []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			t, v = v[:i], v[i+1:]
			if len(v) == 0 {
				return false, false, errTEList
			}
		} else {
			t, v = v, nil
		}
		t = trimOWS(t)
		if len(t) == 0 {
			return false, false, errTEList
		}
		if chunkedLast {
			// chunked must be the final coding, applied once.
			return false, false, errTENotChunked
		}
		if equalFold(t, "chunked") {
			chunkedLast = true
			continue
		}
		for _, c := range t {
			// A coding is a token, possibly with parameters.
			if !isToken[c] && c != ';' && c != '=' && c != ' ' && c != '\t' && c != '"' {
				return false, false, errTEList
			}
		}
		other = true
	}
	return chunkedLast, other, nil
}

func validHost[T string | []byte](b T) bool {
	for i := range len(b) {
		if !isHostByte[b[i]] {
			return false
		}
	}
	return true
}
