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
// body is decoded on the first Attr call, once.
type Frame struct {
	raw  []byte
	kind rpc.Kind

	decoded bool
	bad     error // why the body has no attributes
	// The body's leading strings and the attachments (string values only).
	dubboVersion, path, version, method []byte
	attachments                         []kv
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

// Attr returns a request's routing attribute (see the Attr constants;
// any other name is an attachment), or nil: for responses, events,
// bodies that are not hessian2, or bodies that do not parse.
func (f *Frame) Attr(name string) []byte {
	if f.kind != rpc.Request && f.kind != rpc.Oneway {
		return nil
	}
	if !f.decoded {
		f.decoded = true
		f.bad = f.decodeBody()
	}
	switch name {
	case AttrService:
		return f.path
	case AttrMethod:
		return f.method
	case AttrDubboVersion:
		return f.dubboVersion
	case AttrVersion:
		if len(f.version) > 0 {
			return f.version
		}
	case AttrInterface:
		if v := f.attachment(AttrInterface); v != nil {
			return v
		}
		return f.path
	}
	return f.attachment(name)
}

func (f *Frame) attachment(name string) []byte {
	for _, a := range f.attachments {
		if string(a.k) == name {
			return a.v
		}
	}
	return nil
}

// BodyError says why the request's body gave no attributes (nil when it
// decoded, or has not been asked for).
func (f *Frame) BodyError() error { return f.bad }

var errNotHessian = errors.New("dubbo: body is not hessian2")

// decodeBody reads the leading strings, skips the arguments and reads the
// attachments. What was read before an error stays available.
func (f *Frame) decodeBody() error {
	if f.raw[2]&serialMask != Hessian2 {
		return errNotHessian
	}
	r := hreader{b: f.raw[headerLen:]}
	var err error
	for _, dst := range []*[]byte{&f.dubboVersion, &f.path, &f.version, &f.method} {
		if *dst, err = r.str(); err != nil {
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
			f.attachments = append(f.attachments, kv{k, v})
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
