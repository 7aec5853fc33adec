package testworld

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Nginx is a real nginx serving inside a pod: every request answers with the
// server's name, and the access log records each client's address.
type Nginx struct {
	Dir, AccessLog string
	cmd            *exec.Cmd
}

// Stop kills nginx (its port then refuses connections).
func (n *Nginx) Stop() { KillGroup(n.cmd) }

// StartNginx runs nginx in the pod on port (IPv4 and, when the pod has it,
// IPv6), answering "name\n". It waits until the port accepts.
func (p *Pod) StartNginx(t T, port int, name string) *Nginx {
	t.Helper()
	RequireTool(t, "nginx")
	dir := t.TempDir()
	n := &Nginx{Dir: dir, AccessLog: filepath.Join(dir, "access.log")}
	listen := fmt.Sprintf("listen %d;", port)
	if p.IP6.IsValid() {
		listen += fmt.Sprintf(" listen [::]:%d;", port)
	}
	conf := fmt.Sprintf(`
user root;
daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 4096; }
http {
  log_format weir '$remote_addr';
  access_log %[1]s/access.log weir;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
  server { %[2]s location / { return 200 "%[3]s\n"; } }
}
`, dir, listen, name)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	n.cmd = p.Start(t, "nginx", "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	p.WaitPort(t, fmt.Sprintf("127.0.0.1:%d", port))
	return n
}

// WaitPortClosed waits until addr refuses connections from inside the pod
// (a killed server's children may hold its socket for a moment).
func (p *Pod) WaitPortClosed(t T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := p.Dial(addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts in %s 10s after its server was stopped", addr, p.Name)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Clients returns the client addresses nginx logged, in order.
func (n *Nginx) Clients(t T) []string {
	t.Helper()
	b, err := os.ReadFile(n.AccessLog)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(string(b))
}

// WaitPort waits until addr accepts connections from inside the pod.
func (p *Pod) WaitPort(t T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := p.Dial(addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never accepted in %s: %v", addr, p.Name, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Curl runs curl in the namespace and returns its body. URLs may hold
// bracketed IPv6 literals (globbing is off).
func (n *Netns) Curl(t T, url string, extra ...string) (string, error) {
	t.Helper()
	RequireTool(t, "curl")
	args := append([]string{"-sS", "-g", "--max-time", "5", "--noproxy", "*"}, extra...)
	return n.Run("curl", append(args, url)...)
}

// Get sends one HTTP/1.1 GET from inside the namespace on a new connection
// and returns the body: a cheaper client than curl for long request loops.
func (n *Netns) Get(target string) (string, error) {
	c := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return n.Dial(addr, 5*time.Second)
			},
			DisableKeepAlives: true,
			Proxy:             nil,
		},
	}
	resp, err := c.Get(target)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(b), fmt.Errorf("GET %s: %s", target, resp.Status)
	}
	return string(b), nil
}
