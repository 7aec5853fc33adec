package capture

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The functional test runs pod processes as re-executions of this binary
// (WEIR_CAPTURE_HELPER names what to do) inside a test netns and a test
// cgroup, because the cgroup programs see processes, not threads.
func TestMain(m *testing.M) {
	if h := os.Getenv("WEIR_CAPTURE_HELPER"); h != "" {
		os.Exit(helper(strings.Fields(h)))
	}
	os.Exit(m.Run())
}

func helper(args []string) int {
	switch args[0] {
	case "dial6": // dial6 ADDR: dial from an IPv6 socket (ADDR may be v4-mapped, which Go's dialer refuses)
		return dial6(args[1])
	case "dial": // dial ADDR: print the peer getpeername reports, then what the server sent
		c, err := net.DialTimeout("tcp", args[1], 3*time.Second)
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 0
		}
		defer c.Close()
		fmt.Printf("peer=%s\n", c.RemoteAddr())
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, _ := io.ReadAll(c)
		fmt.Printf("got=%s\n", strings.TrimSpace(string(b)))
		return 0
	case "pump": // pump ADDR N SIZE BULK: N echoed messages of SIZE bytes, then BULK bytes echoed
		return pump(args[1:])
	case "quit": // quit ADDR: send a little, then exit while the agent still sends
		c, err := net.DialTimeout("tcp", args[1], 3*time.Second)
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		c.Write(make([]byte, 4096))
		b := make([]byte, 1024)
		io.ReadFull(c, b)
		fmt.Println("quitting")
		return 0
	case "flood": // flood ADDR: write for 2 s to an agent that does not read, print wrote=N sha=HASH
		return flood(args[1])
	case "sleepread": // sleepread ADDR: read nothing for 3 s, then all until EOF, print got=N sha=HASH
		return sleepRead(args[1])
	case "serve": // serve ADDR: answer every connection with the peer accept reported
		ln, err := net.Listen("tcp", args[1])
		if err != nil {
			fmt.Printf("error=%v\n", err)
			return 1
		}
		fmt.Println("ready")
		for {
			c, err := ln.Accept()
			if err != nil {
				return 1
			}
			fmt.Fprintf(c, "%s\n", c.RemoteAddr())
			c.Close()
		}
	}
	return 2
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("missing prerequisite (CI=true, so this fails instead of skipping): root privileges")
	}
	t.Skip("missing prerequisite: root privileges")
}

// testBed is a private bpffs, a cgroup for the test's pod processes, and the
// loaded objects attached to that cgroup; all undone at cleanup.
type testBed struct {
	pin, cgroup string
	cgFd        int
	objs        *Objects
}

func newTestBed(t *testing.T) *testBed {
	t.Helper()
	requireRoot(t)
	mount, err := EnsureCgroup2("/run/weir-test-cgroup2")
	if err != nil || mount == "" {
		t.Fatalf("no cgroup v2 hierarchy: %v", err)
	}
	b := &testBed{}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount a private bpffs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(bpffs, unix.MNT_DETACH) })
	b.pin = filepath.Join(bpffs, "weir")
	b.cgroup, err = os.MkdirTemp(mount, "weir-capture-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Processes are gone by now (their own cleanups ran first).
		for i := 0; i < 50 && os.Remove(b.cgroup) != nil; i++ {
			time.Sleep(20 * time.Millisecond)
		}
	})
	f, err := os.Open(b.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	b.cgFd = int(f.Fd())
	if err := Probe(b.pin, b.cgroup); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	if b.objs, err = Load(Options{PinPath: b.pin, Cgroup: b.cgroup}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.objs.Close() })
	return b
}

type netns struct{ name, path string }

func newNetns(t *testing.T) netns {
	t.Helper()
	var rnd [4]byte
	f, _ := os.Open("/dev/urandom")
	f.Read(rnd[:])
	f.Close()
	n := netns{name: fmt.Sprintf("wcap-%x", rnd)}
	n.path = "/run/netns/" + n.name
	run(t, "ip", "netns", "add", n.name)
	t.Cleanup(func() { exec.Command("ip", "netns", "delete", n.name).Run() })
	n.run(t, "ip", "link", "set", "lo", "up")
	return n
}

func run(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}

func (n netns) run(t *testing.T, name string, args ...string) {
	t.Helper()
	run(t, "ip", append([]string{"netns", "exec", n.name, name}, args...)...)
}

