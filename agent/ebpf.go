package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/bpf/capture"
	"github.com/weir-mesh/weir/proxy"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/proxy/origdst"
	"github.com/weir-mesh/weir/redirect"
)

// ebpf is the agent's eBPF capture: loaded once (at start when the config
// asks for ebpf, else at the first pod that does), or the reason it cannot
// be. Guarded by Agent.mu after start.
type ebpf struct {
	tried bool
	objs  *capture.Objects
	err   error
}

// ebpfWanted reports whether the config itself asks for eBPF capture.
func (c Config) ebpfWanted() bool {
	if redirect.Mode(c.Capture.Mode) == redirect.ModeEBPF {
		return true
	}
	return slices.ContainsFunc(c.Capture.Overrides, func(o PodOverride) bool { return redirect.Mode(o.Mode) == redirect.ModeEBPF })
}

func (c Config) pinPath() string {
	if c.Capture.EBPF.PinPath != "" {
		return c.Capture.EBPF.PinPath
	}
	return capture.DefaultPinPath
}

// ebpfReady loads the capture the first time it is asked for and reports
// whether it is usable. Detection names the first thing missing (program
// or map type, helper, cgroup v2, bpffs, an active net_cls/net_prio).
func (a *Agent) ebpfReady() error {
	if a.ebpf.tried {
		return a.ebpf.err
	}
	a.ebpf.tried = true
	a.ebpf.objs, a.ebpf.err = a.loadEBPF()
	if a.ebpf.err != nil {
		a.log.Error("eBPF capture unavailable", "err", a.ebpf.err, "fallback", a.cfg.Capture.EBPFFallback)
		return a.ebpf.err
	}
	a.reg.MustRegister(&ebpfCollector{objs: a.ebpf.objs})
	a.lbObjs.Store(a.ebpf.objs)
	if a.ebpf.objs.Accelerating() {
		a.accel.Store(a.ebpf.objs)
	}
	if err := a.ebpf.objs.AccelError(); err != nil {
		a.log.Warn("eBPF acceleration left off: the kernel lacks what it needs", "err", err)
	}
	a.log.Info("eBPF capture loaded", "pinPath", a.ebpf.objs.PinPath(), "cgroup", a.cgroupPath, "accelerate", a.ebpf.objs.Accelerating(), "accelerateNode", a.ebpf.objs.AcceleratingNode())
	return nil
}

func (a *Agent) loadEBPF() (*capture.Objects, error) {
	pin := a.cfg.pinPath()
	if pin == capture.DefaultPinPath {
		if err := capture.EnsureBPFFS(filepath.Dir(pin)); err != nil {
			return nil, fmt.Errorf("%w: bpffs: %v", capture.ErrUnsupported, err)
		}
	}
	mount, err := capture.EnsureCgroup2("/run/weir/cgroup2")
	if err != nil {
		return nil, fmt.Errorf("%w: cgroup v2: %v", capture.ErrUnsupported, err)
	}
	a.cgroupPath = a.cfg.Capture.EBPF.Cgroup
	if a.cgroupPath == "" {
		a.cgroupPath = mount
	}
	if err := capture.Probe(pin, a.cgroupPath); err != nil {
		return nil, err
	}
	self, err := capture.SelfCgroup(mount)
	if err != nil {
		return nil, fmt.Errorf("find the agent's own cgroup: %w", err)
	}
	objs, err := capture.Load(capture.Options{
		PinPath: pin, Cgroup: a.cgroupPath,
		Accelerate: a.cfg.Capture.EBPF.accelerate(), AccelerateNode: a.cfg.Capture.EBPF.accelerateNode(),
		AgentCgroup: self,
	})
	if err != nil {
		return nil, err
	}
	id, err := capture.SelfCgroupID(mount)
	if err == nil {
		err = objs.AllowCgroup(id)
	}
	if err != nil {
		objs.Close()
		return nil, fmt.Errorf("exempt the agent's own cgroup from capture: %w", err)
	}
	return objs, nil
}

// UninstallEBPF removes the eBPF capture the config's pin path holds: every
// cgroup and pod link detaches, the maps go. Run it with no agent running
// (a running agent keeps its maps open, not its links).
func UninstallEBPF(cfg Config) error { return capture.Uninstall(cfg.pinPath()) }

// resolveEBPF turns a spec asking for ebpf into what the node can do: ebpf
// with the pin path, the configured fallback mode, or an error naming what
// is missing.
func (a *Agent) resolveEBPF(spec redirect.Spec) (redirect.Spec, error) {
	if spec.Mode != redirect.ModeEBPF {
		return spec, nil
	}
	if err := a.ebpfReady(); err != nil {
		switch fb := a.cfg.Capture.EBPFFallback; fb {
		case "", "none":
			return spec, fmt.Errorf("mode ebpf: %w (set capture.ebpfFallback to redirect or tproxy to capture with iptables instead)", err)
		default:
			spec.Mode = redirect.Mode(fb)
			return spec, nil
		}
	}
	spec.PinPath = a.ebpf.objs.PinPath()
	return spec, nil
}

