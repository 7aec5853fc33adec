package h1

import (
	"net/http"
	"strconv"

	"github.com/weir-mesh/weir/proxy/route"
)

// appendRequestHead builds the head sent upstream for q in wb: the request
// line (target rewritten by the action, an absolute form turned into the
// origin form), the fields as received byte for byte except hop-by-hop
// ones and those the action's modifier sets or removes, then the
// modifier's fields and the codec's own connection fields. It adds no
// Forwarded or X-Forwarded-*: the mesh is transparent.
func appendRequestHead(wb []byte, q *reqHead, a *route.Action) []byte {
	raw := q.raw
	var mod *route.HeaderModifier
	var rw *route.URLRewrite
	if a != nil {
		mod, rw = a.RequestHeaders, a.Rewrite
	}
	wb = append(wb, q.method.of(raw)...)
	wb = append(wb, ' ')
	switch {
	case rw != nil && rw.Path != nil && (q.form == formOrigin || q.form == formAbsolute):
		wb = append(wb, route.RewritePath(rw.Path, string(q.Path()), a.PrefixMatched)...)
		if q.query.len() > 0 {
			wb = append(wb, '?')
			wb = append(wb, q.query.of(raw)...)
		}
	case q.form == formAbsolute:
		switch {
		case q.path.len() > 0:
			wb = append(wb, q.path.of(raw)...)
		case string(q.method.of(raw)) == "OPTIONS" && q.query.len() == 0:
			wb = append(wb, '*') // RFC 9112 §3.2.4
		default:
			wb = append(wb, '/')
		}
		if q.query.len() > 0 {
			wb = append(wb, '?')
			wb = append(wb, q.query.of(raw)...)
		}
	default:
		wb = append(wb, q.target.of(raw)...)
	}
	if q.minor == 0 {
		wb = append(wb, " HTTP/1.0\r\n"...)
	} else {
		wb = append(wb, " HTTP/1.1\r\n"...)
	}

	// Host: the rewrite's, else the absolute form's authority, else as
	// received.
	newHost := false
	switch {
	case rw != nil && rw.Hostname != "" && validHost(rw.Hostname):
		wb = appendField(wb, "Host", rw.Hostname)
		newHost = true
	case q.form == formAbsolute:
		wb = append(wb, "Host: "...)
		wb = append(wb, q.auth.of(raw)...)
		wb = append(wb, "\r\n"...)
		newHost = true
	}
	wb = appendFields(wb, raw, q.fields.list, mod, newHost, false)
	if mod != nil {
		wb = appendModified(wb, mod)
	}

	// Our own hop: HTTP/1.0 asks for keep-alive explicitly (HTTP/1.1
	// keeps by default); TE: trailers and Upgrade are passed on with the
	// option that makes them legal (RFC 9110 §7.6.1, §10.1.4).
	if q.minor == 0 || q.upgrading || q.teTrailers {
		wb = append(wb, "Connection: "...)
		sep := false
		if q.minor == 0 {
			wb = append(wb, "keep-alive"...)
			sep = true
		}
		if q.teTrailers {
			if sep {
				wb = append(wb, ", "...)
			}
			wb = append(wb, "te"...)
			sep = true
		}
		if q.upgrading {
			if sep {
				wb = append(wb, ", "...)
			}
			wb = append(wb, "upgrade"...)
		}
		wb = append(wb, "\r\n"...)
		if q.teTrailers {
			wb = append(wb, "TE: trailers\r\n"...)
		}
		if q.upgrading {
			wb = append(wb, "Upgrade: "...)
			wb = append(wb, q.upgrade.of(raw)...)
			wb = append(wb, "\r\n"...)
		}
	}
	return append(wb, "\r\n"...)
}

// Connection options of a response head towards the client.
const (
	connNone = iota
	connClose
	connKeepAlive
	connUpgrade
)

// appendResponseHead builds the head sent to the client for h: our status
// line (HTTP/1.1 with the upstream's code and reason), the fields as
// received except hop-by-hop ones and those mod sets or removes, mod's
// fields, and our connection option. noFraming drops Content-Length and
// Transfer-Encoding (a tunnel's head).
func appendResponseHead(wb []byte, h *respHead, mod *route.HeaderModifier, conn int, noFraming bool) []byte {
	raw := h.raw
	wb = append(wb, "HTTP/1.1 "...)
	wb = strconv.AppendInt(wb, int64(h.status), 10)
	wb = append(wb, ' ')
	wb = append(wb, h.reason.of(raw)...)
	wb = append(wb, "\r\n"...)
	wb = appendFields(wb, raw, h.fields.list, mod, false, noFraming)
	if mod != nil {
		wb = appendModified(wb, mod)
	}
	switch conn {
	case connClose:
		wb = append(wb, "Connection: close\r\n"...)
	case connKeepAlive:
		wb = append(wb, "Connection: keep-alive\r\n"...)
	case connUpgrade:
		wb = append(wb, "Connection: upgrade\r\nUpgrade: "...)
		wb = append(wb, h.upgrade.of(raw)...)
		wb = append(wb, "\r\n"...)
	}
	return append(wb, "\r\n"...)
}

