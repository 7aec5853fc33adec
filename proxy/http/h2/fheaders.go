package h2

import (
	"strings"

	"golang.org/x/net/http/httpguts"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// headerBlock decodes the header blocks of one connection's frame reader
// (a HEADERS frame and its CONTINUATIONs) into a field list, with the
// checks x/net's Framer.ReadMetaHeaders makes (RFC 9113 §8.2: field names
// in lower case, valid values, pseudo-fields first, known and not
// repeated; the list bounded by MaxHeaderListSize, and a block that goes
// far beyond it a connection error, against CONTINUATION floods) but
// without its allocations per block: the result is one value kept here,
// and on the upstream side, whose fields are used before the next block
// is read, one field slice reused.
type headerBlock struct {
	dec     *hpack.Decoder
	maxSize uint32
	reuse   bool // fields may be overwritten by the next block

	mh         http2.MetaHeadersFrame
	active     bool // a block is being read
	fields     []hpack.HeaderField
	scratch    []hpack.HeaderField
	remain     uint32
	truncated  bool
	invalid    bool
	sawRegular bool
	pseudos    uint8 // pseudo-fields seen, by bit
}

func newHeaderBlock(maxSize uint32, reuse bool) *headerBlock {
	b := &headerBlock{maxSize: maxSize, reuse: reuse}
	b.dec = hpack.NewDecoder(4096, b.emit)
	b.dec.SetMaxStringLength(int(maxSize))
	return b
}

// pseudoBit numbers the pseudo-fields; 0 for an unknown one.
func pseudoBit(name string) uint8 {
	switch name {
	case ":method":
		return 1
	case ":scheme":
		return 2
	case ":authority":
		return 4
	case ":path":
		return 8
	case ":protocol":
		return 16
	case ":status":
		return 32
	}
	return 0
}

func (b *headerBlock) emit(hf hpack.HeaderField) {
	if b.invalid || b.truncated {
		return
	}
	if !httpguts.ValidHeaderFieldValue(hf.Value) {
		b.invalid = true
		return
	}
	if strings.HasPrefix(hf.Name, ":") {
		bit := pseudoBit(hf.Name)
		if b.sawRegular || bit == 0 || b.pseudos&bit != 0 {
			b.invalid = true
			return
		}
		b.pseudos |= bit
	} else {
		b.sawRegular = true
		if !validFieldName(hf.Name) {
			b.invalid = true
			return
		}
	}
	size := hf.Size()
	if size > b.remain {
		b.truncated, b.remain = true, 0
		return
	}
	b.remain -= size
	b.fields = append(b.fields, hf)
}

// validFieldName: a token in lower case (RFC 9113 §8.2.1).
func validFieldName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' || !httpguts.IsTokenRune(rune(c)) {
			return false
		}
	}
	return true
}

// start takes a HEADERS frame; the block is returned once complete (nil
// while CONTINUATION frames are due).
func (b *headerBlock) start(f *http2.HeadersFrame) (*http2.MetaHeadersFrame, error) {
	b.mh = http2.MetaHeadersFrame{HeadersFrame: f}
	b.active = true
	if b.reuse {
		b.fields = b.scratch[:0]
	} else {
		b.fields = make([]hpack.HeaderField, 0, 12)
	}
	b.remain, b.truncated, b.invalid, b.sawRegular, b.pseudos = b.maxSize, false, false, false, 0
	return b.fragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

// cont takes a CONTINUATION frame (the Framer checks it follows the
// HEADERS of the same stream).
func (b *headerBlock) cont(f *http2.ContinuationFrame) (*http2.MetaHeadersFrame, error) {
	if !b.active {
		// The HEADERS it continues was refused by the Framer (a stream
		// error): the block cannot be decoded, nor the ones after it.
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return b.fragment(f.HeaderBlockFragment(), f.HeadersEnded())
}

func (b *headerBlock) fragment(p []byte, end bool) (*http2.MetaHeadersFrame, error) {
	b.active = !end
	if uint64(len(p)) > 2*uint64(b.remain) {
		// Far past the limit: not worth decoding, and a flood.
		return nil, http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if _, err := b.dec.Write(p); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if !end {
		return nil, nil
	}
	if err := b.dec.Close(); err != nil {
		return nil, http2.ConnectionError(http2.ErrCodeCompression)
	}
	if b.reuse {
		b.scratch = b.fields[:0]
	}
	b.mh.Fields, b.mh.Truncated = b.fields, b.truncated
	b.fields = nil
	if b.pseudos&32 != 0 && b.pseudos&^32 != 0 {
		b.invalid = true // request and response pseudo-fields mixed
	}
	if b.invalid {
		return nil, http2.StreamError{StreamID: b.mh.StreamID, Code: http2.ErrCodeProtocol}
	}
	return &b.mh, nil
}