// do runs f on a thread inside the namespace; the thread is thrown away.
func (n netns) do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		fd, err := unix.Open(n.path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- err
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// helperProc starts a pod process (this binary as a helper) in the netns and
// the test cgroup; its stdout is returned as lines.
func (b *testBed) helperProc(t *testing.T, n netns, args ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "WEIR_CAPTURE_HELPER="+strings.Join(args, " "))
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: b.cgFd}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.do(cmd.Start); err != nil {
		t.Fatalf("start helper %v: %v", args, err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewScanner(out)
}

// dial runs a "dial" helper and returns its output lines.
func (b *testBed) dial(t *testing.T, n netns, addr string) map[string]string {
	t.Helper()
	cmd, sc := b.helperProc(t, n, "dial", addr)
	res := map[string]string{}
	for sc.Scan() {
		k, v, _ := strings.Cut(sc.Text(), "=")
		res[k] = v
	}
	cmd.Wait()
	return res
}

func listenIn(t *testing.T, n netns, addr string) *net.TCPListener {
	t.Helper()
	var ln net.Listener
	err := n.do(func() error {
		lc := net.ListenConfig{}
		lc.SetMultipathTCP(false) // MPTCP sockets cannot enter a sockhash
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen on %s in %s: %v", addr, n.name, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func fdOf(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

// TestEnrolRedirectsAndReleaseRestores loads the programs into a test
// cgroup, enrols one pod netns and checks, with real processes: an outbound
// connect reaches the agent's listener, whose lookup recovers the address
// dialled, which the app also sees as its peer; an inbound connection from
// another netns is steered to the agent's inbound listener with its local
// address intact, and the app the agent connects to sees the real client;
// after release, connects go direct again and nothing is left in the maps.
func TestEnrolRedirectsAndReleaseRestores(t *testing.T) {
	b := newTestBed(t)
	pod, peer := newNetns(t), newNetns(t)
	run(t, "ip", "link", "add", "wcap0", "netns", pod.name, "type", "veth", "peer", "name", "wcap1", "netns", peer.name)
	pod.run(t, "ip", "addr", "add", "10.9.0.2/24", "dev", "wcap0")
	pod.run(t, "ip", "link", "set", "wcap0", "up")
	peer.run(t, "ip", "addr", "add", "10.9.0.1/24", "dev", "wcap1")
	peer.run(t, "ip", "link", "set", "wcap1", "up")
	// A real server the pod can reach directly, at an address that is not
	// the pod's own (on the pod's loopback, so no route is needed).
	pod.run(t, "ip", "addr", "add", "10.1.2.3/32", "dev", "lo")
	direct := listenIn(t, pod, "10.1.2.3:80")
	go func() {
		for {
			c, err := direct.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, "direct")
			c.Close()
		}
	}()

	// The agent's side: listeners in the pod netns, served from here.
	out := listenIn(t, pod, "127.0.0.1:15001")
	in := listenIn(t, pod, "0.0.0.0:15006")
	cookie, err := NetnsCookieOf(fdOf(t, out))
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			c, err := out.AcceptTCP()
			if err != nil {
				return
			}
			dst, st, err := b.objs.OrigDstAccel(cookie, c.RemoteAddr().(*net.TCPAddr).AddrPort())
			if err == nil && st != AccelUnknown {
				// Acceleration is off: nothing may claim to know.
				err = fmt.Errorf("record says acceleration %d with acceleration off", st)
			}
			if err != nil {
				fmt.Fprintf(c, "lookup failed: %v\n", err)
			} else {
				fmt.Fprintf(c, "agent saw %s\n", dst)
			}
			c.Close()
		}
	}()
	inboundLocal := make(chan string, 4)
	go func() {
		for {
			c, err := in.AcceptTCP()
			if err != nil {
				return
			}
			inboundLocal <- c.LocalAddr().String()
			client := c.RemoteAddr().(*net.TCPAddr).AddrPort()
			var up net.Conn
			err = pod.do(func() error {
				d := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
					var terr error
					rc.Control(func(fd uintptr) { terr = b.objs.TagClient(int(fd), client) })
					return terr
				}}
				var err error
				up, err = d.Dial("tcp", c.LocalAddr().String())
				return err
			})
			if err != nil {
				fmt.Fprintf(c, "upstream: %v\n", err)
			} else {
				io.Copy(c, up)
				up.Close()
			}
			c.Close()
		}
	}()
	if err := b.objs.SetListener(netip.MustParseAddr("10.9.0.2"), fdOf(t, in)); err != nil {
		t.Fatal(err)
	}
	_, appOut := b.helperProc(t, pod, "serve", "0.0.0.0:8080")
	if !appOut.Scan() || appOut.Text() != "ready" {
		t.Fatalf("app did not start: %q", appOut.Text())
	}

	// Not enrolled yet: direct.
	if got := b.dial(t, pod, "10.1.2.3:80"); got["got"] != "direct" {
		t.Fatalf("before enrolment: %v; want the direct server", got)
	}

	p, err := Open(b.pin)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	nsf, err := os.Open(pod.path)
	if err != nil {
		t.Fatal(err)
	}
	defer nsf.Close()
	spec := Pod{OutboundPort: 15001, IPv4: true, Addrs: []netip.Addr{netip.MustParseAddr("10.9.0.2")}, ExcludeOutboundPorts: []uint16{81}}
	if err := p.Enrol(int(nsf.Fd()), cookie, spec); err != nil {
		t.Fatal(err)
	}
	if probs, err := p.Verify(int(nsf.Fd()), cookie, spec); err != nil || len(probs) > 0 {
		t.Fatalf("verify after enrol: %v %v", probs, err)
	}

	got := b.dial(t, pod, "10.1.2.3:80")
	if got["got"] != "agent saw 10.1.2.3:80" || got["peer"] != "10.1.2.3:80" {
		t.Fatalf("enrolled outbound: %v; want the agent to see 10.1.2.3:80 and the app its peer as dialled", got)
	}
	// An excluded port and the pod's own address go direct.
	if got := b.dial(t, pod, "10.1.2.3:81"); !strings.Contains(got["error"], "refused") {
		t.Fatalf("excluded port 81: %v; want a direct connect (refused: nothing listens)", got)
	}
	if got := b.dial(t, pod, "10.9.0.2:8080"); got["got"] == "" || strings.HasPrefix(got["got"], "agent") {
		t.Fatalf("pod's own address: %v; want the app directly", got)
	}

	// Inbound from the peer netns (not enrolled, not in the cgroup).
	var reply string
	err = peer.do(func() error {
		c, err := net.DialTimeout("tcp", "10.9.0.2:8080", 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		b, err := io.ReadAll(c)
		reply = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Fatalf("inbound connect: %v", err)
	}
	select {
	case l := <-inboundLocal:
		if l != "10.9.0.2:8080" {
			t.Fatalf("agent's inbound socket has local address %s, want 10.9.0.2:8080 (the original destination)", l)
		}
	default:
		t.Fatalf("inbound connection did not reach the agent's listener (reply %q)", reply)
	}
	if !strings.HasPrefix(reply, "10.9.0.1:") {
		t.Fatalf("app reported client %q, want the real client 10.9.0.1", reply)
	}
	st, err := b.objs.Stats()
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"connect_redirected", "origdst_published", "peer_restored", "client_reported", "inbound_steered"} {
		if st[k] == 0 {
			t.Errorf("counter %s is 0: %v", k, st)
		}
	}

	if err := p.Release(cookie); err != nil {
		t.Fatal(err)
	}
	if got := b.dial(t, pod, "10.1.2.3:80"); got["got"] != "direct" {
		t.Fatalf("after release: %v; want the direct server", got)
	}
	if on, err := p.Enrolled(cookie); err != nil || on {
		t.Fatalf("after release: enrolled=%v err=%v", on, err)
	}
	if err := p.Release(cookie); err != nil {
		t.Fatalf("second release: %v", err)
	}
}

