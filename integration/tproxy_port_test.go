package integration

import (
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/integration/testworld"
)

// Under TPROXY the agent connects to the app from the inbound client's own
// address, on a port the kernel picks in the pod's namespace. If that port
// is the client's own, the upstream socket's four-tuple is the accepted
// socket's reversed, in the same namespace: its SYN is delivered to the
// accepted socket, whose challenge ACK draws a reset that kills it, and the
// client's request meets a reset. With the pod's ephemeral range cut down
// to two ports and the client calling from each of them in turn, the
// agent's pick is the client's port in one of every two calls, so without
// the fix every round has a failed call. Found while looking for the rare
// reset of TestBackendSwitchKeepsTraffic/tproxy (1 inbound request in
// 1,644): a random pick collides once in about 28,000 inbound connections.
func TestTPROXYInboundAvoidsClientPort(t *testing.T) {
	node := testworld.NewNode(t, world{"1.0.0", "tproxy", "v4", ""}.nodeOptions())
	node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	app := node.MustAddPod(t, "demo", "app")
	nginx := app.StartNginx(t, 8080, "app")
	peer := node.MustAddPod(t, "backend", "peer")
	target := fmt.Sprintf("%s:8080", app.IP4)

	var failed []string
	calls := 0
	for round, low := range []int{45000, 45010, 45020} {
		app.MustRun(t, "sysctl", "-qw", fmt.Sprintf("net.ipv4.ip_local_port_range=%d %d", low, low+1))
		for _, port := range []int{low, low + 1} {
			calls++
			body, err := getFromPort(peer, port, target)
			if err != nil || !strings.HasSuffix(strings.TrimSpace(body), "app") {
				failed = append(failed, fmt.Sprintf("round %d, client port %d: %v %q", round, port, err, body))
			}
		}
	}
	if len(failed) > 0 {
		t.Fatalf("%d of %d inbound calls from a port in the pod's ephemeral range failed:\n%s", len(failed), calls, strings.Join(failed, "\n"))
	}
	// Still transparent: the app saw the client's address on every call.
	b, err := os.ReadFile(nginx.AccessLog)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Count(string(b), peer.IP4.String()+"\n"), calls; got != want {
		t.Fatalf("nginx logged the client's address %d times, want %d:\n%s", got, want, b)
	}
	t.Logf("%d inbound calls from ports in the pod's 2-port ephemeral range, none failed, all from the client's address", calls)
}

// getFromPort sends one GET with Connection: close from port on n's
// address to target and returns the whole answer.
func getFromPort(n *testworld.Pod, port int, target string) (string, error) {
	var c net.Conn
	err := n.Do(func() error {
		d := net.Dialer{
			Timeout:   3 * time.Second,
			LocalAddr: &net.TCPAddr{IP: n.IP4.AsSlice(), Port: port},
			Control: func(_, _ string, rc syscall.RawConn) error {
				var serr error
				rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) })
				return serr
			},
		}
		var err error
		c, err = d.Dial("tcp4", target)
		return err
	})
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}
