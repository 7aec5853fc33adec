package dubbo

import (
	"bytes"
	"encoding/binary"
	"errors"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Attribute names of a request (Frame.Attr). Any other name is looked up
// in the request's attachments.
const (
	// AttrService is the service path (the interface name, as a rule).
	AttrService = "service"
	// AttrInterface is the "interface" attachment, else the service path.
	AttrInterface = "interface"
	// AttrMethod is the method name.
	AttrMethod = "method"
	// AttrGroup is the "group" attachment.
	AttrGroup = "group"
	// AttrVersion is the service version in the body, else the "version"
	// attachment.
	AttrVersion = "version"
	// AttrDubboVersion is the protocol version the client states ("2.0.2").
	AttrDubboVersion = "dubbo"
)

// Frame is one Dubbo message holding the bytes it was read from. Its
// body is decoded only as far as an Attr call needs: the leading strings
// (service, version, method) are found again at each call, which costs a
// scan of a few short strings and no allocation, so the method a request
// is counted under costs nothing per request but that scan; the
// arguments are skipped and the attachments read on the first call that
// names one, once.
type Frame struct {
	raw  []byte
	kind rpc.Kind
	// tail is the arguments' and attachments' decoding, nil until an
	// attribute after the arguments is asked for.
	tail *tail
}

// tail is what a Frame keeps of the body past its leading strings.
type tail struct {
	bad         error // why the body has no (more) attachments
	attachments []kv  // string values only
	// first holds the first attachments, so a request as clients send
	// them costs one allocation for its tail
	first [10]kv
}

type kv struct{ k, v []byte }

// Kind is Request, Oneway, Heartbeat (an event request), GoAway (the
// readonly event) or Response.
func (f *Frame) Kind() rpc.Kind { return f.kind }

// Bytes is the message as read, its id as last set.
func (f *Frame) Bytes() []byte { return f.raw }

// ID is the request id.
func (f *Frame) ID() uint64 { return binary.BigEndian.Uint64(f.raw[4:12]) }

// SetID patches the request id.
func (f *Frame) SetID(id uint64) { binary.BigEndian.PutUint64(f.raw[4:12], id) }

// Status is a response's status byte (20 is OK).
func (f *Frame) Status() byte { return f.raw[3] }

// The body's leading strings, in order (lead's indexes).
const (
	leadDubboVersion = iota
	leadPath
	leadVersion
	leadMethod
	leadCount
)

// Attr returns a request's routing attribute (see the Attr constants;
// any other name is an attachment), or nil: for responses, events,
// bodies that are not hessian2, or bodies that do not parse.
func (f *Frame) Attr(name string) []byte {
	if f.kind != rpc.Request && f.kind != rpc.Oneway {
		return nil
	}
	switch name {
	case AttrService:
		return f.lead(leadPath)
	case AttrMethod:
		return f.lead(leadMethod)
	case AttrDubboVersion:
		return f.lead(leadDubboVersion)
	case AttrVersion:
		if v := f.lead(leadVersion); len(v) > 0 {
			return v
		}
	case AttrInterface:
		if v := f.attachment(AttrInterface); v != nil {
			return v
		}
		return f.lead(leadPath)
	}
	return f.attachment(name)
}

// lead returns the body's i-th leading string; nil when the body is not
// hessian2 or does not get that far.
func (f *Frame) lead(i int) []byte {
	if f.raw[2]&serialMask != Hessian2 {
		return nil
	}
	r := hreader{b: f.raw[headerLen:]}
	for range i {
		if err := r.skipStr(); err != nil {
			return nil
		}
	}
	s, err := r.str()
	if err != nil {
		return nil
	}
	return s
}

func (f *Frame) attachment(name string) []byte {
	if f.tail == nil {
		f.tail = new(tail)
		f.tail.attachments = f.tail.first[:0]
		f.tail.bad = f.decodeTail()
	}
	for _, a := range f.tail.attachments {
		if string(a.k) == name {
			return a.v
		}
	}
	return nil
}

// BodyError says why the request's body gave no attachments, or not all
// (nil when it decoded, or no attachment has been asked for).
func (f *Frame) BodyError() error {
	if f.tail == nil {
		return nil
	}
	return f.tail.bad
}

var errNotHessian = errors.New("dubbo: body is not hessian2")

// decodeTail passes the leading strings, skips the arguments and reads
// the attachments into f.tail. What was read before an error stays
// available.
func (f *Frame) decodeTail() error {
	if f.raw[2]&serialMask != Hessian2 {
		return errNotHessian
	}
	r := hreader{b: f.raw[headerLen:]}
	for range leadCount {
		if err := r.skipStr(); err != nil {
			return err
		}
	}
	desc, err := r.str()
	if err != nil {
		return err
	}
	n, err := countParams(desc)
	if err != nil {
		return err
	}
	if err := r.values(n, 0); err != nil {
		return err
	}
	if r.off == len(r.b) {
		return nil // no attachments
	}
	tag, _ := r.byte()
	switch tag {
	case 'N':
		return nil
	case 'M':
		if err := r.typ(); err != nil {
			return err
		}
	case 'H':
	default:
		return errBadTag
	}
	for {
		if r.off >= len(r.b) {
			return errShort
		}
		if r.b[r.off] == 'Z' {
			return nil
		}
		k, kerr := r.str()
		if kerr != nil {
			if kerr != errNoString {
				return kerr
			}
			if err := r.skip(1); err != nil {
				return err
			}
		}
		start := r.off
		v, verr := r.str()
		if verr != nil {
			// A value that is not a string: skipped, not routable.
			r.off = start
			if err := r.skip(1); err != nil {
				return err
			}
			continue
		}
		if kerr == nil {
			f.tail.attachments = append(f.tail.attachments, kv{k, v})
		}
	}
}

var errBadDesc = errors.New("dubbo: bad parameter type descriptor")

// countParams counts the parameters a JVM method descriptor lists
// ("Ljava/lang/String;I[J" is 3).
func countParams(desc []byte) (int, error) {
	n := 0
	for i := 0; i < len(desc); i++ {
		switch desc[i] {
		case '[':
			continue
		case 'Z', 'B', 'C', 'S', 'I', 'J', 'F', 'D':
		case 'L':
			j := bytes.IndexByte(desc[i:], ';')
			if j < 0 {
				return 0, errBadDesc
			}
			i += j
		default:
			return 0, errBadDesc
		}
		n++
	}
	return n, nil
}
