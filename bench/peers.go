package bench

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/weir-mesh/weir/integration/testworld"
)

// peer is another proxy benchmarked beside weir. Every peer runs inside the
// uncaptured client pod, listening on 127.0.0.1, and the client reaches it
// through the same kind of rule weir-cni installs: an iptables nat OUTPUT
// REDIRECT from a virtual address. So the client, the kernel path into the
// proxy and the proxy's upstream connects from the pod's namespace are the
// same as weir's; only the proxy differs.
type peer struct {
	name, desc string
	// l7 peers parse HTTP and carry the HTTP backend only.
	l7 bool
	// tool is the program the peer needs on PATH ("" for the Go relay).
	tool string
	// optIn peers are experiments that run only when --paths names them.
	optIn bool
	// notes says how the peer carries a backend when its description does
	// not (see path.notes).
	notes map[backend]string
	// start runs the peer listening on 127.0.0.1:listen[b] and forwarding to
	// upstream[b] for each backend, and returns its processes.
	start func(w *world, listen map[backend]int, upstream map[backend]string) *proc
}

var peers = []peer{
	{name: "nginx-stream", desc: "nginx stream proxy_pass (L4), 2 workers", tool: "nginx", start: startNginxStream},
	{name: "nginx-http", desc: "nginx http proxy_pass, upstream keepalive, 2 workers", l7: true, tool: "nginx", start: startNginxHTTP,
		notes: map[backend]string{backendH2C: "h2c in front (`listen … http2`), HTTP/1.1 upstream with keepalive to the server's HTTP/1.1 port: nginx's proxy_pass speaks only HTTP/1.x upstream (grpc_pass speaks HTTP/2, for gRPC)"}},
	{name: "haproxy-tcp", desc: "haproxy mode tcp, nbthread 2", tool: "haproxy", start: startHAProxy(false)},
	{name: "haproxy-http", desc: "haproxy mode http, nbthread 2", l7: true, tool: "haproxy", start: startHAProxy(true),
		notes: map[backend]string{backendH2C: "h2c both ways: `bind … proto h2`, `server … proto h2` to the server's h2c port"}},
	{name: "go-relay", desc: "plain Go relay, io.Copy between TCPConns (splice)", start: startGoRelay("splice")},
	// Experiments for relay.go's copy strategy (run with --paths).
	{name: "go-relay-buffer", desc: "Go relay copying through a 32 KiB user-space buffer (read/write, no splice)", optIn: true, start: startGoRelay("buffer")},
	// How close Go itself comes to nginx stream (issue 17): an event loop
	// per thread over raw system calls, nginx's design (epollrelay.go).
	{name: "go-epoll", desc: "Go relay written like nginx stream: 2 threads, each its own SO_REUSEPORT listeners and edge-triggered epoll, raw system calls only", optIn: true, start: startEpollRelay(false)},
	{name: "go-epoll-hold", desc: "go-epoll whose threads keep their P while waiting in epoll_wait (a raw system call)", optIn: true, start: startEpollRelay(true)},
	{name: "go-epoll-weir", desc: "go-epoll-hold plus the system calls weir's capture needs per connection (SO_ORIGINAL_DST, setns there and back, SO_MARK)", optIn: true, start: startEpollRelay(true, "-weir-calls")},
	{name: "go-relay-adaptive", desc: "Go relay: read/write through a 32 KiB buffer, a direction switches to splice after 2 reads in a row fill the buffer", optIn: true, start: startGoRelay("adaptive")},
}

// peerVIP is the virtual address the client uses for peer i.
func peerVIP(i int) string { return fmt.Sprintf("10.96.1.%d", i+1) }

// peerListenPort is where peer i listens for backend b inside the pod.
func peerListenPort(i int, b backend) int {
	for k, bb := range backends {
		if bb == b {
			return 16000 + 10*i + k
		}
	}
	panic("unknown backend " + string(b))
}

func (w *world) startPeer(i int, p peer) *path {
	t := w.t
	if p.tool != "" {
		testworld.RequireTool(t, p.tool)
	}
	listen := map[backend]int{}
	upstream := map[backend]string{}
	addr := map[backend]string{}
	skip := map[backend]string{}
	for _, b := range backends {
		if p.l7 && !slices.Contains(httpBackends, b) {
			skip[b] = "an HTTP proxy: it carries the HTTP workloads only"
			continue
		}
		listen[b] = peerListenPort(i, b)
		upstream[b] = fmt.Sprintf("%s:%d", w.first.server.IP4, serverPorts[b])
		addr[b] = fmt.Sprintf("%s:%d", peerVIP(i), servicePort[b])
		w.plain.MustRun(t, "iptables", "-w", "-t", "nat", "-A", "OUTPUT", "-p", "tcp",
			"-d", peerVIP(i), "--dport", strconv.Itoa(servicePort[b]),
			"-j", "REDIRECT", "--to-ports", strconv.Itoa(listen[b]))
	}
	pr := p.start(w, listen, upstream)
	pr.name = p.name
	for _, b := range backends {
		if port, ok := listen[b]; ok {
			w.plain.WaitPort(t, fmt.Sprintf("127.0.0.1:%d", port))
		}
	}
	// nginx's workers are children of its master; haproxy and the Go relay
	// are one process each.
	procs := procGroup{root: pr.pid(), withWorkers: p.tool == "nginx"}
	return &path{Name: p.name, Kind: kindPeer, Desc: p.desc, client: w.plain, addr: addr, skip: skip, notes: p.notes, procs: procs,
		deps: append([]*proc{pr}, w.first.servers...)}
}

