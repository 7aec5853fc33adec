package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"reflect"
	"strings"
	"testing"
)

var fuzzLimits = Limits{}.withDefaults()

// FuzzRequestHead: the request parser never panics, is deterministic, and
// what it accepts has one framing, which survives being forwarded: the head
// we send upstream parses again with the same framing and carries no
// hop-by-hop field. Where net/http also accepts the head, both agree on
// the framing.
func FuzzRequestHead(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte) {
		end, _, serr := scanHead(data, 0, fuzzLimits.MaxRequestLine, &fuzzLimits)
		var h reqHead
		// The parser must survive any input, complete head or not.
		_ = h.parse(data, &fuzzLimits)
		if serr != nil || end == 0 {
			return
		}
		raw := data[:end]
		err := h.parse(raw, &fuzzLimits)
		var h2 reqHead
		err2 := h2.parse(bytes.Clone(raw), &fuzzLimits)
		if (err == nil) != (err2 == nil) || (err != nil && err.Error() != err2.Error()) {
			t.Fatalf("parse not deterministic: %v vs %v", err, err2)
		}
		if err != nil {
			if s := statusOf(err); s != 400 && s != 414 && s != 431 && s != 501 && s != 505 {
				t.Fatalf("refusal status %d", s)
			}
			return
		}
		h2.raw = h.raw
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("parse not deterministic:\n%+v\n%+v", h, h2)
		}
		checkRequestInvariants(t, &h)

		// What we forward parses again, with the same framing.
		out := appendRequestHead(nil, &h, nil)
		var o reqHead
		if err := o.parse(out, &fuzzLimits); err != nil {
			t.Fatalf("forwarded head does not parse: %v\n%q\nfrom %q", err, out, raw)
		}
		if o.contentLength != h.contentLength || o.chunked != h.chunked || o.minor != h.minor {
			t.Fatalf("forwarded framing changed: cl %d→%d chunked %v→%v\n%q", h.contentLength, o.contentLength, h.chunked, o.chunked, out)
		}
		for i := range o.list {
			if k := o.list[i].kind; k == fieldKeepAlive || k == fieldProxyConnection {
				t.Fatalf("forwarded a hop-by-hop field: %q", out)
			}
		}

		// Differential: where net/http accepts too, framing agrees.
		req, gerr := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if gerr != nil || h.isConnect {
			return
		}
		goChunked := len(req.TransferEncoding) > 0 && req.TransferEncoding[0] == "chunked"
		if goChunked != h.chunked {
			t.Fatalf("chunked: net/http %v, us %v for %q", goChunked, h.chunked, raw)
		}
		if !h.chunked {
			cl := max(h.contentLength, 0)
			if req.ContentLength != cl {
				t.Fatalf("content length: net/http %d, us %d for %q", req.ContentLength, cl, raw)
			}
		}
	})
}

func checkRequestInvariants(t *testing.T, h *reqHead) {
	t.Helper()
	switch {
	case h.chunked && h.contentLength >= 0:
		t.Fatalf("both chunked and Content-Length %d", h.contentLength)
	case h.contentLength < -1:
		t.Fatalf("Content-Length %d", h.contentLength)
	case h.chunked && (h.minor != 1 || h.nTransferEncoding != 1):
		t.Fatalf("chunked with minor %d and %d TE fields", h.minor, h.nTransferEncoding)
	case h.nHost > 1, h.minor == 1 && h.nHost != 1:
		t.Fatalf("%d Host fields", h.nHost)
	case h.nContentLength > 1:
		t.Fatalf("%d Content-Length fields", h.nContentLength)
	case len(h.Method()) == 0:
		t.Fatalf("empty method")
	}
	n := int32(len(h.raw))
	spans := []span{h.method, h.target, h.path, h.query, h.auth}
	for _, fl := range h.list {
		spans = append(spans, fl.line, fl.name, fl.value)
		if fl.name.len() == 0 {
			t.Fatalf("empty field name")
		}
		if bytes.ContainsAny(fl.value.of(h.raw), "\r\n\x00") {
			t.Fatalf("control byte in a value")
		}
	}
	for _, s := range spans {
		if s.off < 0 || s.off > s.end || s.end > n {
			t.Fatalf("span %v out of %d", s, n)
		}
	}
}

