package h2

import (
	"bytes"
	"slices"
	"testing"
	"unsafe"

	"golang.org/x/net/http2/hpack"
)

func TestHPACKNeutral(t *testing.T) {
	str := func(s string) []byte { return append([]byte{byte(len(s))}, s...) }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	for _, c := range []struct {
		name  string
		block []byte
		want  bool
	}{
		{"empty", nil, true},
		{"indexed static :method GET", []byte{0x82}, true},
		{"indexed, multi-byte index", []byte{0xff, 0x80, 0x01}, true},
		{"indexed, integer cut short", []byte{0xff, 0x80}, false},
		{"literal without indexing, indexed name", cat([]byte{0x04}, str("/a")), true},
		{"never indexed, literal name", cat([]byte{0x10}, str("x-key"), str("secret")), true},
		{"literal without indexing, name index past 15", cat([]byte{0x0f, 0x27}, str("nginx")), true},
		{"incremental indexing", cat([]byte{0x41}, str("host-a")), false},
		{"incremental indexing after indexed fields", cat([]byte{0x82, 0x86}, []byte{0x41}, str("h")), false},
		{"table size update", []byte{0x3f, 0xe1, 0x1f, 0x82}, false},
		{"string longer than the block", cat([]byte{0x04, 0x05}, []byte("/a")), false},
		{"literal missing its value", []byte{0x04}, false},
		{"huffman-coded value", cat([]byte{0x04, 0x83}, []byte{0x61, 0x62, 0x63}), true},
	} {
		if got := hpackNeutral(c.block); got != c.want {
			t.Errorf("%s: hpackNeutral(% x) = %v, want %v", c.name, c.block, got, c.want)
		}
	}
}

// TestEncodeMemo writes sequences of header lists the way a wconn does,
// memo included, and decodes every block with a real decoder: each must
// decode to its list whatever the memo did, and repeats must hit it.
func TestEncodeMemo(t *testing.T) {
	hf := func(kv ...string) []hpack.HeaderField {
		var out []hpack.HeaderField
		for i := 0; i < len(kv); i += 2 {
			out = append(out, hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
		}
		return out
	}
	a := hf(":status", "200", "server", "nginx", "content-length", "13")
	b := hf(":status", "200", "server", "nginx", "content-length", "14")
	c := hf(":status", "404", "x-new", "value")
	secret := []hpack.HeaderField{{Name: "authorization", Value: "token", Sensitive: true}}
	notSecret := []hpack.HeaderField{{Name: "authorization", Value: "token"}}
	// A list is memoised the first time it encodes without adding to the
	// table (the second time it is written, when its fields are indexed
	// by then) and served from the memo while it repeats.
	seq := [][]hpack.HeaderField{a, a, a, a, b, b, b, a, a, c, a, a, a,
		secret, secret, secret, notSecret, notSecret, notSecret, a, a, a}
	const resize, wantHits = 13, 8

	var hbuf bytes.Buffer
	enc := hpack.NewEncoder(&hbuf)
	var memo encodeMemo
	var got []hpack.HeaderField
	dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got = append(got, f) })
	hits := 0
	shared := make([]byte, 256)
	for i, fields := range seq {
		if i == resize {
			// The peer lowers the table size: the next block must carry
			// the update, so the memo may not answer it.
			enc.SetMaxDynamicTableSizeLimit(256)
			enc.SetMaxDynamicTableSize(256)
			memo.ok = false
		}
		// The caller's strings may live in memory it reuses, as the
		// HTTP/1 parser's do: every list here is built in the same
		// buffer, so a memo that kept the strings would always match.
		in := make([]hpack.HeaderField, len(fields))
		off := 0
		view := func(v string) string {
			n := copy(shared[off:], v)
			s := unsafe.String(&shared[off], n)
			off += n
			return s
		}
		for j, f := range fields {
			in[j] = hpack.HeaderField{Name: view(f.Name), Value: view(f.Value), Sensitive: f.Sensitive}
		}
		block, ok := memo.lookup(in)
		if ok {
			hits++
		} else {
			hbuf.Reset()
			for _, f := range in {
				enc.WriteField(f)
			}
			block = hbuf.Bytes()
			memo.encoded(in, block)
		}
		got = got[:0]
		if _, err := dec.Write(block); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if err := dec.Close(); err != nil {
			t.Fatalf("block %d: %v", i, err)
		}
		if !slices.Equal(got, fields) {
			t.Fatalf("block %d (memo hit %v) decodes to %v, want %v", i, ok, got, fields)
		}
	}
	if hits < wantHits {
		t.Errorf("%d memo hits over %d blocks with repeats", hits, len(seq))
	}
}

// FuzzHPACKNeutral: a block hpackNeutral calls neutral, decoded after two
// entries were added to the table, leaves them where they were: indexes
// 62 and 63 still decode to them. The memo relies on nothing else.
func FuzzHPACKNeutral(f *testing.F) {
	for _, seed := range [][]byte{
		{0x82}, {0x82, 0x86, 0x84, 0xbe}, {0x04, 0x02, '/', 'a'}, {0x10, 0x01, 'k', 0x01, 'v'},
		{0x41, 0x01, 'h'}, {0x3f, 0xe1, 0x1f}, {0xff, 0x80, 0x01}, {0x0f, 0x27, 0x83, 0x61, 0x62, 0x63},
	} {
		f.Add(seed)
	}
	var prime bytes.Buffer
	enc := hpack.NewEncoder(&prime)
	enc.WriteField(hpack.HeaderField{Name: "x-a", Value: "1"})
	enc.WriteField(hpack.HeaderField{Name: "x-b", Value: "2"})
	f.Fuzz(func(t *testing.T, p []byte) {
		if !hpackNeutral(p) {
			return
		}
		var got []hpack.HeaderField
		dec := hpack.NewDecoder(4096, func(f hpack.HeaderField) { got = append(got, f) })
		if _, err := dec.Write(prime.Bytes()); err != nil {
			t.Fatal(err)
		}
		if _, err := dec.Write(p); err != nil {
			return // a bad block: the connection ends, no memo is kept
		}
		if err := dec.Close(); err != nil {
			return
		}
		got = got[:0]
		if _, err := dec.Write([]byte{0xbe, 0xbf}); err != nil {
			t.Fatalf("after neutral block % x: %v", p, err)
		}
		want := []hpack.HeaderField{{Name: "x-b", Value: "2"}, {Name: "x-a", Value: "1"}}
		if !slices.Equal(got, want) {
			t.Fatalf("neutral block % x changed the table: 62 and 63 are %v", p, got)
		}
	})
}
