package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"
)

// fakeClock is an injectable clock that moves only when told.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{t: time.Now()} }

func (f *fakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.t
}

func (f *fakeClock) Advance(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

var errRefused = errors.New("connection refused (fake)")

// fakeNet "connects" to endpoints not marked down, handing out an unusable
// *net.TCPConn (no socket: the cluster never touches it), and fails the
// others; it records every address dialled. TestLoopbackListeners covers
// real sockets.
type fakeNet struct {
	mu   sync.Mutex
	down map[netip.AddrPort]bool
	log  []netip.AddrPort
}

func newFakeNet(t *testing.T) *fakeNet {
	return &fakeNet{down: map[netip.AddrPort]bool{}}
}

func (f *fakeNet) setDown(a netip.AddrPort, down bool) {
	f.mu.Lock()
	f.down[a] = down
	f.mu.Unlock()
}

func (f *fakeNet) dial(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
	f.mu.Lock()
	f.log = append(f.log, a)
	down := f.down[a]
	f.mu.Unlock()
	if down {
		return nil, fmt.Errorf("dial %s: %w", a, errRefused)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return new(net.TCPConn), nil
}

func (f *fakeNet) dialed() []netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.AddrPort(nil), f.log...)
}

func (f *fakeNet) reset() {
	f.mu.Lock()
	f.log = nil
	f.mu.Unlock()
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func eps(addrs ...string) []Endpoint {
	out := make([]Endpoint, len(addrs))
	for i, a := range addrs {
		out[i] = Endpoint{Addr: ap(a)}
	}
	return out
}

func mustNew(t *testing.T, cfg Config, e []Endpoint, opt Options) *Cluster {
	t.Helper()
	if opt.Seed == 0 {
		opt.Seed = 42
	}
	c, err := New(cfg, e, opt)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

// connect runs Connect and releases the lease at once with doneErr.
func connect(t *testing.T, c *Cluster, f *fakeNet, key uint64, doneErr error) (netip.AddrPort, error) {
	t.Helper()
	conn, l, err := c.Connect(context.Background(), key, f.dial)
	if err != nil {
		return netip.AddrPort{}, err
	}
	conn.Close()
	a := l.Endpoint()
	l.Done(doneErr)
	return a, nil
}
