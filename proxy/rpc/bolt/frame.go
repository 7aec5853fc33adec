package bolt

import (
	"encoding/binary"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// Attribute names of a request (Frame.Attr). Any other name is a header.
const (
	// AttrService is the "service" header (SOFARPC's service unique name,
	// "interface:version"), else sofa_head_target_service.
	AttrService = "service"
	// AttrMethod is the sofa_head_method_name header.
	AttrMethod = "method"
	// AttrClass is the class name ("com.alipay.sofa.rpc.core.request.SofaRequest").
	AttrClass = "class"
)

// Frame is one Bolt command holding the bytes it was read from; its
// header map is decoded on the first Attr call, once.
type Frame struct {
	raw                 []byte
	l                   *layout
	kind                rpc.Kind
	crc                 bool
	classLen, headerLen int

	decoded bool
	headers []kv
}

type kv struct{ k, v []byte }

// Kind is Request, Oneway, Heartbeat or Response.
func (f *Frame) Kind() rpc.Kind { return f.kind }

// Bytes is the command as read, its id as last set.
func (f *Frame) Bytes() []byte { return f.raw }

// ID is the request id.
func (f *Frame) ID() uint64 { return uint64(binary.BigEndian.Uint32(f.raw[f.l.id:])) }

// SetID patches the request id, and the CRC32 when the frame has one.
func (f *Frame) SetID(id uint64) {
	binary.BigEndian.PutUint32(f.raw[f.l.id:], uint32(id))
	if f.crc {
		n := len(f.raw) - 4
		binary.BigEndian.PutUint32(f.raw[n:], checksum(f.raw[:n]))
	}
}

// Attr returns a request's routing attribute (see the Attr constants; any
// other name is a header), or nil.
func (f *Frame) Attr(name string) []byte {
	if f.kind != rpc.Request && f.kind != rpc.Oneway {
		return nil
	}
	switch name {
	case AttrClass:
		return f.raw[f.l.size : f.l.size+f.classLen]
	case AttrService:
		if v := f.header("service"); v != nil {
			return v
		}
		return f.header("sofa_head_target_service")
	case AttrMethod:
		return f.header("sofa_head_method_name")
	}
	return f.header(name)
}

func (f *Frame) header(name string) []byte {
	if !f.decoded {
		f.decoded = true
		start := f.l.size + f.classLen
		f.headers = decodeHeaders(f.raw[start : start+f.headerLen])
	}
	for _, h := range f.headers {
		if string(h.k) == name {
			return h.v
		}
	}
	return nil
}

// decodeHeaders reads SOFA's simple map: for each entry, an int32 key
// length, the key, an int32 value length, the value. A malformed map
// gives the entries before the fault.
func decodeHeaders(b []byte) []kv {
	var out []kv
	next := func() ([]byte, bool) {
		if len(b) < 4 {
			return nil, false
		}
		n := int64(int32(binary.BigEndian.Uint32(b)))
		b = b[4:]
		if n < 0 || n > int64(len(b)) {
			return nil, false
		}
		v := b[:n:n]
		b = b[n:]
		return v, true
	}
	for len(b) > 0 {
		k, ok := next()
		if !ok {
			return out
		}
		v, ok := next()
		if !ok {
			return out
		}
		out = append(out, kv{k, v})
	}
	return out
}
