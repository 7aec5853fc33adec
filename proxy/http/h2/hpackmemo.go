package h2

import (
	"golang.org/x/net/http2/hpack"
)

// A connection's header blocks repeat: a client sends the same request
// headers stream after stream, a server the same response headers. Once
// a block leaves the HPACK dynamic table as it found it (hpackNeutral),
// the same fields encode to the same bytes as long as nothing else went
// through the encoder in between. encodeMemo keeps the last block under
// that condition and skips the encoder when the next list is the same:
// x/net's encoder looks every field up in two maps (by name, and by name
// and value) in the static and the dynamic table, about 4 % of the CPU of
// an h2c request through the proxy, 0.3 % with the memo (perf, weir-bench
// h2-keepalive). The decoder side has no such memo: the peers measured
// (h2load, nginx) send their repeated fields indexed, which decode
// without work, or with incremental indexing, which changes the table
// and must be decoded.

// hpackNeutral reports whether the HPACK block p leaves the dynamic table
// unchanged: only indexed fields (RFC 7541 §6.1) and literals without
// indexing or never indexed (§6.2.2, §6.2.3); no literal with incremental
// indexing (§6.2.1) and no table size update (§6.3). A block it cannot
// parse is not neutral.
func hpackNeutral(p []byte) bool {
	var ok bool
	for len(p) > 0 {
		c := p[0]
		switch {
		case c&0x80 != 0: // indexed
			if _, p, ok = hpackInt(p, 7); !ok {
				return false
			}
		case c&0xc0 == 0x40, c&0xe0 == 0x20: // incremental indexing, size update
			return false
		default: // literal without indexing (0000) or never indexed (0001)
			var idx uint64
			if idx, p, ok = hpackInt(p, 4); !ok {
				return false
			}
			if idx == 0 {
				if p, ok = hpackSkipString(p); !ok {
					return false
				}
			}
			if p, ok = hpackSkipString(p); !ok {
				return false
			}
		}
	}
	return true
}

// hpackInt reads an integer with an n-bit prefix (RFC 7541 §5.1).
func hpackInt(p []byte, n uint) (uint64, []byte, bool) {
	if len(p) == 0 {
		return 0, p, false
	}
	mask := uint64(1)<<n - 1
	v := uint64(p[0]) & mask
	p = p[1:]
	if v < mask {
		return v, p, true
	}
	for shift := uint(0); len(p) > 0 && shift < 63; shift += 7 {
		b := p[0]
		p = p[1:]
		v += uint64(b&0x7f) << shift
		if b&0x80 == 0 {
			return v, p, true
		}
	}
	return 0, p, false
}

// hpackSkipString skips a string literal (RFC 7541 §5.2).
func hpackSkipString(p []byte) ([]byte, bool) {
	n, p, ok := hpackInt(p, 7)
	if !ok || n > uint64(len(p)) {
		return p, false
	}
	return p[n:], true
}

// encodeMemo is a writer's last header block, kept when encoding it left
// the encoder's table unchanged. Its fields are copied into one reused
// buffer: the caller's strings may live in memory it reuses.
type encodeMemo struct {
	ok     bool
	block  []byte
	text   []byte      // every name and value, back to back
	fields []memoField // where each is in text
}

type memoField struct {
	name, value [2]int // offset and end in text
	sensitive   bool
}

// lookup returns the block that encodes fields, if it is the memo's.
func (m *encodeMemo) lookup(fields []hpack.HeaderField) ([]byte, bool) {
	if !m.ok || len(fields) != len(m.fields) {
		return nil, false
	}
	for i, f := range fields {
		mf := m.fields[i]
		if f.Sensitive != mf.sensitive || f.Name != string(m.text[mf.name[0]:mf.name[1]]) ||
			f.Value != string(m.text[mf.value[0]:mf.value[1]]) {
			return nil, false
		}
	}
	return m.block, true
}

// encoded records what the encoder just made of fields.
func (m *encodeMemo) encoded(fields []hpack.HeaderField, block []byte) {
	m.ok = hpackNeutral(block)
	if !m.ok {
		return
	}
	m.block = append(m.block[:0], block...)
	m.text, m.fields = m.text[:0], m.fields[:0]
	for _, f := range fields {
		var mf memoField
		mf.name[0] = len(m.text)
		m.text = append(m.text, f.Name...)
		mf.name[1], mf.value[0] = len(m.text), len(m.text)
		m.text = append(m.text, f.Value...)
		mf.value[1], mf.sensitive = len(m.text), f.Sensitive
		m.fields = append(m.fields, mf)
	}
}
