package agent

import (
	"encoding/binary"
	"strings"
	"testing"
)

func frame(body string) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body))), body...)
}

// Frames decode to what their type needs, and anything else is refused
// with a reason, never misread.
func TestDecodeFrame(t *testing.T) {
	good := map[string]string{
		`{"type":"hello","version":"1","release":"r1","pid":7}`:                                                                      "hello",
		`{"type":"conn","namespace":"demo","name":"c","direction":"outbound","dst":"10.0.0.1:80","endpoint":"10.0.0.2:8080","up":3}`: "conn",
		`{"type":"conn","namespace":"demo","name":"c","direction":"outbound","dst":"10.96.0.1:80","proto":"http1"}`:                  "conn",
		`{"type":"ack","ok":true}`: "ack",
		`{"type":"done"}`:          "done",
	}
	for body, typ := range good {
		m, err := decodeFrame(frame(body))
		if err != nil || m.Type != typ {
			t.Errorf("%s: %+v %v", body, m, err)
		}
	}
	bad := map[string][]byte{
		"short prefix":     {0, 0},
		"length mismatch":  append(binary.BigEndian.AppendUint32(nil, 10), `{}`...),
		"over the limit":   binary.BigEndian.AppendUint32(nil, maxFrame+1),
		"not json":         frame(`hello`),
		"unknown type":     frame(`{"type":"teleport"}`),
		"hello no version": frame(`{"type":"hello"}`),
		"conn bad dst":     frame(`{"type":"conn","name":"c","direction":"outbound","dst":"nowhere"}`),
		"conn bad dir":     frame(`{"type":"conn","name":"c","direction":"sideways","dst":"10.0.0.1:80"}`),
		"conn bad ep":      frame(`{"type":"conn","name":"c","direction":"inbound","dst":"10.0.0.1:80","endpoint":"x"}`),
		"conn bad proto":   frame(`{"type":"conn","name":"c","direction":"outbound","dst":"10.0.0.1:80","proto":"gopher"}`),
	}
	for name, b := range bad {
		if _, err := decodeFrame(b); err == nil || !strings.Contains(err.Error(), "hand-over") {
			t.Errorf("%s: err %v, want a hand-over refusal", name, err)
		}
	}
}

func FuzzDecodeFrame(f *testing.F) {
	f.Add(frame(`{"type":"hello","version":"1"}`))
	f.Add(frame(`{"type":"conn","namespace":"demo","name":"c","direction":"inbound","dst":"[fd00::1]:80","started":"2026-01-01T00:00:00Z"}`))
	f.Add(frame(`{"type":"conn","namespace":"demo","name":"c","direction":"outbound","dst":"10.96.0.1:80","proto":"http1"}`))
	f.Add([]byte{0, 0, 0, 1, '{'})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeFrame(b)
		if err == nil && m.Type == "" {
			t.Fatalf("accepted a frame without a type: %q", b)
		}
	})
}
