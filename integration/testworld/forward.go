package testworld

import (
	"errors"
	"io"
	"net"
)

// Forward makes target, an address in the test's own (root) namespace such
// as a test API server on 127.0.0.1, reachable from inside the node netns at
// the returned 127.0.0.1:port. The relay runs in the test process, so
// nothing is attached to the root namespace; it stops at cleanup.
func (n *Node) Forward(t T, target string) string {
	t.Helper()
	ln := n.Listen(t, "127.0.0.1:0")
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			go func() {
				defer c.Close()
				up, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer up.Close()
				done := make(chan struct{})
				go func() { io.Copy(up, c); up.(*net.TCPConn).CloseWrite(); close(done) }()
				io.Copy(c, up)
				c.(*net.TCPConn).CloseWrite()
				<-done
			}()
		}
	}()
	return ln.Addr().String()
}