// FuzzResponseHead: the response parser never panics, is deterministic,
// decides one framing consistent with its fields, and the head we send the
// client parses again with the same status and framing.
func FuzzResponseHead(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, isHead bool) {
		var h respHead
		_ = h.parse(data, isHead, &fuzzLimits)
		end, _, serr := scanHead(data, 0, fuzzLimits.MaxHeadBytes, &fuzzLimits)
		if serr != nil || end == 0 {
			return
		}
		raw := data[:end]
		err := h.parse(raw, isHead, &fuzzLimits)
		var h2 respHead
		err2 := h2.parse(bytes.Clone(raw), isHead, &fuzzLimits)
		if (err == nil) != (err2 == nil) {
			t.Fatalf("parse not deterministic: %v vs %v", err, err2)
		}
		if err != nil {
			return
		}
		h2.raw = h.raw
		if !reflect.DeepEqual(h, h2) {
			t.Fatalf("parse not deterministic")
		}
		switch {
		case h.status < 100 || h.status > 599:
			t.Fatalf("status %d", h.status)
		case h.nContentLength > 0 && h.nTransferEncoding > 0:
			t.Fatalf("accepted both Content-Length and Transfer-Encoding")
		case isHead && h.framing != bodyNone:
			t.Fatalf("a HEAD response with a body")
		case (h.status < 200 || h.status == 204 || h.status == 304) && h.framing != bodyNone:
			t.Fatalf("status %d with a body", h.status)
		case h.framing == bodyLength && h.contentLength <= 0:
			t.Fatalf("length framing with length %d", h.contentLength)
		case h.framing == bodyChunked && h.nTransferEncoding != 1:
			t.Fatalf("chunked framing without one Transfer-Encoding")
		}
		out := appendResponseHead(nil, &h, nil, connClose, false)
		var o respHead
		if err := o.parse(out, isHead, &fuzzLimits); err != nil {
			t.Fatalf("forwarded head does not parse: %v\n%q", err, out)
		}
		if o.status != h.status || o.framing != h.framing && !(h.framing == bodyClose && o.framing == bodyClose) || o.contentLength != h.contentLength {
			t.Fatalf("forwarded head changed: %d/%d/%d → %d/%d/%d", h.status, h.framing, h.contentLength, o.status, o.framing, o.contentLength)
		}
	})
}

// FuzzChunked: the chunked decoder never panics, never consumes more than
// it is given, gives the same answer whole or fed in two pieces the way a
// reader refills (deterministic and streaming-safe), and what it accepts
// as a complete body net/http's chunked reader reads to the end too.
func FuzzChunked(f *testing.F) {
	f.Fuzz(func(t *testing.T, data []byte, split uint16) {
		var c chunked
		n, done, err := c.consume(data, &fuzzLimits)
		if n < 0 || n > len(data) {
			t.Fatalf("consumed %d of %d", n, len(data))
		}
		if done && err != nil {
			t.Fatalf("done with an error")
		}

		// In two pieces: what is not consumed stays buffered.
		k := int(split) % (len(data) + 1)
		var c2 chunked
		n1, done1, err1 := c2.consume(data[:k], &fuzzLimits)
		total, done2, err2 := n1, done1, err1
		if err1 == nil && !done1 {
			var m int
			m, done2, err2 = c2.consume(data[n1:], &fuzzLimits)
			total += m
		}
		if (err == nil) != (err2 == nil) || (err == nil && (total != n || done != done2)) {
			t.Fatalf("whole: %d %v %v; split at %d: %d %v %v", n, done, err, k, total, done2, err2)
		}
		if !done {
			return
		}
		r := httputil.NewChunkedReader(bytes.NewReader(data[:n]))
		if _, err := io.Copy(io.Discard, r); err != nil && !strings.Contains(err.Error(), "extension") {
			t.Fatalf("net/http's chunked reader refuses what we accepted: %v\n%q", err, data[:n])
		}
	})
}
