package redis

import (
	"bytes"
	"errors"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Decoding limits, as redis-server's own: a length line holds at most
// maxLenDigits digits, an inline command at most maxInline bytes.
const (
	maxLenDigits = 19
	maxInline    = 64 << 10
)

// Protocol errors: the bytes are not RESP. Redis answers these with
// "-ERR Protocol error" and closes the connection; so does weir.
var (
	errBadLength   = errors.New("Protocol error: invalid length")
	errNotBulk     = errors.New("Protocol error: expected '$'")
	errBadType     = errors.New("Protocol error: unknown reply type")
	errNoCRLF      = errors.New("Protocol error: expected CRLF")
	errInlineLarge = errors.New("Protocol error: too big inline request")
	errStreamed    = errors.New("Protocol error: streamed RESP3 strings are not supported")
)

// decodeCommand frames one command: an array of bulk strings, or an inline
// line.
func decodeCommand(dst *Frame, b []byte, max int) (*Frame, int, error) {
	if b[0] != '*' {
		return decodeInline(dst, b)
	}
	n, p, err := parseLen(b, 1, max/6)
	if err != nil {
		return nil, p, err
	}
	if n <= 0 {
		// *0 and *-1: Redis reads and ignores them, with no reply.
		return newFrame(dst, b[:p:p], rpc.Oneway, 0), p, nil
	}
	var nameAt, nameLen int // argument 0, the command's name
	for i := range n {
		// The common case, a whole bulk string with a short length, in
		// one pass; anything else (need more, an error, a long length)
		// takes the careful path below, which decides it as before.
		var (
			l, q int
			ok   bool
		)
		if p < len(b) && b[p] == '$' {
			l, q, ok = bulkLen(b, p+1)
		}
		if !ok || l > max {
			switch {
			case p >= len(b):
				return nil, p + 6*(n-i), rpc.ErrNeedMore
			case b[p] != '$':
				return nil, 0, errNotBulk
			}
			var err error
			l, q, err = parseLen(b, p+1, max)
			switch {
			case err == rpc.ErrNeedMore:
				return nil, q + 2 + 6*(n-i-1), err
			case err != nil:
				return nil, 0, err
			case l < 0:
				return nil, 0, errBadLength
			}
		}
		if i == 0 {
			nameAt, nameLen = q, l
		}
		p = q + l + 2
		if p > len(b) {
			return nil, p + 6*(n-i-1), rpc.ErrNeedMore
		}
		if b[p-2] != '\r' || b[p-1] != '\n' {
			return nil, 0, errNoCRLF
		}
	}
	f := newFrame(dst, b[:p:p], rpc.Request, n)
	f.nameAt, f.nameLen = int32(nameAt), int32(nameLen)
	return f, p, nil
}

// bulkLen is the fast path of the length of a "$<len> CRLF" whose digits
// start at p: one to four digits and the CRLF, all in b. It returns the
// length and the index after the CRLF; ok false leaves the line to
// parseLen (more digits, "-1", need more, or not a length at all), which
// accepts everything bulkLen does with the same result. The caller checks
// the '$' and the length's limit.
func bulkLen(b []byte, p int) (n, next int, ok bool) {
	// Small enough for the compiler to inline: it runs per argument.
	i := p
	for ; i < len(b) && i < p+4; i++ {
		d := b[i] - '0' // a byte: below '0' wraps past 9
		if d > 9 {
			break
		}
		n = n*10 + int(d)
	}
	ok = i > p && i+1 < len(b) && b[i] == '\r' && b[i+1] == '\n'
	return n, i + 2, ok
}

// decodeInline frames a command sent as a line of words.
func decodeInline(dst *Frame, b []byte) (*Frame, int, error) {
	i := bytes.IndexByte(b[:min(len(b), maxInline)], '\n')
	if i < 0 {
		if len(b) >= maxInline {
			return nil, 0, errInlineLarge
		}
		return nil, len(b) + 1, rpc.ErrNeedMore
	}
	p := i + 1
	f := newFrame(dst, b[:p:p], rpc.Request, 0)
	f.inline = true
	for len(inlineArg(f.raw, f.nargs)) > 0 {
		f.nargs++
	}
	if f.nargs == 0 {
		f.kind = rpc.Oneway // an empty line: ignored, no reply
	}
	return f, p, nil
}

// decodeReply frames one reply of any RESP2 or RESP3 type. It walks the
// values without recursion: todo counts the values still to read, and an
// aggregate adds its elements to it.
func decodeReply(dst *Frame, b []byte, max int) (*Frame, int, error) {
	if f, n := decodeSimpleReply(dst, b, max); f != nil {
		return f, n, nil
	}
	return walkReply(dst, b, max)
}

// walkReply is decodeReply for any reply: the walk over its values.
func walkReply(dst *Frame, b []byte, max int) (*Frame, int, error) {
	p, todo := 0, 1
	push := b[0] == '>'
	for todo > 0 {
		if p >= len(b) {
			return nil, p + 3*todo, rpc.ErrNeedMore
		}
		t := b[p]
		switch t {
		case '+', '-', ':', '_', ',', '#', '(':
			i := bytes.IndexByte(b[p:], '\n')
			if i < 0 {
				if len(b)-p > max {
					return nil, 0, rpc.ErrFrameTooLarge
				}
				return nil, len(b) + 1 + 3*(todo-1), rpc.ErrNeedMore
			}
			if i == 0 || b[p+i-1] != '\r' {
				return nil, 0, errNoCRLF
			}
			p += i + 1
			todo--
		case '$', '!', '=':
			if p+1 < len(b) && b[p+1] == '?' {
				return nil, 0, errStreamed
			}
			l, q, err := parseLen(b, p+1, max)
			switch {
			case err == rpc.ErrNeedMore:
				return nil, q + 3*(todo-1), err
			case err != nil:
				return nil, 0, err
			case l < 0 && t != '$':
				return nil, 0, errBadLength
			case l < 0:
				p = q // $-1: null
			default:
				p = q + l + 2
				if p > len(b) {
					return nil, p + 3*(todo-1), rpc.ErrNeedMore
				}
				if b[p-2] != '\r' || b[p-1] != '\n' {
					return nil, 0, errNoCRLF
				}
			}
			todo--
		case '*', '%', '~', '|', '>':
			if p+1 < len(b) && b[p+1] == '?' {
				return nil, 0, errStreamed
			}
			n, q, err := parseLen(b, p+1, max/3)
			switch {
			case err == rpc.ErrNeedMore:
				return nil, q + 3*(todo-1), err
			case err != nil:
				return nil, 0, err
			case n < 0 && t != '*':
				return nil, 0, errBadLength
			}
			p = q
			if t == '%' || t == '|' {
				n *= 2
			}
			if t != '|' {
				todo-- // an attribute annotates the value after it
			}
			if n > 0 {
				todo += n
				if todo > max/3 {
					return nil, 0, rpc.ErrFrameTooLarge
				}
			}
		default:
			return nil, 0, errBadType
		}
	}
	f := newFrame(dst, b[:p:p], rpc.Response, 0)
	if push {
		f.push = true
		// Out of band: never the answer to a request. The framework drops
		// a shared connection that sends one.
		f.kind = rpc.Oneway
	}
	return f, p, nil
}

// decodeSimpleReply is decodeReply's fast path for the replies most
// commands get, whole in b: a status, an error, an integer, or a bulk
// string with a short length. It returns nil for anything else (an
// aggregate, need more, bytes that are not RESP), which decodeReply's walk
// then decides as before.
func decodeSimpleReply(dst *Frame, b []byte, max int) (*Frame, int) {
	p := 0
	switch b[0] {
	case '+', '-', ':':
		i := bytes.IndexByte(b, '\n')
		if i < 1 || b[i-1] != '\r' {
			return nil, 0
		}
		p = i + 1
	case '$':
		l, q, ok := bulkLen(b, 1)
		if !ok || l > max {
			return nil, 0
		}
		p = q + l + 2
		if p > len(b) || b[p-2] != '\r' || b[p-1] != '\n' {
			return nil, 0
		}
	default:
		return nil, 0
	}
	return newFrame(dst, b[:p:p], rpc.Response, 0), p
}

// parseLen reads "<digits> CRLF" or "-1 CRLF" at p. It returns the value
// and the index after the CRLF; with rpc.ErrNeedMore, the index is a lower
// bound of where the line ends. A value over limit is rpc.ErrFrameTooLarge,
// known before any byte of the body it announces.
func parseLen(b []byte, p, limit int) (int, int, error) {
	if p < len(b) && b[p] == '-' {
		switch {
		case p+1 >= len(b):
			return 0, p + 4, rpc.ErrNeedMore
		case b[p+1] != '1':
			return 0, 0, errBadLength
		case p+3 >= len(b):
			return 0, p + 4, rpc.ErrNeedMore
		case b[p+2] != '\r' || b[p+3] != '\n':
			return 0, 0, errBadLength
		}
		return -1, p + 4, nil
	}
	n, i := 0, p
	for ; i < len(b) && '0' <= b[i] && b[i] <= '9'; i++ {
		if i-p >= maxLenDigits {
			return 0, 0, errBadLength
		}
		n = n*10 + int(b[i]-'0')
		if n > limit {
			return 0, 0, rpc.ErrFrameTooLarge
		}
	}
	switch {
	case i == len(b):
		return 0, i + 2, rpc.ErrNeedMore
	case i == p || b[i] != '\r':
		return 0, 0, errBadLength
	case i+1 == len(b):
		return 0, i + 2, rpc.ErrNeedMore
	case b[i+1] != '\n':
		return 0, 0, errBadLength
	}
	return n, i + 2, nil
}
