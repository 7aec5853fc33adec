package h1

import (
	"slices"

	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// mirror copies the request to rule a's mirrors (RequestMirror): the head
// as it goes upstream (s.wb) and the body, which must be wholly in the
// read buffer (inline, or already appended to s.wb); a streamed body is
// not copied, the copy is skipped and counted.
func (s *server) mirror(a *route.Action, inline []byte, streamed bool) {
	if streamed {
		s.up.MirrorSkipped(a)
		return
	}
	s.up.Mirror(a, func() l7.MirrorSend {
		raw := append(slices.Clip(slices.Clone(s.wb)), inline...)
		return l7.MirrorHTTP1(raw)
	})
}
