package dubbo

import (
	"encoding/binary"
	"errors"
	"unicode/utf8"
)

// Hessian 2.0 as far as routing needs it: strings are read, every other
// value is skipped without being built. Tags by first byte:
//
//	0x00-0x1f string, 0-31 chars          0x20-0x2f binary, 0-15 bytes
//	0x30-0x33 string, 2-byte length       0x34-0x37 binary, 2-byte length
//	0x38-0x3f long, 3 bytes               'A' 'B' binary chunk, last chunk
//	'C' class definition                  'D' double, 8 bytes
//	'F' 'T' 'N' false, true, null         'H' map  'M' typed map ... 'Z'
//	'I' int, 4 bytes                      0x4a 0x4b date, 8 or 4 bytes
//	'L' long, 8 bytes                     'O' object, 0x60-0x6f object
//	'Q' back reference                    'R' 'S' string chunk, last chunk
//	'U' 'W' list ... 'Z'                  'V' 'X' list with a length
//	'Y' long, 4 bytes                     0x5b-0x5f double, 0-4 bytes
//	0x70-0x7f list, 0-7 values            0x80-0xd7 int, 1-3 bytes
//	0xd8-0xff long, 1-2 bytes
//
// String lengths count UTF-16 units, so a 4-byte UTF-8 sequence counts 2.

// maxDepth bounds nesting, so a hostile body cannot exhaust the stack.
const maxDepth = 64

var (
	errShort    = errors.New("dubbo: hessian2 value runs past the body")
	errBadTag   = errors.New("dubbo: not a hessian2 value")
	errTooDeep  = errors.New("dubbo: hessian2 values nested too deep")
	errNoString = errors.New("dubbo: hessian2 value is not a string")
)

// hreader reads hessian2 values from a body.
type hreader struct {
	b   []byte
	off int
	// classes holds the field count of each class definition seen, in
	// order: an object names its class by index.
	classes []int
}

func (r *hreader) byte() (byte, error) {
	if r.off >= len(r.b) {
		return 0, errShort
	}
	c := r.b[r.off]
	r.off++
	return c, nil
}

func (r *hreader) advance(n int) error {
	if n < 0 || n > len(r.b)-r.off {
		return errShort
	}
	r.off += n
	return nil
}

// str reads a string value (nil for null). A one-chunk string aliases the
// body; a chunked one is copied.
func (r *hreader) str() ([]byte, error) { return r.string(true) }

// skipStr passes over a string value (or null) without copying a chunked
// one.
func (r *hreader) skipStr() error {
	_, err := r.string(false)
	return err
}

// string reads a string value; keep false passes over it, returning nil.
func (r *hreader) string(keep bool) ([]byte, error) {
	var out []byte
	chunks := 0
	for {
		tag, err := r.byte()
		if err != nil {
			return nil, err
		}
		var units int
		last := true
		switch {
		case tag == 'N' && chunks == 0:
			return nil, nil
		case tag <= 0x1f:
			units = int(tag)
		case tag >= 0x30 && tag <= 0x33:
			c, err := r.byte()
			if err != nil {
				return nil, err
			}
			units = int(tag-0x30)<<8 | int(c)
		case tag == 'S' || tag == 'R':
			if err := r.advance(2); err != nil {
				return nil, err
			}
			units = int(binary.BigEndian.Uint16(r.b[r.off-2:]))
			last = tag == 'S'
		default:
			return nil, errNoString
		}
		start := r.off
		if err := r.utf16Units(units); err != nil {
			return nil, err
		}
		chunk := r.b[start:r.off:r.off]
		chunks++
		if !keep {
			if last {
				return nil, nil
			}
			continue
		}
		if last && chunks == 1 {
			return chunk, nil
		}
		out = append(out, chunk...)
		if last {
			return out, nil
		}
	}
}

// utf16Units advances over n UTF-16 units of UTF-8 text.
func (r *hreader) utf16Units(n int) error {
	// ASCII, one byte a unit, as names and versions nearly always are.
	for n > 0 && r.off < len(r.b) && r.b[r.off] < utf8.RuneSelf {
		r.off++
		n--
	}
	for n > 0 {
		if r.off >= len(r.b) {
			return errShort
		}
		c := r.b[r.off]
		size := 1
		switch {
		case c < utf8.RuneSelf:
		case c&0xe0 == 0xc0:
			size = 2
		case c&0xf0 == 0xe0:
			size = 3
		case c&0xf8 == 0xf0:
			size = 4
			n-- // a surrogate pair in Java's counting
		default:
			return errBadTag
		}
		if err := r.advance(size); err != nil {
			return err
		}
		n--
	}
	return nil
}

// int reads an int value (a length, a count or a class reference).
func (r *hreader) int() (int, error) {
	tag, err := r.byte()
	if err != nil {
		return 0, err
	}
	switch {
	case tag >= 0x80 && tag <= 0xbf:
		return int(tag) - 0x90, nil
	case tag >= 0xc0 && tag <= 0xcf:
		c, err := r.byte()
		return (int(tag)-0xc8)<<8 | int(c), err
	case tag >= 0xd0 && tag <= 0xd7:
		if err := r.advance(2); err != nil {
			return 0, err
		}
		return (int(tag)-0xd4)<<16 | int(binary.BigEndian.Uint16(r.b[r.off-2:])), nil
	case tag == 'I':
		if err := r.advance(4); err != nil {
			return 0, err
		}
		return int(int32(binary.BigEndian.Uint32(r.b[r.off-4:]))), nil
	}
	return 0, errBadTag
}

