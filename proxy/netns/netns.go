// Package netns makes sockets inside another network namespace without moving
// the rest of the process there.
//
// Only socket() depends on the calling thread's network namespace: once a
// socket exists, bind, listen, accept, connect and I/O work from any goroutine
// on any thread. So a Handle switches a locked OS thread into the namespace for
// the duration of socket creation only, and switches it back; if switching back
// fails the thread is left locked and dies with its goroutine rather than being
// reused in the wrong namespace.
//
// A namespace is identified by (device, inode), never by its path: paths are
// reused, bind mounts move, /proc/self/fd/N differs per opener. Open refuses
// anything that is not a network namespace (it needs Linux 4.11 or later for
// NS_GET_NSTYPE).
package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// ID identifies a network namespace independent of the path it was opened by.
type ID struct {
	Dev uint64
	Ino uint64
}

func (id ID) String() string { return fmt.Sprintf("%d:%d", id.Dev, id.Ino) }

// Handle is an open network namespace. It keeps the namespace alive until Close.
type Handle struct {
	f    *os.File
	fd   int // f's descriptor, read once
	id   ID
	path string

	// use guards fd while a thread enters the namespace by it (enter holds
	// it shared) against Close (exclusive): a connect racing the pod's
	// removal must not setns by a number the kernel has given to another
	// pod's namespace meanwhile.
	use    sync.RWMutex
	closed bool

	unanswered unanswered // conntrack.go
	spares     spares     // spare.go
}

var (
	hostOnce sync.Once
	hostNS   *Handle
	hostErr  error
)

// Host returns the namespace the process started in, where threads return to.
func Host() (*Handle, error) {
	hostOnce.Do(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		hostNS, hostErr = Open("/proc/thread-self/ns/net")
	})
	return hostNS, hostErr
}

// Open opens the network namespace at path (a bind mount such as
// /run/netns/NAME, or /proc/PID/ns/net). Anything else is refused with a
// *NotNetnsError before it can be entered: a regular file, a directory, a
// device (never opened: opening some has side effects), and a namespace of
// another type (a mount namespace passes the filesystem test and would only
// fail later, with EINVAL from setns).
func Open(path string) (*Handle, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nil, fmt.Errorf("stat netns %s: %w", path, err)
	}
	// nsfs inodes look like empty regular files.
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, &NotNetnsError{Path: path, Is: fileKind(st.Mode)}
	}
	// O_NONBLOCK: should the path turn into a FIFO after the stat, the open
	// must not hang the caller.
	f, err := os.OpenFile(path, os.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	id, err := inspect(f, path)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Handle{f: f, fd: int(f.Fd()), id: id, path: path}, nil
}

// Inspect returns the identity of the network namespace at path, refusing
// (with a *NotNetnsError) anything that is not one, without keeping it open.
// Unlike IDOf it proves the path is a network namespace.
func Inspect(path string) (ID, error) {
	h, err := Open(path)
	if err != nil {
		return ID{}, err
	}
	defer h.Close()
	return h.ID(), nil
}

