package bench

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestEpollRelay runs the go-epoll peer on loopback in front of an echo
// server, with and without -hold, and with -weir-calls: 16 MiB echoed byte-exact while the
// client still writes (the relay holds bytes back when a side is full),
// a half-close that still gets the rest of the answer, and 300 short
// connections.
func TestEpollRelay(t *testing.T) {
	for _, flags := range [][]string{{"-hold=false"}, {"-hold=true"}, {"-hold=true", "-weir-calls"}} {
		t.Run(strings.Join(flags, " "), func(t *testing.T) {
			echo, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer echo.Close()
			go serveEcho(echo)
			port := freePort(t)
			exe, args, err := helperCommand("epoll-relay", append(flags, "-pair", fmt.Sprintf("127.0.0.1:%d=%s", port, echo.Addr()))...)
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(exe, args...)
			cmd.Stderr = os.Stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			defer func() { cmd.Process.Kill(); cmd.Wait() }()
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			deadline := time.Now().Add(5 * time.Second)
			for {
				c, err := net.Dial("tcp", addr)
				if err == nil {
					c.Close()
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the relay never listened on %s: %v", addr, err)
				}
				time.Sleep(20 * time.Millisecond)
			}

			// Bulk, both ways at once.
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(30 * time.Second))
			data := make([]byte, 16<<20)
			rand.Read(data)
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				c.Write(data)
				c.(*net.TCPConn).CloseWrite()
			}()
			got, err := io.ReadAll(c)
			wg.Wait()
			c.Close()
			if err != nil || sha256.Sum256(got) != sha256.Sum256(data) {
				t.Fatalf("16 MiB echo: %d bytes back (want %d), err %v", len(got), len(data), err)
			}

			// Short connections, each a request and its answer after the
			// client's FIN.
			for i := 0; i < 300; i++ {
				c, err := net.Dial("tcp", addr)
				if err != nil {
					t.Fatalf("connection %d: %v", i, err)
				}
				c.SetDeadline(time.Now().Add(5 * time.Second))
				msg := []byte(fmt.Sprintf("ping %d", i))
				if _, err := c.Write(msg); err != nil {
					t.Fatal(err)
				}
				c.(*net.TCPConn).CloseWrite()
				got, err := io.ReadAll(c)
				c.Close()
				if err != nil || !bytes.Equal(got, msg) {
					t.Fatalf("connection %d: got %q, err %v", i, got, err)
				}
			}
		})
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
