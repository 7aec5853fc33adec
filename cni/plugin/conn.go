package plugin

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// agentConn is the plugin's connection to the agent: a plain blocking unix
// socket whose every send and receive waits at most until the call's
// deadline.
//
// Why not package net: a net.Conn goes through the runtime's network
// poller, which a process that makes one call in its life pays for in full
// at its first dial (an epoll instance, an eventfd, the socket's
// registration) and then in goroutine parks and wakeups for each wait,
// while the runtime container waits for it. A blocking socket waits in the
// kernel, in the one system call.
type agentConn struct {
	fd       int
	deadline time.Time // zero: none
}

// errTimeout is what a send or receive that hit the deadline returns.
var errTimeout = errors.New("i/o timeout")

// dialAgent connects to the unix socket at path; with a positive timeout,
// the connect and everything after it must be done within it.
func dialAgent(path string, timeout time.Duration) (*agentConn, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, os.NewSyscallError("socket", err)
	}
	c := &agentConn{fd: fd}
	if timeout > 0 {
		c.deadline = time.Now().Add(timeout)
	}
	if err := c.setTimeout(unix.SO_SNDTIMEO); err != nil {
		c.Close()
		return nil, err
	}
	sa := &unix.SockaddrUnix{Name: path}
	for {
		err = unix.Connect(fd, sa)
		if err != unix.EINTR {
			break
		}
		// A signal (the runtime's own, for preemption) cut the wait
		// short: the kernel may have connected meanwhile.
		if err = c.setTimeout(unix.SO_SNDTIMEO); err != nil {
			break
		}
	}
	switch {
	case err == nil || err == unix.EISCONN:
		return c, nil
	case err == unix.EAGAIN:
		// A unix socket's connect waits only for room in a full backlog;
		// EAGAIN is its send timeout running out.
		err = errTimeout
	}
	c.Close()
	return nil, &os.SyscallError{Syscall: "connect " + path, Err: err}
}

// setTimeout sets the socket's send or receive timeout (opt) to what is
// left before the deadline, failing once nothing is left.
func (c *agentConn) setTimeout(opt int) error {
	if c.deadline.IsZero() {
		return nil
	}
	left := time.Until(c.deadline)
	if left <= 0 {
		return errTimeout
	}
	// The kernel reads a zero timeout as none: wait at least 1µs.
	tv := unix.NsecToTimeval(max(left, time.Microsecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, opt, &tv); err != nil {
		return os.NewSyscallError("setsockopt", err)
	}
	return nil
}

// Write writes all of b, or fails.
func (c *agentConn) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		if err := c.setTimeout(unix.SO_SNDTIMEO); err != nil {
			return n, err
		}
		w, err := unix.Write(c.fd, b[n:])
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return n, errTimeout
		case err != nil:
			return n, os.NewSyscallError("write", err)
		}
		n += w
	}
	return n, nil
}

// Read reads what is there, waiting until the deadline for something;
// 0 bytes is the end of the answer.
func (c *agentConn) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	for {
		if err := c.setTimeout(unix.SO_RCVTIMEO); err != nil {
			return 0, err
		}
		n, err := unix.Read(c.fd, b)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return 0, errTimeout
		case err != nil:
			return 0, os.NewSyscallError("read", err)
		case n == 0:
			return 0, io.EOF
		}
		return n, nil
	}
}

// Close closes the socket.
func (c *agentConn) Close() error {
	if c.fd < 0 {
		return nil
	}
	err := unix.Close(c.fd)
	c.fd = -1
	if err != nil {
		return fmt.Errorf("close agent socket: %w", err)
	}
	return nil
}
