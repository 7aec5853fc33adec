package h1

import "bytes"

// maxChunkLine bounds a chunk-size line with its extensions. Extensions
// are legal but unused in practice; a long line is an attack.
const maxChunkLine = 4 << 10

// Errors of body framing.
var (
	errChunkSize     = &protoError{400, "invalid chunk size"}
	errChunkExt      = &protoError{400, "invalid chunk extension"}
	errChunkLine     = &protoError{400, "chunk line too long"}
	errChunkCRLF     = &protoError{400, "chunk data not followed by CRLF"}
	errTrailer       = &protoError{400, "invalid trailer field"}
	errTruncatedBody = &protoError{400, "body ends before its framing says"}
)

// Chunked decoder states.
const (
	chunkSize uint8 = iota
	chunkData
	chunkCR
	chunkLF
	chunkTrailer
	chunkDone
)

// chunked validates a chunked body (RFC 9112 §7.1) as it streams through:
// the codec forwards exactly the bytes it has consumed, as received, so a
// body that passes is forwarded unchanged and one that does not is cut at
// the first byte that breaks the syntax. Chunk sizes are 1 to 16 hex
// digits that fit in an int64; extensions must be well formed; chunk data
// must end with CRLF; trailers are field lines under the head limits.
type chunked struct {
	state         uint8
	left          int64 // data bytes left in the current chunk
	trailerBytes  int
	trailerFields int
}

func (c *chunked) reset() { *c = chunked{} }

// consume validates a prefix of b and returns its length: everything up
// to the first incomplete line (need more), or to the end of the body
// (done; the rest of b belongs to the next message).
func (c *chunked) consume(b []byte, lim *Limits) (n int, done bool, err error) {
	for n < len(b) && c.state != chunkDone {
		switch c.state {
		case chunkSize:
			i := bytes.IndexByte(b[n:], '\n')
			if i < 0 {
				if len(b)-n > maxChunkLine {
					return n, false, errChunkLine
				}
				return n, false, nil
			}
			if i+1 > maxChunkLine {
				return n, false, errChunkLine
			}
			if i == 0 || b[n+i-1] != '\r' {
				return n, false, errBareLF
			}
			size, err := parseChunkLine(b[n : n+i-1])
			if err != nil {
				return n, false, err
			}
			n += i + 1
			if size == 0 {
				c.state = chunkTrailer
			} else {
				c.left, c.state = size, chunkData
			}
		case chunkData:
			k := int64(len(b) - n)
			if k > c.left {
				k = c.left
			}
			n += int(k)
			c.left -= k
			if c.left == 0 {
				c.state = chunkCR
			}
		case chunkCR:
			if b[n] != '\r' {
				return n, false, errChunkCRLF
			}
			n++
			c.state = chunkLF
		case chunkLF:
			if b[n] != '\n' {
				return n, false, errChunkCRLF
			}
			n++
			c.state = chunkSize
		case chunkTrailer:
			i := bytes.IndexByte(b[n:], '\n')
			if i < 0 {
				if c.trailerBytes+len(b)-n > lim.MaxHeadBytes {
					return n, false, &LimitError{Limit: LimitHeadBytes, Max: lim.MaxHeadBytes}
				}
				return n, false, nil
			}
			c.trailerBytes += i + 1
			if c.trailerBytes > lim.MaxHeadBytes {
				return n, false, &LimitError{Limit: LimitHeadBytes, Max: lim.MaxHeadBytes}
			}
			if i == 0 || b[n+i-1] != '\r' {
				return n, false, errBareLF
			}
			if i == 1 {
				n += 2
				c.state = chunkDone
				break
			}
			if b[n] == ' ' || b[n] == '\t' {
				return n, false, errObsFold
			}
			if c.trailerFields++; c.trailerFields > lim.MaxFields {
				return n, false, &LimitError{Limit: LimitFields, Max: lim.MaxFields}
			}
			if _, err := parseFieldLine(b, n, n+i-1); err != nil {
				return n, false, errTrailer
			}
			n += i + 1
		}
	}
	return n, c.state == chunkDone, nil
}

// parseChunkLine reads chunk-size [chunk-ext] (the line without CRLF):
// chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS ( token / quoted-string ) ] ).
func parseChunkLine(line []byte) (int64, error) {
	var size int64
	i := 0
	for i < len(line) {
		d := unhex(line[i])
		if d < 0 {
			break
		}
		if i == 16 || size > (1<<63-1)>>4 {
			return 0, errChunkSize
		}
		size = size<<4 | int64(d)
		i++
	}
	if i == 0 {
		return 0, errChunkSize
	}
	for i < len(line) {
		i = skipBWS(line, i)
		if i == len(line) || line[i] != ';' {
			return 0, errChunkExt
		}
		i = skipBWS(line, i+1)
		s := i
		for i < len(line) && isToken[line[i]] {
			i++
		}
		if i == s {
			return 0, errChunkExt
		}
		j := skipBWS(line, i)
		if j == len(line) || line[j] != '=' {
			i = j
			continue
		}
		i = skipBWS(line, j+1)
		if i < len(line) && line[i] == '"' {
			var ok bool
			if i, ok = skipQuoted(line, i); !ok {
				return 0, errChunkExt
			}
			continue
		}
		s = i
		for i < len(line) && isToken[line[i]] {
			i++
		}
		if i == s {
			return 0, errChunkExt
		}
	}
	return size, nil
}

func skipBWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	return i
}

// skipQuoted skips a quoted-string starting at b[i] == '"'.
func skipQuoted(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1, true
		case c == '\\':
			if i++; i == len(b) || !isFieldByte[b[i]] {
				return 0, false
			}
		case !isFieldByte[c]:
			return 0, false
		}
	}
	return 0, false
}

func unhex(c byte) int {
	switch {
	case '0' <= c && c <= '9':
		return int(c - '0')
	case 'a' <= c && c <= 'f':
		return int(c-'a') + 10
	case 'A' <= c && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// framer tracks one body as it streams through, whatever its framing.
type framer struct {
	mode uint8 // bodyNone, bodyLength, bodyChunked, bodyClose
	left int64
	ch   chunked
}

func (f *framer) reset(mode uint8, length int64) {
	f.mode, f.left = mode, length
	f.ch.reset()
}

// consume returns how much of b belongs to the body, validated, and
// whether the body is complete. A close-delimited body takes everything
// and is complete only at EOF (the caller knows).
func (f *framer) consume(b []byte, lim *Limits) (int, bool, error) {
	switch f.mode {
	case bodyLength:
		k := int64(len(b))
		if k > f.left {
			k = f.left
		}
		f.left -= k
		return int(k), f.left == 0, nil
	case bodyChunked:
		return f.ch.consume(b, lim)
	case bodyClose:
		return len(b), false, nil
	}
	return 0, true, nil
}
