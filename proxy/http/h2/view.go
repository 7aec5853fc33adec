package h2

import (
	"net/http"
	"strings"
	"unsafe"
)

// requestView shows route matching a request the HTTP/2 server parsed.
// Its slices alias the request's strings: matching only reads them and
// keeps none (route.RequestView's contract), so no copy is made.
type requestView struct {
	r           *http.Request
	path, query string // :path split at the first '?', as the client sent it
}

func (v *requestView) Method() []byte { return bytesOf(v.r.Method) }
func (v *requestView) Host() []byte   { return bytesOf(v.r.Host) }
func (v *requestView) Path() []byte   { return bytesOf(v.path) }
func (v *requestView) Query() []byte  { return bytesOf(v.query) }

// Header finds the field by a case-insensitive scan: canonicalising the
// lower-case name would allocate, and a request has few fields.
func (v *requestView) Header(lowerName string) ([]byte, bool) {
	for k, vv := range v.r.Header {
		if len(k) == len(lowerName) && len(vv) > 0 && strings.EqualFold(k, lowerName) {
			return bytesOf(vv[0]), true
		}
	}
	return nil, false
}

// bytesOf aliases s; the bytes must not be written.
func bytesOf(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }
