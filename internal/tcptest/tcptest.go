// Package tcptest holds TCP helpers that tests of several packages share.
package tcptest

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// SendUrgent sends b on c with MSG_OOB: its last byte becomes TCP urgent
// data, a mark a read stops short at and splice cannot pass, which relays
// must step over.
func SendUrgent(c *net.TCPConn, b []byte) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, unix.MSG_OOB, nil)
		return true
	}); err != nil {
		return err
	}
	if serr != nil {
		return fmt.Errorf("send urgent data: %w", serr)
	}
	return nil
}
