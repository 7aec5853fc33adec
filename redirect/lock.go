package redirect

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// lockName is an abstract unix socket name. Abstract names belong to a
// network namespace, so binding it is a lock on that namespace that every
// process on the node sees (the plugin, the agent, an old and a new agent
// during takeover) without a shared file, and that the kernel releases when
// its holder dies. Without it two writers can both read "no jump yet" and
// both add one. A workload that binds this name itself only blocks changes
// to its own namespace, and Apply then fails closed.
const lockName = "@weir-redirect-lock"

// lockWait bounds how long Apply, Verify and Remove wait for another weir
// writer to finish with the same namespace.
const lockWait = 60 * time.Second

// lockNetns takes the namespace lock. It must run on the thread that is in
// the pod namespace. The returned function releases it.
func lockNetns() (func(), error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock netns: socket: %w", err)
	}
	deadline := time.Now().Add(lockWait)
	pause := time.Millisecond
	for {
		err := unix.Bind(fd, &unix.SockaddrUnix{Name: lockName})
		if err == nil {
			return func() { unix.Close(fd) }, nil
		}
		if !errors.Is(err, unix.EADDRINUSE) || time.Now().After(deadline) {
			unix.Close(fd)
			return nil, fmt.Errorf("lock netns (abstract socket %s): %w", lockName, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, 20*time.Millisecond)
	}
}