// typ skips a list's or map's type: a string, or an int referring to an
// earlier type.
func (r *hreader) typ() error {
	if r.off >= len(r.b) {
		return errShort
	}
	if t := r.b[r.off]; t <= 0x1f || t >= 0x30 && t <= 0x33 || t == 'S' || t == 'R' {
		_, err := r.str()
		return err
	}
	_, err := r.int()
	return err
}

// skip passes over one value of any type.
func (r *hreader) skip(depth int) error {
	if depth > maxDepth {
		return errTooDeep
	}
	if r.off >= len(r.b) {
		return errShort
	}
	tag := r.b[r.off]
	switch {
	case tag <= 0x1f, tag >= 0x30 && tag <= 0x33, tag == 'S', tag == 'R':
		_, err := r.str()
		return err
	case tag >= 0x80 && tag <= 0xd7, tag == 'I':
		_, err := r.int()
		return err
	}
	r.off++
	switch {
	case tag >= 0x20 && tag <= 0x2f:
		return r.advance(int(tag - 0x20))
	case tag >= 0x34 && tag <= 0x37:
		c, err := r.byte()
		if err != nil {
			return err
		}
		return r.advance(int(tag-0x34)<<8 | int(c))
	case tag == 'A' || tag == 'B':
		for {
			if err := r.advance(2); err != nil {
				return err
			}
			if err := r.advance(int(binary.BigEndian.Uint16(r.b[r.off-2:]))); err != nil {
				return err
			}
			if tag == 'B' {
				return nil
			}
			if tag, _ = r.byte(); tag != 'A' && tag != 'B' {
				return errBadTag // chunks of a binary are all long-form
			}
		}
	case tag >= 0x38 && tag <= 0x3f:
		return r.advance(2)
	case tag >= 0xd8 && tag <= 0xef, tag == 'N', tag == 'T', tag == 'F', tag == 0x5b, tag == 0x5c:
		return nil
	case tag >= 0xf0, tag == 0x5d:
		return r.advance(1)
	case tag == 0x5e:
		return r.advance(2)
	case tag == 'Y', tag == 0x4b, tag == 0x5f:
		return r.advance(4)
	case tag == 'L', tag == 'D', tag == 0x4a:
		return r.advance(8)
	case tag == 'Q':
		_, err := r.int()
		return err
	case tag == 'C':
		// A class definition: name, field count, field names; the object
		// that uses it follows.
		if _, err := r.str(); err != nil {
			return err
		}
		n, err := r.int()
		if err != nil {
			return err
		}
		if n < 0 || n > len(r.b)-r.off {
			return errShort
		}
		for range n {
			if _, err := r.str(); err != nil {
				return err
			}
		}
		r.classes = append(r.classes, n)
		return r.skip(depth + 1)
	case tag == 'O' || tag >= 0x60 && tag <= 0x6f:
		ref := int(tag - 0x60)
		if tag == 'O' {
			var err error
			if ref, err = r.int(); err != nil {
				return err
			}
		}
		if ref < 0 || ref >= len(r.classes) {
			return errBadTag
		}
		return r.values(r.classes[ref], depth)
	case tag == 'H' || tag == 'M':
		if tag == 'M' {
			if err := r.typ(); err != nil {
				return err
			}
		}
		return r.untilEnd(depth) // keys and values alike
	case tag == 'U' || tag == 'W':
		if tag == 'U' {
			if err := r.typ(); err != nil {
				return err
			}
		}
		return r.untilEnd(depth)
	case tag == 'V' || tag == 'X':
		if tag == 'V' {
			if err := r.typ(); err != nil {
				return err
			}
		}
		n, err := r.int()
		if err != nil {
			return err
		}
		return r.values(n, depth)
	case tag >= 0x70 && tag <= 0x77:
		if err := r.typ(); err != nil {
			return err
		}
		return r.values(int(tag-0x70), depth)
	case tag >= 0x78 && tag <= 0x7f:
		return r.values(int(tag-0x78), depth)
	}
	return errBadTag
}

// values skips n values; each takes a byte at least, so a count larger
// than what is left fails at once.
func (r *hreader) values(n, depth int) error {
	if n < 0 || n > len(r.b)-r.off {
		return errShort
	}
	for range n {
		if err := r.skip(depth + 1); err != nil {
			return err
		}
	}
	return nil
}

// untilEnd skips values up to and including the 'Z' that ends a map or a
// variable-length list.
func (r *hreader) untilEnd(depth int) error {
	for {
		if r.off >= len(r.b) {
			return errShort
		}
		if r.b[r.off] == 'Z' {
			r.off++
			return nil
		}
		if err := r.skip(depth + 1); err != nil {
			return err
		}
	}
}

// appendString appends s as a hessian2 string (the agent's error texts).
func appendString(b []byte, s string) []byte {
	if s == "" {
		return append(b, 0x00)
	}
	units := 0
	for _, c := range s {
		units++
		if c > 0xffff {
			units++
		}
	}
	for units > 0 {
		// Chunks of at most 0xffff units: find the byte offset.
		n, off := 0, 0
		for off < len(s) && n < 0xfff0 {
			c, size := utf8.DecodeRuneInString(s[off:])
			n++
			if c > 0xffff {
				n++
			}
			off += size
		}
		switch {
		case off == len(s) && n <= 0x1f:
			b = append(b, byte(n))
		case off == len(s) && n <= 0x3ff:
			b = append(b, 0x30+byte(n>>8), byte(n))
		case off == len(s):
			b = append(b, 'S', byte(n>>8), byte(n))
		default:
			b = append(b, 'R', byte(n>>8), byte(n))
		}
		b = append(b, s[:off]...)
		s = s[off:]
		units -= n
	}
	return b
}
