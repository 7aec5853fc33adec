package netns

import (
	"fmt"
	"runtime"
	"sync"
	"syscall"
)

// Spare sockets. A socket belongs to the namespace it was made in for its
// whole life, and only its making needs the thread to be there: options,
// bind and connect work on it from anywhere. So ConnectOnThread takes the
// upstream sockets it needs without a source address from a small stock
// per namespace and family, made spareBatch at a time in one visit (two
// setns calls for spareBatch sockets instead of two each). setns was
// about 1.5 % of the agent's CPU per new L4 connection on the event loops
// (docs/benchmarks.md, "L4 cost, seventh pass").
//
// The stock is at most spareBatch-1 sockets per family and namespace,
// unbound and unconnected; Close closes it with the handle.

// spareBatch is how many sockets one visit to the namespace makes.
const spareBatch = 8

// spares is a Handle's stock, per family (0: IPv4, 1: IPv6).
type spares struct {
	mu     sync.Mutex
	fds    [2][]int
	closed bool
}

// take returns a spare socket of the family, or -1 if there is none.
func (s *spares) take(v6 bool) int {
	i := famIndex(v6)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.fds[i])
	if n == 0 {
		return -1
	}
	fd := s.fds[i][n-1]
	s.fds[i] = s.fds[i][:n-1]
	return fd
}

// put adds fds to the stock, up to spareBatch-1, and closes the rest (two
// loops that found the stock empty at once made a batch each), or all of
// them once the handle is closed.
func (s *spares) put(v6 bool, fds []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := famIndex(v6)
	keep := 0
	if !s.closed {
		keep = max(0, min(len(fds), spareBatch-1-len(s.fds[i])))
		s.fds[i] = append(s.fds[i], fds[:keep]...)
	}
	for _, fd := range fds[keep:] {
		syscall.Close(fd)
	}
}

// close closes the stock; later puts close what they are given.
func (s *spares) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for i := range s.fds {
		for _, fd := range s.fds[i] {
			syscall.Close(fd)
		}
		s.fds[i] = nil
	}
}

// count is how many spares of the family are in stock (for tests).
func (s *spares) count(v6 bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.fds[famIndex(v6)])
}

func famIndex(v6 bool) int {
	if v6 {
		return 1
	}
	return 0
}

// spareSocket returns a non-blocking socket of the family made in the
// namespace: from the stock, or from a new batch of spareBatch made on
// this thread (the rest go to the stock). Errors wrap ErrStranded as
// ConnectOnThread's do.
func (h *Handle) spareSocket(v6 bool) (int, error) {
	if fd := h.spares.take(v6); fd >= 0 {
		return fd, nil
	}
	host, err := Host()
	if err != nil {
		return -1, err
	}
	family := syscall.AF_INET
	if v6 {
		family = syscall.AF_INET6
	}
	var batch [spareBatch]int
	n := 0
	runtime.LockOSThread()
	if err := h.enter(); err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	var serr error
	for n < spareBatch {
		fd, _, e := syscall.RawSyscall(syscall.SYS_SOCKET, uintptr(family), syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
		if e != 0 {
			serr = fmt.Errorf("socket: %w", e)
			break
		}
		batch[n] = int(fd)
		n++
	}
	if err := rawSetns(host.fd); err != nil {
		for _, fd := range batch[:n] {
			syscall.Close(fd)
		}
		return -1, fmt.Errorf("return from netns %s: %w: %w", h.path, ErrStranded, err)
	}
	runtime.UnlockOSThread()
	if n == 0 {
		return -1, serr
	}
	h.spares.put(v6, batch[1:n])
	return batch[0], nil
}
