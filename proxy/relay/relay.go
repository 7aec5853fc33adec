// Package relay copies bytes both ways between two TCP connections until both
// directions are done.
//
// Both sides are kept as unwrapped *net.TCPConn so that io.Copy reaches
// (*net.TCPConn).ReadFrom and the kernel splices through a pipe instead of
// copying through user space; byte counts come from io.Copy's return values
// for the same reason (a counting wrapper would disable splice).
package relay

import (
	"context"
	"io"
	"net"
	"sync"
)

// Result is what one relayed connection moved.
type Result struct {
	// Up is bytes from the downstream (client) side to the upstream side,
	// Down the reverse.
	Up, Down int64
	// UpErr and DownErr are the copy errors of each direction (nil at clean EOF).
	UpErr, DownErr error
}

// Err is the first error of either direction.
func (r Result) Err() error {
	if r.UpErr != nil {
		return r.UpErr
	}
	return r.DownErr
}

// Relay copies client→upstream and upstream→client. When one side finishes
// sending (EOF), the other side's write half is closed so half-closed
// protocols still get their answers. When a direction fails, both
// connections are closed so the other direction ends too. When ctx ends, both
// are closed. Relay returns after both directions ended; it closes neither
// connection on a clean finish (the caller does).
func Relay(ctx context.Context, client, upstream *net.TCPConn) Result {
	var (
		res  Result
		wg   sync.WaitGroup
		once sync.Once
	)
	abort := func() {
		once.Do(func() {
			client.Close()
			upstream.Close()
		})
	}
	stop := context.AfterFunc(ctx, abort)
	defer stop()
	wg.Add(1)
	go func() {
		defer wg.Done()
		res.Down, res.DownErr = copyHalf{dst: client, src: upstream}.run(abort)
	}()
	res.Up, res.UpErr = copyHalf{dst: upstream, src: client}.run(abort)
	wg.Wait()
	return res
}

// copyHalf is one direction of a relay, a named type so goroutine stacks say
// what they are doing.
type copyHalf struct {
	dst, src *net.TCPConn
}

func (c copyHalf) run(abort func()) (int64, error) {
	n, err := io.Copy(c.dst, c.src)
	if err != nil {
		abort()
		return n, err
	}
	// The source sent FIN: pass it on, keep reading the other direction.
	if cerr := c.dst.CloseWrite(); cerr != nil {
		abort()
		return n, nil
	}
	return n, nil
}