// inspect checks that the open file f is a network namespace and returns
// its identity: it must live on nsfs (NSFS_MAGIC) and the kernel must call
// it a network namespace (NS_GET_NSTYPE, Linux 4.11 or later).
func inspect(f *os.File, path string) (ID, error) {
	fd := int(f.Fd())
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return ID{}, fmt.Errorf("statfs netns %s: %w", path, err)
	}
	if fs.Type != unix.NSFS_MAGIC {
		return ID{}, &NotNetnsError{Path: path, Is: "a file that is no namespace"}
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil {
		return ID{}, &NotNetnsError{Path: path, Is: "a namespace of unknown type (NS_GET_NSTYPE: " + err.Error() + ")"}
	}
	if typ != unix.CLONE_NEWNET {
		return ID{}, &NotNetnsError{Path: path, Is: nsKind(typ)}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return ID{}, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return ID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// NotNetnsError says a path given as a network namespace is something else.
type NotNetnsError struct {
	Path string
	// Is says what the path is instead ("a mount namespace", "a directory").
	Is string
}

func (e *NotNetnsError) Error() string {
	return fmt.Sprintf("%s is not a network namespace: it is %s", e.Path, e.Is)
}

// fileKind names a file type that cannot be a namespace.
func fileKind(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return "a directory"
	case unix.S_IFCHR, unix.S_IFBLK:
		return "a device"
	case unix.S_IFIFO:
		return "a FIFO"
	case unix.S_IFSOCK:
		return "a socket"
	}
	return "not a regular file"
}

// nsKind names a namespace type NS_GET_NSTYPE returned.
func nsKind(typ int) string {
	switch typ {
	case unix.CLONE_NEWNS:
		return "a mount namespace"
	case unix.CLONE_NEWUTS:
		return "a UTS namespace"
	case unix.CLONE_NEWIPC:
		return "an IPC namespace"
	case unix.CLONE_NEWUSER:
		return "a user namespace"
	case unix.CLONE_NEWPID:
		return "a PID namespace"
	case unix.CLONE_NEWCGROUP:
		return "a cgroup namespace"
	case unix.CLONE_NEWTIME:
		return "a time namespace"
	}
	return fmt.Sprintf("a namespace of type %#x", typ)
}

// IDOf returns the identity of the file at path without opening it: cheap,
// for telling whether a namespace already vetted by Open or Inspect is still
// the one at its path. It does not check that path is a network namespace.
func IDOf(path string) (ID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return ID{}, fmt.Errorf("stat netns %s: %w", path, err)
	}
	return ID{Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// ID is the namespace's identity.
func (h *Handle) ID() ID { return h.id }

// Path is the path the namespace was opened by (for logs).
func (h *Handle) Path() string { return h.path }

// FdPath is a path that opens this very namespace for as long as the handle is
// open, even after its bind mount is gone (for tools that want a path).
func (h *Handle) FdPath() string { return fmt.Sprintf("/proc/%d/fd/%d", os.Getpid(), h.fd) }

// Close releases the namespace; it may be destroyed once nothing else holds it.
// A thread entering it meanwhile is waited for; later visits fail with
// ErrClosed.
func (h *Handle) Close() error {
	h.use.Lock()
	defer h.use.Unlock()
	if h.closed {
		return fmt.Errorf("close netns %s: %w", h.path, ErrClosed)
	}
	h.closed = true
	h.spares.close()
	return h.f.Close()
}

// ErrClosed is what using a Handle after its Close returns.
var ErrClosed = errors.New("namespace handle closed")

// enter switches the calling thread, locked to its goroutine, into the
// namespace (raw setns, raw.go). Once there the thread holds the
// namespace itself: the handle is needed for the switch alone.
func (h *Handle) enter() error {
	h.use.RLock()
	defer h.use.RUnlock()
	if h.closed {
		return fmt.Errorf("enter netns %s: %w", h.path, ErrClosed)
	}
	if err := rawSetns(h.fd); err != nil {
		return fmt.Errorf("enter netns %s: %w", h.path, err)
	}
	return nil
}

// Do runs f on an OS thread switched into the namespace. f must be short and
// must not start goroutines that expect to inherit the namespace.
func (h *Handle) Do(f func() error) error {
	host, err := Host()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := h.enter(); err != nil {
			runtime.UnlockOSThread()
			errc <- err
			return
		}
		ferr := f()
		if err := unix.Setns(host.fd, unix.CLONE_NEWNET); err != nil {
			// Leave the thread locked: it exits with this goroutine instead of
			// serving other goroutines in the pod's namespace.
			errc <- fmt.Errorf("return from netns %s: %w", h.path, err)
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// SocketOptions are set on a socket before it binds or connects.
type SocketOptions struct {
	// Mark is SO_MARK; 0 leaves it unset.
	Mark uint32
	// ReusePort sets SO_REUSEPORT so a successor process can join a listener.
	ReusePort bool
	// Transparent sets IP_TRANSPARENT / IPV6_TRANSPARENT (TPROXY listeners,
	// and upstream sockets bound to a foreign source address).
	Transparent bool
	// NoMPTCP makes a listener plain TCP (Go listens with MPTCP by default
	// where the kernel has it): eBPF capture puts inbound listeners in a
	// sockhash, which takes no MPTCP socket.
	NoMPTCP bool
	// BeforeConnect, when set, runs on a dialled socket after its options
	// and before connect (eBPF capture tags it with the client's address).
	BeforeConnect func(fd int) error
	// AvoidPort is a source port Dial with a source address must not take
	// (0: none): a TPROXY inbound connect gives the client's own port, which
	// would make the upstream socket the accepted one's mirror (bind.go).
	AvoidPort uint16
}

func (o SocketOptions) apply(fd int, v6 bool) error {
	if o.Mark != 0 {
		if err := rawSetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(o.Mark)); err != nil {
			return fmt.Errorf("set SO_MARK: %w", err)
		}
	}
	if o.ReusePort {
		if err := rawSetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("set SO_REUSEPORT: %w", err)
		}
	}
	if o.Transparent {
		if v6 {
			if err := rawSetsockoptInt(fd, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
				return fmt.Errorf("set IPV6_TRANSPARENT: %w", err)
			}
		} else if err := rawSetsockoptInt(fd, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil {
			return fmt.Errorf("set IP_TRANSPARENT: %w", err)
		}
	}
	if o.BeforeConnect != nil {
		return o.BeforeConnect(fd)
	}
	return nil
}

// Listen opens a TCP listener on addr inside the namespace.
func (h *Handle) Listen(addr netip.AddrPort, opts SocketOptions) (*net.TCPListener, error) {
	network := "tcp4"
	if addr.Addr().Is6() {
		network = "tcp6" // Go sets IPV6_V6ONLY for tcp6, so v4 and v6 listeners coexist.
	}
	lc := net.ListenConfig{
		// No keep-alive on accepted connections: the client's own settings
		// apply end to end, and it costs syscalls on every accept.
		KeepAlive: -1,
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) { serr = opts.apply(int(fd), addr.Addr().Is6()) }); err != nil {
				return err
			}
			return serr
		},
	}
	if opts.NoMPTCP {
		lc.SetMultipathTCP(false)
	}
	var ln net.Listener
	err := h.Do(func() error {
		var err error
		ln, err = lc.Listen(context.Background(), network, addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in netns %s: %w", addr, h.path, err)
	}
	return ln.(*net.TCPListener), nil
}

// Dial connects to addr from a socket made inside the namespace, so the
// connection leaves with the namespace's routes and source address. The
// calling goroutine's thread enters the namespace for socket() only: the
// dialer's Control hook, which runs right after socket() and before bind and
// connect, sets the socket options and switches the thread back, so the
// connect waits on Go's poller like any other and holds no thread (the hook
// also starts the connect, connect.go, so it usually has finished by the
// time Go's own connect call looks). src, when
// valid, is bound first by the hook too, on a port the kernel picks other
// than opts.AvoidPort: transparent connects on behalf of a foreign client. TCP keep-alive is left off: the endpoints' own settings
// apply, and it saves a handful of syscalls per connection.
func (h *Handle) Dial(ctx context.Context, addr netip.AddrPort, src netip.Addr, opts SocketOptions) (*net.TCPConn, error) {
	host, err := Host()
	if err != nil {
		return nil, err
	}
	v6 := addr.Addr().Is6() && !addr.Addr().Is4In6()
	network := "tcp4"
	if v6 {
		network = "tcp6"
	}
	// One allocation carries the hook's state (a closure would move each
	// variable it writes to the heap on its own).
	k := &dialHook{h: h, host: host, opts: opts, v6: v6, addr: addr, src: src}
	d := net.Dialer{KeepAlive: -1, ControlContext: k.control}
	runtime.LockOSThread()
	if err := h.enter(); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	c, err := d.DialContext(ctx, network, addr.String())
	if !k.returned {
		// socket() failed before the hook ran, or the hook could not switch
		// back. A thread that cannot leave the pod's namespace stays locked
		// and dies with this goroutine instead of serving others there.
		if serr := rawSetns(host.fd); serr != nil {
			if c != nil {
				c.Close()
			}
			return nil, fmt.Errorf("return from netns %s: %w", h.path, serr)
		}
		runtime.UnlockOSThread()
	}
	if err != nil {
		h.ConnectFailed(addr, err)
		return nil, fmt.Errorf("connect %s in netns %s: %w", addr, h.path, err)
	}
	return c.(*net.TCPConn), nil
}

// dialHook is Dial's Control hook: it runs right after socket(), sets the
// options and switches the calling thread back to the host namespace.
type dialHook struct {
	h, host *Handle
	opts    SocketOptions
	v6      bool
	addr    netip.AddrPort
	// src, when valid, is bound by the hook before it starts the connect
	// (connect.go); Go's dialer binds nothing.
	src      netip.Addr
	returned bool // the thread is back in the host namespace and unlocked
	serr     error
}

func (k *dialHook) control(_ context.Context, _, _ string, c syscall.RawConn) error {
	if err := c.Control(k.apply); err != nil {
		k.serr = err
	}
	if err := rawSetns(k.host.fd); err != nil {
		return fmt.Errorf("return from netns %s: %w", k.h.path, err)
	}
	k.returned = true
	runtime.UnlockOSThread()
	return k.serr
}

func (k *dialHook) apply(fd uintptr) {
	k.serr = k.opts.apply(int(fd), k.v6)
	if k.serr == nil && k.src.IsValid() {
		k.serr = bindSource(int(fd), k.src, k.opts.AvoidPort, k.v6, k.opts)
	}
	if k.serr == nil {
		k.serr = startConnect(int(fd), k.addr, k.v6)
	}
}

// Fd is the open namespace's file descriptor, valid until Close.
func (h *Handle) Fd() int { return h.fd }
