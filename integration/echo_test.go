package integration

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/integration/testworld"
)

// startEcho runs a line echo server on port 7000 of pod.
func startEcho(t testing.TB, pod *testworld.Pod) { echoAt(t, pod, "0.0.0.0:7000") }

// echoAt runs an echo server on addr in pod.
func echoAt(t testing.TB, pod *testworld.Pod, addr string) {
	t.Helper()
	ln := pod.Listen(t, addr)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
}

// echoConn is a long-lived connection from client to server's echo port.
type echoConn struct {
	c *net.TCPConn
	r *bufio.Reader
}

func dialEcho(t *testing.T, client, server *testworld.Pod) *echoConn {
	t.Helper()
	c, err := client.Dial(fmt.Sprintf("%s:7000", server.IP4), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &echoConn{c: c, r: bufio.NewReader(c)}
}

// echo sends one line and checks it comes back.
func (e *echoConn) echo(msg string) error {
	e.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := fmt.Fprintln(e.c, msg); err != nil {
		return err
	}
	line, err := e.r.ReadString('\n')
	if err == nil && strings.TrimSpace(line) != msg {
		err = fmt.Errorf("echo %q, want %q", line, msg)
	}
	return err
}
