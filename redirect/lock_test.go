package redirect

import (
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// TestLockSerialises holds the namespace lock the way another process would
// (a socket bound to the abstract name inside the pod netns) and checks
// Apply waits for it instead of writing alongside.
func TestLockSerialises(t *testing.T) {
	requireBackend(t, BackendNFT)
	n := newNS(t)
	var fd int
	err := n.Do(func(ns.NetNS) error {
		var err error
		fd, err = unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrUnix{Name: lockName})
	})
	if err != nil {
		t.Fatalf("hold lock: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- Apply(n.Path(), Spec{IPv4: true, Backend: BackendNFT}) }()
	select {
	case err := <-done:
		unix.Close(fd)
		t.Fatalf("Apply returned (%v) while another holder had the lock", err)
	case <-time.After(300 * time.Millisecond):
	}
	if rs := weirOf(t, n, BackendNFT, ipv4); !rs.empty() {
		t.Fatalf("rules written while the lock was held:\n%s", render(rs))
	}
	unix.Close(fd)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(ioTimeout):
		t.Fatal("Apply still waiting after the lock was released")
	}
	// The lock is per namespace: another netns is not blocked by this one.
	if err := Verify(n.Path(), Spec{IPv4: true, Backend: BackendNFT}); err != nil {
		t.Error(err)
	}
}
