package redis

// RESP on the wire (RESP2; RESP3 adds the types marked 3). Every line ends
// in CRLF; <n> is a decimal length or count.
//
//	request (client):  *<n> CRLF  then n times  $<len> CRLF <len bytes> CRLF
//	                   or an inline command: words separated by spaces, CRLF
//	reply (server):    +<simple string> CRLF      -<error> CRLF
//	                   :<integer> CRLF            $<len> CRLF <bytes> CRLF   ($-1: null)
//	                   *<n> CRLF <n values>       (*-1: null array)
//	                 3 _ CRLF (null)  ,<double>  #t|#f  (<big number>
//	                 3 !<len> blob error  =<len> verbatim string
//	                 3 %<n> map: 2n values    ~<n> set: n values
//	                 3 |<n> attribute: 2n values, then the reply it annotates
//	                 3 ><n> push: n values, out of band (never on a shared connection)
//
// A request has no id: a connection answers its requests in order, so the
// framework pipelines and matches replies first in, first out.

import "github.com/weir-mesh/weir/proxy/rpc"

// Frame is one command or one reply, holding the bytes it was read from.
type Frame struct {
	raw  []byte
	kind rpc.Kind
	// Commands: nargs arguments; inline is a command sent as a text line.
	nargs  int
	inline bool
	push   bool
	// nameAt and nameLen place argument 0, the command's name, in raw
	// (commands sent as arrays with at least one argument; framing finds
	// it anyway), so the name routing, pinning and metrics ask for costs
	// no second walk of the frame.
	nameAt, nameLen int32
}

// Kind is rpc.Request for commands (rpc.Oneway for the empty ones Redis
// ignores without a reply) and rpc.Response for replies.
func (f *Frame) Kind() rpc.Kind { return f.kind }

// Bytes is the frame as read.
func (f *Frame) Bytes() []byte { return f.raw }

// ID is always 0: RESP has no request ids.
func (f *Frame) ID() uint64 { return 0 }

// SetID does nothing: RESP has no request ids.
func (f *Frame) SetID(uint64) {}

// Push reports a RESP3 push (a reply nobody asked for).
func (f *Frame) Push() bool { return f.push }

// Attribute names of a command.
const (
	// AttrCommand is the command's name as sent (fold case to compare).
	AttrCommand = "command"
	// AttrKey is the command's first key; nil for commands without keys.
	AttrKey = "key"
)

// Attr returns AttrCommand or AttrKey of a command, nil otherwise. Framing
// only checks the command's shape; the argument is found on demand.
func (f *Frame) Attr(name string) []byte {
	if f.kind != rpc.Request {
		return nil
	}
	switch name {
	case AttrCommand:
		return f.Arg(0)
	case AttrKey:
		return f.firstKey()
	}
	return nil
}

// Args is the number of arguments of a command, its name included.
func (f *Frame) Args() int { return f.nargs }

// Arg returns argument i of a command (0 is the name), or nil. It walks
// the frame's bytes, which framing validated.
func (f *Frame) Arg(i int) []byte {
	if i < 0 || i >= f.nargs {
		return nil
	}
	if f.inline {
		return inlineArg(f.raw, i)
	}
	// From the name on: argument 0 is placed already.
	p := int(f.nameAt + f.nameLen + 2)
	if i == 0 {
		return f.raw[f.nameAt : p-2 : p-2]
	}
	for j := 1; ; j++ {
		n, q := readLen(f.raw, p+1) // $<len> CRLF
		if j == i {
			return f.raw[q : q+n : q+n]
		}
		p = q + n + 2
	}
}

// inlineArg returns word i of an inline command line.
func inlineArg(b []byte, i int) []byte {
	end := len(b) - 1 // the LF
	if end > 0 && b[end-1] == '\r' {
		end--
	}
	p := 0
	for w := 0; p < end; w++ {
		for p < end && isSpace(b[p]) {
			p++
		}
		q := p
		for q < end && !isSpace(b[q]) {
			q++
		}
		if w == i {
			return b[p:q:q]
		}
		p = q
	}
	return nil
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

// readLen reads a validated decimal length at p and returns it and the
// index after its CRLF.
func readLen(b []byte, p int) (n, next int) {
	for b[p] != '\r' {
		n = n*10 + int(b[p]-'0')
		p++
	}
	return n, p + 2
}