// nginxModuleStream is where Debian's libnginx-mod-stream puts the module.
const nginxModuleStream = "/usr/lib/nginx/modules/ngx_stream_module.so"

func nginxMain(dir string) string {
	return fmt.Sprintf(`
user root;
daemon off;
worker_processes 2;
worker_rlimit_nofile 65536;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log notice;
events { worker_connections 16384; multi_accept on; }
`, dir)
}

func startNginx(w *world, conf, dir string) *proc {
	t := w.t
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("nginx", "-t", "-p", dir, "-c", path, "-e", filepath.Join(dir, "error.log")).CombinedOutput(); err != nil {
		t.Fatalf("nginx config for the bench is invalid: %v\n%s\n%s", err, out, conf)
	}
	errLog := filepath.Join(dir, "error.log")
	return w.startProc(w.plain.Netns, "nginx", []string{errLog}, "nginx", "-p", dir, "-c", path, "-e", errLog)
}

func startNginxStream(w *world, listen map[backend]int, upstream map[backend]string) *proc {
	dir := w.t.TempDir()
	_, err := os.Stat(nginxModuleStream)
	testworld.Require(w.t, err == nil, "nginx stream module "+nginxModuleStream+" (Debian package libnginx-mod-stream)")
	var b strings.Builder
	fmt.Fprintf(&b, "load_module %s;\n%s\nstream {\n", nginxModuleStream, nginxMain(dir))
	for _, be := range backends {
		fmt.Fprintf(&b, "  server { listen 127.0.0.1:%d backlog=8192; proxy_pass %s; }\n", listen[be], upstream[be])
	}
	b.WriteString("}\n")
	return startNginx(w, b.String(), dir)
}

// startNginxHTTP proxies HTTP/1.1 and, on a second listener, h2c
// (`listen … http2`); both go to the server's HTTP/1.1 port over one
// keepalive upstream, since proxy_pass cannot speak HTTP/2 upstream.
func startNginxHTTP(w *world, listen map[backend]int, upstream map[backend]string) *proc {
	dir := w.t.TempDir()
	conf := nginxMain(dir) + fmt.Sprintf(`
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 1000000;
  upstream backend { server %[2]s; keepalive 128; keepalive_requests 1000000; }
  server {
    listen 127.0.0.1:%[3]d backlog=8192;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
  server {
    listen 127.0.0.1:%[4]d backlog=8192 http2;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`, dir, upstream[backendHTTP], listen[backendHTTP], listen[backendH2C])
	return startNginx(w, conf, dir)
}

func startHAProxy(http bool) func(w *world, listen map[backend]int, upstream map[backend]string) *proc {
	return func(w *world, listen map[backend]int, upstream map[backend]string) *proc {
		t := w.t
		dir := t.TempDir()
		mode := "tcp"
		if http {
			mode = "http"
		}
		var b strings.Builder
		// maxconn 4000: 10000 runs into the fd limit on this machine kind.
		fmt.Fprintf(&b, `global
  nbthread 2
  maxconn 4000

defaults
  mode %s
  timeout connect 5s
  timeout client 60s
  timeout server 60s
`, mode)
		if http {
			b.WriteString("  option http-keep-alive\n  http-reuse safe\n")
		}
		for _, be := range backends {
			port, ok := listen[be]
			if !ok {
				continue
			}
			// In mode http the h2c backend is HTTP/2 on both sides.
			proto := ""
			if http && be == backendH2C {
				proto = " proto h2"
			}
			fmt.Fprintf(&b, "\nfrontend f_%[1]s\n  bind 127.0.0.1:%[2]d%[4]s\n  default_backend b_%[1]s\n\nbackend b_%[1]s\n  server s1 %[3]s%[4]s\n", be, port, upstream[be], proto)
		}
		path := filepath.Join(dir, "haproxy.cfg")
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("haproxy", "-c", "-f", path).CombinedOutput(); err != nil {
			t.Fatalf("haproxy config for the bench is invalid: %v\n%s\n%s", err, out, b.String())
		}
		return w.startProc(w.plain.Netns, "haproxy", nil, "haproxy", "-db", "-f", path)
	}
}

func startGoRelay(copyMode string) func(w *world, listen map[backend]int, upstream map[backend]string) *proc {
	return func(w *world, listen map[backend]int, upstream map[backend]string) *proc {
		return startRelayHelper(w, "relay", "go-relay", []string{"-copy", copyMode}, listen, upstream)
	}
}

func startEpollRelay(hold bool, extra ...string) func(w *world, listen map[backend]int, upstream map[backend]string) *proc {
	return func(w *world, listen map[backend]int, upstream map[backend]string) *proc {
		return startRelayHelper(w, "epoll-relay", "go-epoll", append([]string{fmt.Sprintf("-hold=%v", hold)}, extra...), listen, upstream)
	}
}

// startRelayHelper starts one of the bench's own relays (helper role) in
// the plain client pod, with a -pair LISTEN=UPSTREAM per backend.
func startRelayHelper(w *world, role, name string, args []string, listen map[backend]int, upstream map[backend]string) *proc {
	for _, b := range backends {
		args = append(args, "-pair", fmt.Sprintf("127.0.0.1:%d=%s", listen[b], upstream[b]))
	}
	exe, args, err := helperCommand(role, args...)
	if err != nil {
		w.t.Fatal(err)
	}
	return w.startProc(w.plain.Netns, name, nil, exe, args...)
}
