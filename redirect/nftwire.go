package redirect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// weir talks nftables netlink itself, on one blocking socket per operation,
// rather than through github.com/google/nftables' Conn (which still builds
// the expressions). A pod's ADD is the hot path: the library asks the
// kernel to acknowledge and echo every message of a transaction and reads
// each answer with two system calls and fresh buffers (about 200 kB and
// 1,400 allocations per Apply, measured by BenchmarkApplyFresh), and a
// second socket served the reads. Here a transaction is one write and, when
// it commits, one read: only its last message asks for an acknowledgement.
// The kernel reports an error of any message whatever its flags, and
// delivers every report of a batch in order before the last message's
// acknowledgement, so that one answer proves the whole batch committed.
// The batch for a rule set is marshalled once per spec and reused.

// nlMsgHdrLen is the size of struct nlmsghdr; nfgenLen of struct nfgenmsg.
const (
	nlMsgHdrLen = 16
	nfgenLen    = 4
)

// nftRecvBuf is larger than any message the kernel sends a netlink socket
// (it caps a dump's chunk at 32 kB), so a read never truncates.
const nftRecvBuf = 64 << 10

// nftRecvTimeout bounds every wait for the kernel's answer: a missing one
// (which the kernel does not do) must fail the operation, not hang a pod's
// ADD with the namespace's lock held.
const nftRecvTimeout = 10

// nftBuffers are a session's buffers, kept between sessions: in for
// what the kernel sends, batch for the copy of a batch being sent.
type nftBuffers struct {
	in, batch []byte
}

// nlBufsFree keeps a few sessions' buffers between operations. It is not a
// sync.Pool: a pool is emptied by every second garbage collection, and
// each miss then makes a new 64 kB buffer, which brings the next
// collection nearer (the agent's ADDs missed it after every cycle).
// Sessions at once are few (the agent's lock serialises most of them), so
// a small free list is enough; beyond it buffers are made and dropped.
var nlBufsFree = make(chan *nftBuffers, 4)

func getNLBuffers() *nftBuffers {
	select {
	case b := <-nlBufsFree:
		return b
	default:
		return &nftBuffers{in: make([]byte, nftRecvBuf)}
	}
}

func putNLBuffers(b *nftBuffers) {
	select {
	case nlBufsFree <- b:
	default:
	}
}

// nftSession is one operation's netlink socket in the calling thread's
// network namespace, for writes and dumps alike.
type nftSession struct {
	fd  int
	seq uint32
	*nftBuffers
}

// openNFT opens the socket inside the current thread's namespace.
func openNFT() (*nftSession, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink: %w", err)
	}
	tv := unix.Timeval{Sec: nftRecvTimeout}
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open nftables netlink: set receive timeout: %w", err)
	}
	return &nftSession{fd: fd, nftBuffers: getNLBuffers()}, nil
}

func (n *nftSession) close() {
	unix.Close(n.fd)
	putNLBuffers(n.nftBuffers)
}

// nextSeq numbers the session's messages: an answer whose number is not
// the current request's (left over from an earlier one that failed) is
// skipped.
func (n *nftSession) nextSeq() uint32 {
	n.seq++
	return n.seq
}

// nlMsg is one message read from the socket; data (after the header) points
// into the session's buffer until the next read.
type nlMsg struct {
	typ   uint16
	flags uint16
	seq   uint32
	data  []byte
}

// recv reads one datagram after another and calls f for each message in
// them until f returns done or an error.
func (n *nftSession) recv(f func(m nlMsg) (done bool, err error)) error {
	for {
		got, err := unix.Read(n.fd, n.in)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			if err == unix.EAGAIN {
				return errors.New("read nftables netlink: no answer from the kernel within 10s")
			}
			return fmt.Errorf("read nftables netlink: %w", err)
		}
		if done, err := eachNLMsg(n.in[:got], f); done || err != nil {
			return err
		}
	}
}