// openEBPFListeners opens the capture sockets of an ebpf spec: outbound on
// loopback (the connect programs rewrite to it), inbound on the wildcard,
// plain TCP, and each pod address's entry in the sockhash that sk_lookup
// steers by. It returns the netns cookie too.
func (a *Agent) openEBPFListeners(ns *netns.Handle, spec redirect.Spec, ips []netip.Addr) ([]proxy.Listener, uint64, error) {
	// A successor restoring an eBPF pod from the state file gets here
	// before any ADD loaded the programs (they load at the first eBPF pod):
	// load them now, or the pod is served by nobody from the handover until
	// the reconcile re-captures it (refused connections).
	if err := a.ebpfReady(); err != nil {
		return nil, 0, fmt.Errorf("eBPF capture is not loaded: %w", err)
	}
	objs := a.ebpf.objs
	if objs == nil {
		return nil, 0, errors.New("eBPF capture is not loaded")
	}
	wants := captureAddrs(spec)
	var out []proxy.Listener
	var cookie uint64
	m := &podMap{objs: objs}
	for _, w := range wants {
		ln, err := ns.Listen(w.addr, netns.SocketOptions{ReusePort: true, NoMPTCP: true})
		if err != nil {
			closeListeners(out)
			return nil, 0, err
		}
		out = append(out, proxy.Listener{TCP: ln, Direction: w.dir, Map: m})
		fd, err := listenerFd(ln)
		if err == nil && cookie == 0 {
			cookie, err = capture.NetnsCookieOf(fd)
		}
		if err == nil && w.dir == proxy.Inbound {
			for _, ip := range ips {
				if ip.Is4() == w.addr.Addr().Is4() {
					if err = objs.SetListener(ip, fd); err != nil {
						break
					}
				}
			}
		}
		if err != nil {
			closeListeners(out)
			return nil, 0, err
		}
	}
	m.cookie = cookie
	return out, cookie, nil
}

func listenerFd(ln *net.TCPListener) (int, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return 0, err
	}
	return fd, nil
}

// releaseEBPF takes a forgotten pod's netns out of the eBPF maps by its
// cookie (the namespace may be gone already; weir-cni's DEL only finds it
// when the pin path is the default one).
func (a *Agent) releaseEBPF(p *pod) {
	if p.ebpfCookie == 0 || a.ebpf.objs == nil {
		return
	}
	pinned, err := capture.Open(a.ebpf.objs.PinPath())
	if err == nil {
		err = pinned.Release(p.ebpfCookie)
		pinned.Close()
	}
	if err != nil {
		a.log.Warn("release eBPF capture", "pod", p.meta.Namespace+"/"+p.meta.Name, "err", err)
	}
}

// podMap is one pod's view of the capture maps, for the engine.
type podMap struct {
	objs   *capture.Objects
	cookie uint64
}

func (m *podMap) Lookup(client netip.AddrPort) (netip.AddrPort, origdst.Accel, error) {
	dst, st, err := m.objs.OrigDstAccel(m.cookie, client)
	switch st {
	case capture.AccelIn:
		return dst, origdst.AccelYes, err
	case capture.AccelOut:
		return dst, origdst.AccelNo, err
	}
	return dst, origdst.AccelUnknown, err
}

func (m *podMap) TagClient(fd int, client netip.AddrPort) error {
	return m.objs.TagClient(fd, client)
}

// accelerated is the engine's Engine.Accelerated: whether c is in the
// acceleration's sockhash (one lookup, only once eBPF acceleration is on).
// acceleratedFD is accelerated for a raw socket (the event loops').
func (a *Agent) acceleratedFD(fd int) bool {
	objs := a.accel.Load()
	return objs != nil && objs.Accelerated(fd)
}

func (a *Agent) accelerated(c *net.TCPConn) bool {
	objs := a.accel.Load()
	if objs == nil {
		return false
	}
	rc, err := c.SyscallConn()
	if err != nil {
		return true // closed: not splicing it costs nothing
	}
	in := true
	la, lok := c.LocalAddr().(*net.TCPAddr)
	ra, rok := c.RemoteAddr().(*net.TCPAddr)
	if !lok || !rok {
		rc.Control(func(fd uintptr) { in = objs.Accelerated(int(fd)) })
		return in
	}
	// The addresses Go recorded at accept or connect save a getsockname
	// and a getpeername per check.
	local, remote := la.AddrPort(), ra.AddrPort()
	rc.Control(func(fd uintptr) { in = objs.AcceleratedConn(int(fd), local, remote) })
	return in
}

// ebpfCollector exports the programs' per-CPU counters.
type ebpfCollector struct{ objs *capture.Objects }

var (
	ebpfEventsDesc = prometheus.NewDesc("weir_ebpf_events_total",
		"eBPF capture events counted in the kernel: connects redirected or excluded, original destinations published, peers restored, inbound connections steered or dropped for want of a listener.",
		[]string{"event"}, nil)
	ebpfAccelDesc = prometheus.NewDesc("weir_ebpf_accel_total",
		"eBPF acceleration of local pairs, counted in the kernel: sockets put in the sockhash, sendmsg calls redirected to the peer socket (msgs) and their bytes, first sends that found no peer (never redirected), sends whose peer had closed, decisions lost for want of socket storage, inserts the full sockhash refused.",
		[]string{"event"}, nil)
)

func (c *ebpfCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- ebpfEventsDesc
	ch <- ebpfAccelDesc
}

func (c *ebpfCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range []struct {
		desc *prometheus.Desc
		read func() (map[string]uint64, error)
	}{{ebpfEventsDesc, c.objs.Stats}, {ebpfAccelDesc, c.objs.AccelStats}} {
		st, err := s.read()
		if err != nil {
			continue
		}
		for k, v := range st {
			ch <- prometheus.MustNewConstMetric(s.desc, prometheus.CounterValue, float64(v), k)
		}
	}
}
