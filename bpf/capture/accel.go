package capture

// Acceleration of local pairs: the sockops program puts both sockets of a
// pair the agent takes part in inside one pod netns (a captured app's
// socket and the agent's outbound listener's accepted socket; the agent's
// inbound upstream socket and the app's accepted socket) into the accel
// sockhash, and the sk_msg program attached to that sockhash hands what
// one of them sends straight to the other's receive queue. The bytes skip
// TCP/IP, netfilter and the loopback device.
//
// What a reader must know: bytes redirected into a socket sit in its
// sockmap queue, which recvmsg reads and splice does not. An accelerated
// socket must therefore be read with read/recvmsg, never spliced from
// (Accelerated tells the relay which ones). A send is redirected only while
// the peer has read everything that went through TCP (order) and its
// sockmap queue holds less than its receive buffer (flow control: the
// kernel itself bounds that queue only by the machine's TCP memory);
// otherwise it takes the normal path. See peer_ready in capture.c.

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/weir-mesh/weir/bpf/kbtf"
	"golang.org/x/sys/unix"
)

// setAccel turns the acceleration on or off for new connections and
// attaches the sk_msg program to the accel sockhash (the attachment
// belongs to the pinned map, so it outlives the agent; attaching again
// replaces the older agent's program). Pairs accelerated already stay so
// until they close.
//
// node adds the same-node pairs: the agent's upstream socket and a server
// socket in another pod netns of this node (accel_conf bit 2; it needs on).
func (o *Objects) setAccel(on, node bool) error {
	if on {
		if err := AccelSupport(); err != nil {
			// The capture itself does not need it: run without.
			o.accelErr, on = err, false
		}
	}
	v := uint32(0)
	if on {
		v = accelConfOn
		if node {
			v |= accelConfNode
		}
	}
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: o.objs.Accel.FD(), Program: o.objs.WeirSkMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attach sk_msg program to the accel sockhash: %w", err)
	}
	if err := o.objs.AccelConf.Put(uint32(0), v); err != nil {
		return fmt.Errorf("switch acceleration to %v: %w", on, err)
	}
	o.accel = on
	o.accelNode = on && node
	return nil
}

// accel_conf[0]'s bits, as capture.c reads them.
const (
	accelConfOn   = 1 // pairs inside a pod
	accelConfNode = 2 // the agent's upstream and a server in another pod netns of the node
)

// AcceleratingNode reports whether Load turned on the same-node pairs.
func (o *Objects) AcceleratingNode() bool { return o.accelNode }

// Accelerating reports whether Load turned the acceleration on.
func (o *Objects) Accelerating() bool { return o.accel }

// AccelError says why Load left the acceleration off although asked to
// turn it on (the kernel lacks what AccelSupport checks), or nil.
func (o *Objects) AccelError() error { return o.accelErr }

// AccelSupport reports what the running kernel lacks for the acceleration,
// naming it, or nil. The sk_msg program reads, through bpf_rdonly_cast
// (Linux 6.2) and CO-RE, the peer's sockmap queue length (sk_psock's
// msg_tot_len) and receive buffer and both ends' TCP sequence numbers: its
// flow control and ordering rule (capture.c, peer_ready) need them, and
// without them it never redirects.
func AccelSupport() error {
	if err := kbtf.RequireRdonlyCast(
		kbtf.Struct{Name: "sk_psock", Fields: []string{"msg_tot_len"}},
		kbtf.Struct{Name: "sk_msg", Fields: []string{"sk", "sk_redir"}},
		kbtf.Struct{Name: "tcp_sock", Fields: []string{"copied_seq", "write_seq"}},
		kbtf.Struct{Name: "sock", Fields: []string{"sk_rcvbuf", "sk_user_data"}},
	); err != nil {
		return fmt.Errorf("%w: acceleration: %v", ErrUnsupported, err)
	}
	return nil
}

