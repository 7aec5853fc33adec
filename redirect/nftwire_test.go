package redirect

import (
	"encoding/binary"
	"errors"
	"testing"

	"golang.org/x/sys/unix"
)

// nlErr is an NLMSG_ERROR message answering seq with errno (0: an
// acknowledgement).
func nlErr(seq uint32, errno unix.Errno) []byte {
	b := binary.NativeEndian.AppendUint32(nil, nlMsgHdrLen+4)
	b = binary.NativeEndian.AppendUint16(b, unix.NLMSG_ERROR)
	b = binary.NativeEndian.AppendUint16(b, 0)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	return binary.NativeEndian.AppendUint32(b, uint32(-int32(errno)))
}

// TestEachNLMsg: the messages of a datagram are handed over in order with
// their sequence numbers and errors; a length that does not fit is an
// error, not a panic or a loop.
func TestEachNLMsg(t *testing.T) {
	d := append(nlErr(7, unix.ENOENT), nlErr(9, 0)...)
	var seqs []uint32
	var errs []error
	done, err := eachNLMsg(d, func(m nlMsg) (bool, error) {
		seqs = append(seqs, m.seq)
		errs = append(errs, errnoOf(m))
		return m.seq == 9, nil
	})
	if !done || err != nil || len(seqs) != 2 || seqs[0] != 7 || seqs[1] != 9 {
		t.Fatalf("eachNLMsg = %v, %v; seqs %v", done, err, seqs)
	}
	if !errors.Is(errs[0], unix.ENOENT) || errs[1] != nil {
		t.Fatalf("errors %v, want ENOENT then an acknowledgement", errs)
	}
	bad := nlErr(1, 0)
	binary.NativeEndian.PutUint32(bad, 1000)
	if _, err := eachNLMsg(bad, func(nlMsg) (bool, error) { return false, nil }); err == nil {
		t.Fatal("a message longer than its datagram was accepted")
	}
}

// FuzzEachNLMsg feeds eachNLMsg arbitrary datagrams: it must hand over
// only messages that lie inside the datagram, and end.
func FuzzEachNLMsg(f *testing.F) {
	f.Add(append(nlErr(7, unix.ENOENT), nlErr(9, 0)...))
	f.Add(nlErr(1, 0)[:10])
	f.Fuzz(func(t *testing.T, b []byte) {
		n := 0
		eachNLMsg(b, func(m nlMsg) (bool, error) {
			n++
			if len(m.data) > len(b)-nlMsgHdrLen {
				t.Fatalf("message data of %d bytes from a datagram of %d", len(m.data), len(b))
			}
			errnoOf(m)
			return false, nil
		})
		if n > len(b)/nlMsgHdrLen {
			t.Fatalf("%d messages from %d bytes", n, len(b))
		}
	})
}