// eachNLMsg calls f for each netlink message in the datagram b until f
// returns done or an error; a message whose length does not fit is an
// error.
func eachNLMsg(b []byte, f func(m nlMsg) (done bool, err error)) (bool, error) {
	for len(b) >= nlMsgHdrLen {
		l := int(binary.NativeEndian.Uint32(b))
		if l < nlMsgHdrLen || l > len(b) {
			return false, fmt.Errorf("read nftables netlink: malformed message of %d bytes in %d", l, len(b))
		}
		m := nlMsg{typ: binary.NativeEndian.Uint16(b[4:]), flags: binary.NativeEndian.Uint16(b[6:]),
			seq: binary.NativeEndian.Uint32(b[8:]), data: b[nlMsgHdrLen:l]}
		if done, err := f(m); done || err != nil {
			return done, err
		}
		b = b[min(nlAlign(l), len(b)):]
	}
	return false, nil
}

func nlAlign(l int) int { return (l + 3) &^ 3 }

// errnoOf is the error an NLMSG_ERROR message carries: nil for an
// acknowledgement.
func errnoOf(m nlMsg) error {
	if len(m.data) < 4 {
		return errors.New("short netlink error message")
	}
	if code := int32(binary.NativeEndian.Uint32(m.data)); code != 0 {
		return unix.Errno(-code)
	}
	return nil
}

// request sends one message (a get or a dump) and returns the answers,
// their data copied out of the read buffer. A get's error ends it; a dump
// ends at NLMSG_DONE.
func (n *nftSession) request(typ uint16, flags uint16, fam nftables.TableFamily, attrs []byte) ([]netlink.Message, error) {
	seq := n.nextSeq()
	n.batch = appendNLMsg(n.batch[:0], unix.NFNL_SUBSYS_NFTABLES<<8|typ, flags, seq, byte(fam), 0, attrs)
	if _, err := unix.Write(n.fd, n.batch); err != nil {
		return nil, fmt.Errorf("write nftables netlink: %w", err)
	}
	dump := flags&unix.NLM_F_DUMP == unix.NLM_F_DUMP
	var out []netlink.Message
	err := n.recv(func(m nlMsg) (bool, error) {
		if m.seq != seq {
			return false, nil
		}
		switch m.typ {
		case unix.NLMSG_ERROR:
			if err := errnoOf(m); err != nil {
				return true, err
			}
			return true, nil
		case unix.NLMSG_DONE:
			return true, nil
		}
		out = append(out, netlink.Message{
			Header: netlink.Header{Type: netlink.HeaderType(m.typ), Flags: netlink.HeaderFlags(m.flags), Sequence: m.seq},
			Data:   append([]byte(nil), m.data...),
		})
		return !dump, nil
	})
	return out, err
}

// appendNLMsg appends one nfnetlink message: header, nfgenmsg, attributes.
func appendNLMsg(b []byte, typ, flags uint16, seq uint32, fam byte, resID uint16, attrs []byte) []byte {
	l := nlMsgHdrLen + nfgenLen + len(attrs)
	b = binary.NativeEndian.AppendUint32(b, uint32(l))
	b = binary.NativeEndian.AppendUint16(b, typ)
	b = binary.NativeEndian.AppendUint16(b, flags)
	b = binary.NativeEndian.AppendUint32(b, seq)
	b = binary.NativeEndian.AppendUint32(b, 0)
	b = append(b, fam, unix.NFNETLINK_V0)
	b = binary.BigEndian.AppendUint16(b, resID)
	b = append(b, attrs...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// nftBatch is one transaction being marshalled: BATCH_BEGIN, the
// messages, BATCH_END. Sequence numbers are rewritten at send.
type nftBatch struct {
	b    []byte
	last int // offset of the last message added, -1 for none
	err  error
}

func newNFTBatch() *nftBatch {
	bt := &nftBatch{last: -1}
	bt.b = appendNLMsg(bt.b, unix.NFNL_MSG_BATCH_BEGIN, unix.NLM_F_REQUEST, 0, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil)
	return bt
}

func (bt *nftBatch) add(msgType uint16, flags uint16, attrs []netlink.Attribute) {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		if bt.err == nil {
			bt.err = err
		}
		return
	}
	bt.last = len(bt.b)
	bt.b = appendNLMsg(bt.b, unix.NFNL_SUBSYS_NFTABLES<<8|msgType, unix.NLM_F_REQUEST|flags, 0, byte(nftables.TableFamilyINet), 0, data)
}

var zeroU32 = []byte{0, 0, 0, 0}

// addTable adds weir's table; with excl the batch fails if it exists.
func (bt *nftBatch) addTable(excl bool) {
	flags := uint16(unix.NLM_F_CREATE)
	if excl {
		flags = unix.NLM_F_EXCL
	}
	bt.add(unix.NFT_MSG_NEWTABLE, flags, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: []byte(nftTableName + "\x00")},
		{Type: unix.NFTA_TABLE_FLAGS, Data: zeroU32},
	})
}