// TestLoadTwiceAttachesOnce re-loads over pinned state, as a restarted agent
// does: the maps keep their entries and each cgroup program stays attached
// once.
func TestLoadTwiceAttachesOnce(t *testing.T) {
	b := newTestBed(t)
	if err := b.objs.AllowCgroup(42); err != nil {
		t.Fatal(err)
	}
	again, err := Load(Options{PinPath: b.pin, Cgroup: b.cgroup})
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	var v uint8
	if err := again.objs.AgentCgroups.Lookup(uint64(42), &v); err != nil {
		t.Fatalf("pinned map not re-used: %v", err)
	}
	n, err := CgroupLinks(b.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Fatalf("%d links on the cgroup after a second load, want 5 (connect4/6, getpeername4/6, sockops)", n)
	}
}

// TestLoadReleasesVanishedNetns: a pod netns enrolled, then deleted while
// no agent ran, leaves a severed sk_lookup link; the next Load releases
// that netns (link and entries) and succeeds.
func TestLoadReleasesVanishedNetns(t *testing.T) {
	b := newTestBed(t)
	pod := newNetns(t)
	pod.run(t, "ip", "addr", "add", "10.9.1.2/32", "dev", "lo")
	var cookie uint64
	err := pod.do(func() error {
		pinned, err := Open(b.pin)
		if err != nil {
			return err
		}
		defer pinned.Close()
		if cookie, err = CurrentNetnsCookie(); err != nil {
			return err
		}
		fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return pinned.Enrol(fd, cookie, Pod{OutboundPort: 15001, IPv4: true, Addrs: []netip.Addr{netip.MustParseAddr("10.9.1.2")}})
	})
	if err != nil {
		t.Fatalf("enrol: %v", err)
	}
	b.objs.Close()
	run(t, "ip", "netns", "delete", pod.name)
	// The kernel severs the link once the namespace is really freed.
	var again *Objects
	for i := 0; ; i++ {
		again, err = Load(Options{PinPath: b.pin, Cgroup: b.cgroup})
		if err == nil {
			break
		}
		if i == 50 {
			t.Fatalf("load over a vanished pod netns: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	defer again.Close()
	pinned, err := Open(b.pin)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	for i := 0; ; i++ {
		on, err := pinned.Enrolled(cookie)
		if err != nil {
			t.Fatal(err)
		}
		if !on {
			break
		}
		if i == 50 {
			t.Fatalf("netns cookie %d still enrolled after a load found its link severed", cookie)
		}
		// Not yet severed at the last load: load again, as a restart would.
		time.Sleep(100 * time.Millisecond)
		l, err := Load(Options{PinPath: b.pin, Cgroup: b.cgroup})
		if err != nil {
			t.Fatal(err)
		}
		l.Close()
	}
}
