package h1

import (
	"bytes"

	"github.com/weir-mesh/weir/proxy/route"
)

// Request target forms (RFC 9112 §3.2).
const (
	formOrigin    uint8 = iota // /path?query
	formAbsolute               // http://authority/path?query
	formAuthority              // host:port, CONNECT only
	formAsterisk               // *, OPTIONS only
)

// reqHead is a parsed request head: views into raw, which it never writes.
// It is the route.RequestView of the request.
type reqHead struct {
	raw    []byte
	method span
	target span
	path   span // without the query; empty for the authority and asterisk forms
	query  span // without '?'
	auth   span // the target's authority (absolute and authority forms)
	form   uint8
	minor  uint8 // HTTP/1.minor: 0 or 1
	fields

	contentLength int64 // -1: none
	chunked       bool
	isHead        bool
	isConnect     bool
	idempotent    bool
	upgrading     bool // asks to switch protocols (Connection: upgrade and Upgrade)
}

var _ route.RequestView = (*reqHead)(nil)

// Method is the request method, as received.
func (h *reqHead) Method() []byte { return h.method.of(h.raw) }

// Host is the target's authority in the absolute and authority forms
// (RFC 9112 §3.2.2 says it replaces Host), else the Host field.
func (h *reqHead) Host() []byte {
	if h.form == formAbsolute || h.form == formAuthority {
		return h.auth.of(h.raw)
	}
	return h.host.of(h.raw)
}

var slash = []byte("/")

// Path is the target's path without the query; "/" for an absolute form
// without one.
func (h *reqHead) Path() []byte {
	if h.form == formAbsolute && h.path.len() == 0 {
		return slash
	}
	return h.path.of(h.raw)
}

// Query is the raw query, without '?'.
func (h *reqHead) Query() []byte { return h.query.of(h.raw) }

// Header returns the first value of the field named lowerName.
func (h *reqHead) Header(lowerName string) ([]byte, bool) { return h.fields.get(h.raw, lowerName) }

// keepAlive reports whether the client wants the connection kept after
// this exchange (RFC 9112 §9.3).
func (h *reqHead) keepAlive() bool {
	if h.connClose {
		return false
	}
	return h.minor == 1 || h.connKeepAlive
}

// hasBody reports whether a body follows the head.
func (h *reqHead) hasBody() bool { return h.chunked || h.contentLength > 0 }

// parseRequest parses raw, a complete request head ending with its empty
// line, into h. It refuses whatever could make two parsers frame the
// message differently (RFC 9112 §6.3, §11.2): bare LF or CR, obs-fold,
// whitespace before a colon, more than one Host or Content-Length, both
// Content-Length and Transfer-Encoding, a Transfer-Encoding on HTTP/1.0 or
// whose final coding is not chunked.
func (h *reqHead) parse(raw []byte, lim *Limits) error {
	h.fields.reset()
	h.raw = raw
	h.contentLength = -1
	h.chunked, h.isHead, h.isConnect, h.idempotent, h.upgrading = false, false, false, false, false
	h.path, h.query, h.auth = span{}, span{}, span{}

	lf := bytes.IndexByte(raw, '\n')
	if lf < 0 {
		return errTruncated
	}
	if lf == 0 || raw[lf-1] != '\r' {
		if lf > lim.MaxRequestLine {
			return &LimitError{Limit: LimitRequestLine, Max: lim.MaxRequestLine}
		}
		return errBareLF
	}
	line := raw[:lf-1]
	if len(line) > lim.MaxRequestLine {
		return &LimitError{Limit: LimitRequestLine, Max: lim.MaxRequestLine}
	}
	if err := h.parseRequestLine(line); err != nil {
		return err
	}
	if err := h.fields.parse(raw, lf+1, lim); err != nil {
		return err
	}
	return h.checkFraming()
}