// delTable deletes weir's table (which must exist in the batch).
func (bt *nftBatch) delTable() {
	bt.add(unix.NFT_MSG_DELTABLE, 0, []netlink.Attribute{
		{Type: unix.NFTA_TABLE_NAME, Data: []byte(nftTableName + "\x00")},
		{Type: unix.NFTA_TABLE_FLAGS, Data: zeroU32},
	})
}

// resetTable adds "make sure the table exists, delete it, create it
// empty": a delete of a missing table would fail the batch.
func (bt *nftBatch) resetTable() {
	bt.addTable(false)
	bt.delTable()
	bt.addTable(false)
}

// addChain adds a chain; a base chain when hooked.
func (bt *nftBatch) addChain(name string, hooked bool, typ string, hook uint32, prio int32, policy uint32) {
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_CHAIN_TABLE, Data: []byte(nftTableName + "\x00")},
		{Type: unix.NFTA_CHAIN_NAME, Data: []byte(name + "\x00")},
	}
	if hooked {
		hookAttrs, err := netlink.MarshalAttributes([]netlink.Attribute{
			{Type: unix.NFTA_HOOK_HOOKNUM, Data: binary.BigEndian.AppendUint32(nil, hook)},
			{Type: unix.NFTA_HOOK_PRIORITY, Data: binary.BigEndian.AppendUint32(nil, uint32(prio))},
		})
		if err != nil && bt.err == nil {
			bt.err = err
		}
		attrs = append(attrs,
			netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_CHAIN_HOOK, Data: hookAttrs},
			netlink.Attribute{Type: unix.NFTA_CHAIN_POLICY, Data: binary.BigEndian.AppendUint32(nil, policy)},
			netlink.Attribute{Type: unix.NFTA_CHAIN_TYPE, Data: []byte(typ + "\x00")})
	}
	bt.add(unix.NFT_MSG_NEWCHAIN, unix.NLM_F_CREATE, attrs)
}

// addRule appends a rule to a chain of weir's table.
func (bt *nftBatch) addRule(chain string, exprs []expr.Any, userData []byte) {
	list := make([]netlink.Attribute, len(exprs))
	for i, e := range exprs {
		b, err := expr.Marshal(byte(nftables.TableFamilyINet), e)
		if err != nil {
			if bt.err == nil {
				bt.err = fmt.Errorf("marshal %T: %w", e, err)
			}
			return
		}
		list[i] = netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: b}
	}
	exprData, err := netlink.MarshalAttributes(list)
	if err != nil {
		if bt.err == nil {
			bt.err = err
		}
		return
	}
	attrs := []netlink.Attribute{
		{Type: unix.NFTA_RULE_TABLE, Data: []byte(nftTableName + "\x00")},
		{Type: unix.NFTA_RULE_CHAIN, Data: []byte(chain + "\x00")},
		{Type: unix.NLA_F_NESTED | unix.NFTA_RULE_EXPRESSIONS, Data: exprData},
	}
	if userData != nil {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_USERDATA, Data: userData})
	}
	bt.add(unix.NFT_MSG_NEWRULE, unix.NLM_F_CREATE|unix.NLM_F_APPEND, attrs)
}

