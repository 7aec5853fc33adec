package relay

import (
	"io"
	"net"
	"sync"
)

// bulkBufSize is a NoSplice direction's buffer once it carries bulk: 16
// times the small-message buffer, so a gigabyte costs 4,000 reads and
// writes instead of 65,000.
const bulkBufSize = 256 << 10

var bulkBufs = sync.Pool{New: func() any { b := make([]byte, bulkBufSize); return &b }}

// copyNoSplice copies src to dst through a pooled bulk buffer with read and
// write; the wrappers hide ReadFrom and WriteTo, which would splice.
func copyNoSplice(dst, src *net.TCPConn) (int64, error) {
	bp := bulkBufs.Get().(*[]byte)
	defer bulkBufs.Put(bp)
	return io.CopyBuffer(struct{ io.Writer }{dst}, struct{ io.Reader }{src}, *bp)
}

// NoSplice makes the relay h is then bound to (RelayWith) copy with read
// and write in both directions for its whole life, never splice (a
// direction that turns to bulk switches to a larger buffer instead). A socket
// in an eBPF sockmap (eBPF mode's acceleration of local pairs) receives
// what its peer sends into the sockmap's queue, which recvmsg reads and
// splice never sees: spliced, such a direction stalls or delivers bytes
// out of order (the integration test saw a different stream arrive). Call
// it before RelayWith.
func (h *Handle) NoSplice() { h.noSplice = true }
