// Package steer is the reuseport steering program of weir's hot standby: a
// classic BPF program attached to an SO_REUSEPORT group with
// SO_ATTACH_REUSEPORT_CBPF that sends every new connection to the group's
// first socket.
//
// Why the first socket is the primary agent's, and stays so:
//   - the primary opens a pod's listeners when it captures the pod, before it
//     writes the pod's state file; the standby opens its own only after
//     reading that file, so it joins the group second;
//   - when a socket leaves a group (close, or the process dies) the kernel
//     moves the group's last socket into the hole (reuseport_detach_sock, and
//     since 5.14 reuseport_stop_listen_sock for tcp_migrate_req), so with the
//     primary gone the standby becomes the first socket at once, and the
//     program steers to it with no change;
//   - a successor joining during a takeover comes third and moves into the
//     primary's slot when the primary closes.
//
// A program index at or beyond the group's size makes the kernel fall back to
// its hash, so a group of one socket needs no special case.
//
// Requirements: Linux 4.5 (SO_ATTACH_REUSEPORT_CBPF on TCP). No maps, no
// pins, no BTF: classic BPF is accepted by every kernel that has reuseport
// groups, and the program carries no state that must outlive a process.
// MPTCP sockets do not take the option: attach it to plain TCP listeners.
package steer

import (
	"fmt"
	"syscall"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// program is "return 0": select the group's socket at index 0.
var program = mustAssemble([]bpf.Instruction{bpf.RetConstant{Val: 0}})

func mustAssemble(insns []bpf.Instruction) []unix.SockFilter {
	raw, err := bpf.Assemble(insns)
	if err != nil {
		panic(fmt.Sprintf("steer: assemble: %v", err))
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out
}

// ToFirst attaches the program to the SO_REUSEPORT group of a listening
// socket, replacing any program the group had. The socket must be bound
// and listening (attaching before that would give it a group of its own
// that listen() then drops).
func ToFirst(c syscall.Conn) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("steer: raw socket: %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(program)), Filter: &program[0]}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_REUSEPORT_CBPF, &prog)
	}); err != nil {
		return fmt.Errorf("steer: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("steer: attach SO_ATTACH_REUSEPORT_CBPF: %w", serr)
	}
	return nil
}