// addChains adds chains with their rules.
func (bt *nftBatch) addChains(chains []nftChain) {
	for _, ch := range chains {
		bt.addChain(ch.name, true, string(ch.typ), uint32(ch.hook), int32(ch.prio), uint32(nftables.ChainPolicyAccept))
		for _, r := range ch.rules {
			bt.addRule(ch.name, r.exprs(), r.userData())
		}
	}
}

// finish asks for an acknowledgement of the last message and closes the
// batch; it returns the bytes to send.
func (bt *nftBatch) finish() ([]byte, error) {
	if bt.err != nil {
		return nil, bt.err
	}
	if bt.last < 0 {
		return nil, errors.New("empty nftables batch")
	}
	f := binary.NativeEndian.Uint16(bt.b[bt.last+6:])
	binary.NativeEndian.PutUint16(bt.b[bt.last+6:], f|unix.NLM_F_ACK)
	return appendNLMsg(bt.b, unix.NFNL_MSG_BATCH_END, unix.NLM_F_REQUEST, 0, unix.AF_UNSPEC, unix.NFNL_SUBSYS_NFTABLES, nil), nil
}

// send writes a finished batch and waits for the kernel's verdict: nil
// once the last message is acknowledged with no error before it. The
// messages are numbered afresh in the session's copy, so an answer left
// over from an earlier batch is never taken for this one's.
func (n *nftSession) send(batch []byte) error {
	b := append(n.batch[:0], batch...)
	n.batch = b
	var first, last uint32
	for off := 0; off+nlMsgHdrLen <= len(b); {
		l := int(binary.NativeEndian.Uint32(b[off:]))
		seq := n.nextSeq()
		binary.NativeEndian.PutUint32(b[off+8:], seq)
		typ := binary.NativeEndian.Uint16(b[off+4:])
		switch {
		case typ == unix.NFNL_MSG_BATCH_BEGIN:
			first = seq
		case typ != unix.NFNL_MSG_BATCH_END:
			last = seq
		}
		off += nlAlign(l)
	}
	if _, err := unix.Write(n.fd, b); err != nil {
		return fmt.Errorf("write nftables netlink: %w", err)
	}
	var errs []error
	err := n.recv(func(m nlMsg) (bool, error) {
		if m.typ != unix.NLMSG_ERROR || m.seq < first || m.seq > last {
			return false, nil
		}
		err := errnoOf(m)
		if err != nil {
			errs = append(errs, err)
		}
		// The batch's own header answers for a batch refused whole (a
		// failed commit); the last message's answer comes after every
		// other one.
		return m.seq == last || (m.seq == first && err != nil), nil
	})
	if err != nil {
		return err
	}
	return errors.Join(errs...)
}

// nftBatchCache holds the marshalled transaction per rule set: pods of a
// node share a handful of specs, so a pod's ADD sends bytes made once.
var nftBatchCache = struct {
	sync.Mutex
	m map[string][]byte
}{m: map[string][]byte{}}

// nftCacheMax bounds the cache; beyond it, it starts over.
const nftCacheMax = 64

// cachedBatch returns the batch build makes for key, making it on first
// use. An empty key, or nftFaultHook set (tests), caches nothing.
func cachedBatch(key string, build func(bt *nftBatch)) ([]byte, error) {
	cache := key != "" && nftFaultHook == nil
	if cache {
		nftBatchCache.Lock()
		b, ok := nftBatchCache.m[key]
		nftBatchCache.Unlock()
		if ok {
			return b, nil
		}
	}
	bt := newNFTBatch()
	build(bt)
	if nftFaultHook != nil {
		nftFaultHook(bt)
	}
	b, err := bt.finish()
	if err != nil || !cache {
		return b, err
	}
	nftBatchCache.Lock()
	if len(nftBatchCache.m) >= nftCacheMax {
		clear(nftBatchCache.m)
	}
	nftBatchCache.m[key] = b
	nftBatchCache.Unlock()
	return b, nil
}