// Accelerated reports whether the TCP socket fd is in the accel sockhash:
// its peer may hand it bytes through the sockmap queue, so it must not be
// spliced from. An error (the socket is closed, the lookup failed) reports
// true: not splicing costs a copy, splicing an accelerated socket hangs.
func (o *Objects) Accelerated(fd int) bool {
	if !o.accel {
		return false
	}
	k, err := sockKeyOf(fd)
	if err != nil {
		return true
	}
	return o.inAccel(k)
}

// inAccel looks the socket with key k up in the accel sockhash: under its
// own netns, then, with same-node pairs on, under netns 0 (where the
// sockets of same-node pairs sit).
func (o *Objects) inAccel(k captureSockKey) bool {
	var v uint64
	err := o.objs.Accel.Lookup(&k, &v)
	if !errors.Is(err, ebpf.ErrKeyNotExist) || !o.accelNode {
		return !errors.Is(err, ebpf.ErrKeyNotExist)
	}
	k.Netns = 0
	err = o.objs.Accel.Lookup(&k, &v)
	return !errors.Is(err, ebpf.ErrKeyNotExist)
}

// AcceleratedConn is Accelerated for a socket whose addresses the caller
// already holds (Go keeps a connection's addresses from its accept or
// connect): one getsockopt and one map lookup instead of four system
// calls, on every relayed connection of an eBPF node.
func (o *Objects) AcceleratedConn(fd int, local, remote netip.AddrPort) bool {
	if !o.accel {
		return false
	}
	cookie, err := NetnsCookieOf(fd)
	if err != nil {
		return true
	}
	return o.inAccel(sockKey(cookie, local, remote))
}

// sockKeyOf is the accel key of a connected socket, as the programs build it.
func sockKeyOf(fd int) (captureSockKey, error) {
	cookie, err := NetnsCookieOf(fd)
	if err != nil {
		return captureSockKey{}, err
	}
	local, err := sockAddr(unix.Getsockname(fd))
	if err != nil {
		return captureSockKey{}, fmt.Errorf("getsockname: %w", err)
	}
	remote, err := sockAddr(unix.Getpeername(fd))
	if err != nil {
		return captureSockKey{}, fmt.Errorf("getpeername: %w", err)
	}
	return sockKey(cookie, local, remote), nil
}

// sockKey is the accel key of the socket with these addresses in the
// namespace with this cookie.
func sockKey(cookie uint64, local, remote netip.AddrPort) captureSockKey {
	return captureSockKey{
		Netns: cookie, Local: addrKey(local.Addr()), Remote: addrKey(remote.Addr()),
		Lport: local.Port(), Rport: remote.Port(),
	}
}

func sockAddr(sa unix.Sockaddr, err error) (netip.AddrPort, error) {
	if err != nil {
		return netip.AddrPort{}, err
	}
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), nil
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)), nil
	}
	return netip.AddrPort{}, fmt.Errorf("not an IP socket address: %T", sa)
}

// accelNames name the acceleration counters, in capture.c's order.
var accelNames = []string{
	"sockets", "msgs", "bytes", "no_peer", "peer_full", "unread", "insert_failed",
}

// AccelStats sums the acceleration's per-CPU counters by name: sockets put
// in the sockhash, sendmsg calls redirected and their bytes, first sends
// that found no peer, sends whose peer had closed, decisions lost for want
// of socket storage, inserts the full sockhash refused.
//
// The same-node pairs add node_sockets (sockets of such pairs put in the
// sockhash) and node_no_peer (agent upstream sockets whose server is not on
// this node, left out).
func (o *Objects) AccelStats() (map[string]uint64, error) {
	out, err := sumPerCPU(o.objs.AccelStats, accelNames)
	if err != nil {
		return nil, err
	}
	node, err := sumPerCPU(o.objs.AccelNodeStats, accelNodeNames)
	if err != nil {
		return nil, err
	}
	for k, v := range node {
		out[k] = v
	}
	return out, nil
}

// accelNodeNames name the same-node pair counters, in capture.c's order.
var accelNodeNames = []string{"node_sockets", "node_no_peer"}