// appendFields copies the field lines to forward as received, in runs of
// adjacent lines, so a head nothing changes is copied in one piece.
func appendFields(wb, raw []byte, list []fieldLine, mod *route.HeaderModifier, dropHost, dropFraming bool) []byte {
	run := span{}
	for i := range list {
		fl := &list[i]
		skip := fl.hop
		switch fl.kind {
		case fieldHost:
			skip = skip || dropHost
		case fieldContentLength, fieldTransferEncoding:
			skip = skip || dropFraming
		}
		if !skip && mod != nil && !protected(fl.kind) {
			skip = modifies(mod, fl.name.of(raw))
		}
		switch {
		case skip:
			wb = append(wb, run.of(raw)...)
			run = span{}
		case run.end == fl.line.off && run.end != 0:
			run.end = fl.line.end
		default:
			wb = append(wb, run.of(raw)...)
			run = fl.line
		}
	}
	return append(wb, run.of(raw)...)
}

// modifies reports whether mod sets (with a value it may write) or
// removes the field name: the field as received is then not forwarded.
func modifies(mod *route.HeaderModifier, name []byte) bool {
	for i := range mod.Set {
		if equalFoldBytes(name, mod.Set[i].Name) && modifiable(mod.Set[i].Name, mod.Set[i].Value) {
			return true
		}
	}
	for _, r := range mod.Remove {
		if equalFoldBytes(name, r) {
			return true
		}
	}
	return false
}

// appendModified appends mod's Set then Add fields, leaving out names it
// also removes (removal wins), protected fields, and names or values a
// field cannot hold (CR or LF would inject lines).
func appendModified(wb []byte, mod *route.HeaderModifier) []byte {
	for _, list := range [2][]route.Header{mod.Set, mod.Add} {
		for i := range list {
			h := &list[i]
			if !modifiable(h.Name, h.Value) || removes(mod, h.Name) {
				continue
			}
			wb = appendField(wb, h.Name, h.Value)
		}
	}
	return wb
}

func removes(mod *route.HeaderModifier, name string) bool {
	for _, r := range mod.Remove {
		if len(r) == len(name) && equalFoldBytes(r, name) {
			return true
		}
	}
	return false
}

func modifiable(name, value string) bool {
	if name == "" {
		return false
	}
	for i := range len(name) {
		if !isToken[name[i]] {
			return false
		}
	}
	if protected(kindOf(name)) {
		return false
	}
	for i := range len(value) {
		if !isFieldByte[value[i]] {
			return false
		}
	}
	return true
}

// protected reports whether a route's header modifier must leave fields
// of this kind alone, neither writing nor dropping them: framing
// (Content-Length, Transfer-Encoding), Host (a URLRewrite's job) and
// hop-by-hop fields. Letting a route change them would let it
// desynchronise how the next hop frames the message.
func protected(kind uint8) bool {
	switch kind {
	case fieldHost, fieldContentLength, fieldTransferEncoding:
		return true
	}
	return hopByHop(kind)
}

func appendField(wb []byte, name, value string) []byte {
	wb = append(wb, name...)
	wb = append(wb, ": "...)
	wb = append(wb, value...)
	return append(wb, "\r\n"...)
}

// appendLocalReply builds a reply the agent makes itself: a short text body
// (the reason), or a redirect's Location and no body.
func appendLocalReply(wb []byte, status int, reason, location string, retryAfter int, close bool) []byte {
	wb = append(wb, "HTTP/1.1 "...)
	wb = strconv.AppendInt(wb, int64(status), 10)
	wb = append(wb, ' ')
	wb = append(wb, statusText(status)...)
	wb = append(wb, "\r\n"...)
	body := 0
	if location != "" {
		wb = appendField(wb, "Location", location)
	} else {
		wb = append(wb, "Content-Type: text/plain; charset=utf-8\r\n"...)
		body = len(reason) + 1
	}
	wb = append(wb, "Content-Length: "...)
	wb = strconv.AppendInt(wb, int64(body), 10)
	wb = append(wb, "\r\n"...)
	if retryAfter > 0 {
		wb = append(wb, "Retry-After: "...)
		wb = strconv.AppendInt(wb, int64(retryAfter), 10)
		wb = append(wb, "\r\n"...)
	}
	if close {
		wb = append(wb, "Connection: close\r\n"...)
	}
	wb = append(wb, "\r\n"...)
	if body > 0 {
		wb = append(wb, reason...)
		wb = append(wb, '\n')
	}
	return wb
}

func statusText(code int) string {
	switch code {
	case 301:
		return "Moved Permanently"
	case 302:
		return "Found"
	case 400:
		return "Bad Request"
	case 404:
		return "Not Found"
	case 408:
		return "Request Timeout"
	case 413:
		return "Content Too Large"
	case 414:
		return "URI Too Long"
	case 429:
		return "Too Many Requests"
	case 431:
		return "Request Header Fields Too Large"
	case 500:
		return "Internal Server Error"
	case 501:
		return "Not Implemented"
	case 502:
		return "Bad Gateway"
	case 503:
		return "Service Unavailable"
	case 504:
		return "Gateway Timeout"
	case 505:
		return "HTTP Version Not Supported"
	}
	if t := http.StatusText(code); t != "" {
		return t
	}
	return "Unknown"
}