func (h *reqHead) parseRequestLine(line []byte) error {
	m := 0
	for m < len(line) && isToken[line[m]] {
		m++
	}
	if m == 0 || m == len(line) || line[m] != ' ' {
		return errMethod
	}
	h.method = span{0, int32(m)}
	t := m + 1
	e := t
	for e < len(line) && line[e] != ' ' {
		if !isTargetByte[line[e]] {
			return errTarget
		}
		e++
	}
	if e == t || e == len(line) {
		return errRequestLine
	}
	h.target = span{int32(t), int32(e)}
	v := line[e+1:]
	if len(v) != 8 || string(v[:5]) != "HTTP/" || v[6] != '.' || !isDigit(v[5]) || !isDigit(v[7]) {
		return errVersion
	}
	if v[5] != '1' {
		return errMajorVersion
	}
	// HTTP/1.x with x > 1 is served as 1.1, the highest minor we speak
	// (RFC 9110 §6.2).
	h.minor = 1
	if v[7] == '0' {
		h.minor = 0
	}
	method := line[:m]
	switch string(method) {
	case "GET", "OPTIONS", "TRACE", "PUT", "DELETE":
		h.idempotent = true
	case "HEAD":
		h.isHead, h.idempotent = true, true
	case "CONNECT":
		h.isConnect = true
	}
	return h.parseTarget(t, e)
}

// parseTarget finds the target's form, path, query and authority.
func (h *reqHead) parseTarget(t, e int) error {
	tg := h.raw[t:e]
	switch {
	case h.isConnect:
		// authority-form: host:port, nothing else.
		if !validHost(tg) || bytes.IndexByte(tg, ':') < 0 {
			return errTarget
		}
		h.form, h.auth = formAuthority, span{int32(t), int32(e)}
		return nil
	case tg[0] == '/':
		h.form = formOrigin
		h.splitPath(t, e)
		return nil
	case len(tg) == 1 && tg[0] == '*':
		if string(h.method.of(h.raw)) != "OPTIONS" {
			return errTarget
		}
		h.form = formAsterisk
		return nil
	}
	// absolute-form: scheme "://" authority [path-abempty] ["?" query].
	i := 0
	for i < len(tg) && (isAlpha(tg[i]) || (i > 0 && (isDigit(tg[i]) || tg[i] == '+' || tg[i] == '-' || tg[i] == '.'))) {
		i++
	}
	if i == 0 || len(tg) < i+3 || string(tg[i:i+3]) != "://" {
		return errTarget
	}
	a := i + 3
	ae := a
	for ae < len(tg) && tg[ae] != '/' && tg[ae] != '?' && tg[ae] != '#' {
		ae++
	}
	auth := tg[a:ae]
	if at := bytes.LastIndexByte(auth, '@'); at >= 0 {
		a += at + 1 // userinfo is not part of the host
		auth = tg[a:ae]
	}
	if len(auth) == 0 || !validHost(auth) {
		return errTarget
	}
	h.form = formAbsolute
	h.auth = span{int32(t + a), int32(t + ae)}
	h.splitPath(t+ae, e)
	return nil
}

func (h *reqHead) splitPath(p, e int) {
	q := p
	for q < e && h.raw[q] != '?' {
		q++
	}
	h.path = span{int32(p), int32(q)}
	if q < e {
		h.query = span{int32(q + 1), int32(e)}
	}
}

// checkFraming decides the body's framing and refuses ambiguous heads.
func (h *reqHead) checkFraming() error {
	f := &h.fields
	switch {
	case f.nHost > 1:
		return errDupHost
	case f.nHost == 0 && h.minor == 1:
		return errNoHost
	case f.nHost == 1 && !validHost(f.host.of(h.raw)):
		return errBadHost
	}
	if f.nTransferEncoding > 0 {
		switch {
		case h.minor == 0:
			return errTEOn10
		case f.nContentLength > 0:
			return errCLAndTE
		case f.nTransferEncoding > 1:
			return errDupTE
		}
		chunkedLast, other, err := parseCodings(f.transferEncoding.of(h.raw))
		switch {
		case err != nil:
			return err
		case !chunkedLast:
			return errTENotChunked
		case other:
			// We relay bodies as received and know no coding but chunked.
			return errTEUnsupported
		}
		h.chunked = true
	}
	if f.nContentLength > 0 {
		if f.nContentLength > 1 {
			return errDupCL
		}
		n, ok := parseContentLength(f.contentLength.of(h.raw))
		if !ok {
			return errBadCL
		}
		h.contentLength = n
	}
	// An upgrade needs HTTP/1.1 and both the option and the field (RFC
	// 9110 §7.8). h2c is not offered upstream: its HTTP2-Settings field is
	// hop-by-hop and would not reach the upstream anyway.
	if h.minor == 1 && f.connUpgrade && f.hasUpgrade && !h.isConnect && !equalFold(f.upgrade.of(h.raw), "h2c") {
		h.upgrading = true
	}
	return nil
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isAlpha(c byte) bool { return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') }
