package h2

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

// mirrorTransport makes one prior-knowledge h2c client connection per
// copy (RequestMirror); it holds no pool of its own.
var mirrorTransport = &http2.Transport{AllowHTTP: true}

// mirrorWhenWhole copies the request to its rule's mirrors once it is
// whole: at once for a request without a body, else when its body ends.
// A body the stream did not keep whole (past Options.MaxReplayBytes) is
// not copied; the copy is skipped and counted.
func (s *fstream) mirrorWhenWhole() {
	if !s.reqEnded {
		s.mirrorPending = true
		return
	}
	s.mirrorPending = false
	if !s.replayable {
		s.d.up.MirrorSkipped(s.action)
		return
	}
	s.d.up.Mirror(s.action, func() l7.MirrorSend {
		return mirrorH2(slices.Clone(s.outFields), slices.Clone(s.body))
	})
}

// mirrorH2 sends one copy over h2c: the upstream request head (fields,
// pseudo-fields first) and body; request trailers are not copied.
func mirrorH2(fields []hpack.HeaderField, body []byte) l7.MirrorSend {
	return func(c net.Conn) (int, error) {
		req := &http.Request{Header: make(http.Header, len(fields)), Body: http.NoBody, ContentLength: int64(len(body))}
		var path string
		for _, f := range fields {
			switch f.Name {
			case ":method":
				req.Method = f.Value
			case ":authority":
				req.Host = f.Value
			case ":path":
				path = f.Value
			case ":scheme", "content-length":
			default:
				req.Header.Add(f.Name, f.Value)
			}
		}
		u, err := url.ParseRequestURI(path)
		if err != nil {
			return 0, err
		}
		u.Scheme, u.Host = "http", req.Host
		req.URL = u
		if len(body) > 0 {
			req.Body = io.NopCloser(bytes.NewReader(body))
		}
		cc, err := mirrorTransport.NewClientConn(c)
		if err != nil {
			return 0, err
		}
		defer cc.Close()
		res, err := cc.RoundTrip(req)
		if err != nil {
			return 0, err
		}
		res.Body.Close()
		return res.StatusCode, nil
	}
}
