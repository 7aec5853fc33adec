package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/agent/kube"
	"github.com/weir-mesh/weir/bpf/capture"
	"github.com/weir-mesh/weir/bpf/splice"
	"github.com/weir-mesh/weir/proxy"
	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/h2"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/proxy/route"
	"github.com/weir-mesh/weir/proxy/rpc"
	"github.com/weir-mesh/weir/proxy/sniff"
	"github.com/weir-mesh/weir/redirect"
)

// Agent is one node's daemon. Create it with New, run it with Run.
type Agent struct {
	cfg  Config
	log  *slog.Logger
	pods *registry
	// deleted remembers the namespaces of recent CNI DELs, which discovery
	// must not take for pods added while the agent was away (deleted.go).
	deleted deletedPods
	routes  *route.Table
	engine  *proxy.Engine
	reg     *prometheus.Registry
	ready   atomic.Bool
	// backend is where pods' rules go (an iptables flavour or nftables),
	// chosen once at start when the config says auto (autoBackend).
	backend     string
	autoBackend bool
	// ebpf is the eBPF capture (ebpf.go) and cgroupPath where it attaches.
	ebpf       ebpf
	cgroupPath string
	// accel is the loaded capture once it accelerates local pairs; the
	// engine asks it which sockets not to splice (Engine.Accelerated).
	accel atomic.Pointer[capture.Objects]
	// lbObjs is the loaded capture, for the kernel-balanced services'
	// table (kernellb.go), which syncs outside mu; klb is the agent's side
	// of that table.
	lbObjs atomic.Pointer[capture.Objects]
	klb    kernelLB
	// splicer splices L4 relays in the kernel (capture.ebpf.splice); nil
	// when off.
	splicer *splice.Splicer
	// kube is the Kubernetes source when kubernetes.enabled; nil otherwise.
	kube *kube.Source
	// nodeNetns are the namespaces the agent never captures (netns.go).
	nodeNetns nodeNamespaces
	// xds is the xDS source when xds.address is set; nil otherwise.
	xds *xdsSource
	// baseCtx lives as long as Run.
	baseCtx context.Context

	// ownsState is true while this agent may write the state files.
	ownsState atomic.Bool
	// saved marks what each pod's state file was written from, and
	// legacyState says a single state file of an older agent is still to
	// be replaced by per-pod files (state.go). Guarded by mu.
	saved map[api.Attachment]savedMark
	// savedJSON is each pod's file as last written, which the stateFile
	// mirror is put together from. Guarded by mu.
	savedJSON   map[api.Attachment][]byte
	legacyState bool
	// mirrorDirty says the stateFile mirror is behind the per-pod files
	// (guarded by mu); mirrorMu serialises its writers (state.go).
	mirrorDirty bool
	mirrorMu    sync.Mutex
	// mirrorScratch: see writeMirror (guarded by mirrorMu).
	mirrorScratch mirrorScratch
	// handover is closed when a successor took over (see takeover.go).
	handover     chan struct{}
	handoverOnce sync.Once
	// standbyRole is true while this process is a hot standby, not yet
	// promoted; watch tells standbys watching this agent about pod changes;
	// promotedAt is when a standby found its primary gone; child is the
	// standby a promoted one started (standby.go).
	standbyRole  atomic.Bool
	watch        watchers
	promotedAt   time.Time
	child        *childStandby
	standbyAdmin *http.Server
	// adminLn is the admin listener once bound; a predecessor closes it
	// the moment it hands over, so the node's HTTP probes reach only its
	// successor from then on (see admitProbes).
	adminLn atomic.Pointer[net.Listener]
	// handoverStream is the successor's connection hand-over stream, set
	// when it asked for one (handover.go).
	handoverStream *net.UnixConn
	sourcesStarted bool

	// mu serialises changes to the set of captured pods (CNI calls,
	// reconcile, restore); the connection path never takes it.
	mu          sync.Mutex
	reloadMu    sync.Mutex
	cniRequests *prometheus.CounterVec
	addPhases   *prometheus.HistogramVec
}

// New builds an agent from a validated config. It checks what the agent
// cannot work without (the right to enter network namespaces) up front.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if log == nil {
		log = slog.Default()
	}
	nodeNetns, err := findNodeNamespaces(hostNetnsPath, log)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	a := &Agent{
		cfg:       cfg,
		log:       log,
		handover:  make(chan struct{}),
		nodeNetns: nodeNetns,
		pods:      newRegistry(),
		routes:    &route.Table{},
		reg:       reg,
		baseCtx:   context.Background(),
		cniRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_cni_requests_total", Help: "Requests from weir-cni by verb and result.",
		}, []string{"verb", "result"}),
	}
	a.addPhases = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "weir_cni_add_phase_seconds",
		Help:    "Time a CNI ADD spends in each phase inside the agent (vet, decide, lock, shared, listen, migrate, serve, state; total; cpu is the agent's CPU time meanwhile).",
		Buckets: []float64{.00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1},
	}, []string{"phase"})
	// Counted when scraped: counting every pod at each ADD made the ADD's
	// cost grow with the node (5.9 µs at 500 pods, hot).
	podsCaptured := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weir_pods_captured", Help: "Pods whose network namespace the agent currently captures.",
	}, func() float64 { return float64(a.pods.capturedCount()) })
	reg.MustRegister(podsCaptured, a.cniRequests, a.addPhases)
	if a.backend, a.autoBackend, err = chooseBackend(cfg.Capture.Backend, log); err != nil {
		return nil, err
	}
	if cfg.ebpfWanted() {
		err := a.ebpfReady()
		if err != nil && redirect.Mode(cfg.Capture.Mode) == redirect.ModeEBPF && (cfg.Capture.EBPFFallback == "" || cfg.Capture.EBPFFallback == "none") {
			return nil, fmt.Errorf("capture.mode ebpf: %w (set capture.ebpfFallback to redirect or tproxy to capture with iptables instead)", err)
		}
	}
	snap, err := buildRoutes(cfg, nil)
	if err != nil {
		return nil, err
	}
	a.routes.Store(snap)
	if rc, err := staticRoutes(cfg); err == nil {
		a.setKernelServices(rc.Services)
	}
	reg.MustRegister(route.NewCollector(a.routes), &kernelLBCollector{a: a})
	a.engine = &proxy.Engine{
		Routes:         a.routes,
		Metrics:        proxy.NewMetrics(reg),
		Mark:           uint32(cfg.Capture.Mark),
		ConnectTimeout: time.Duration(cfg.ConnectTimeout),
		Log:            log,
		Sniffing:       cfg.sniffing(),
		HTTP2:          h2.Options{Engine: cfg.HTTP2.Engine},
		SniffMetrics:   sniff.NewMetrics(reg),
		HTTPMetrics:    l7.NewMetrics(reg),

		HandoverMetrics: proxy.NewHandoverMetrics(reg),
		RPCMetrics:      rpc.NewMetrics(reg),
	}
	a.engine.Accelerated = a.accelerated
	a.engine.AcceleratedFD = a.acceleratedFD
	a.loadSplicer()
	// The P count the agent runs with: runtime.procs' number when it fixes
	// one (applied after New, in weir-agent's sizeProcs), else the
	// runtime's start value.
	procs, fixed := cfg.Runtime.Procs.Fixed()
	if !fixed {
		procs = runtime.GOMAXPROCS(0)
	}
	a.engine.Loops = cfg.Runtime.LoopCount(procs, a.engine.Splice != nil)
	// Only a default the runtime computes may be restored when the loops
	// go quiet: runtime.SetDefaultGOMAXPROCS ignores a GOMAXPROCS the
	// environment sets, which then stays the base instead.
	a.engine.LoopsDefaultProcs = !fixed && cfg.Runtime.Procs != ProcsAuto && !procsFromEnv(os.Getenv("GOMAXPROCS"))
	if a.engine.Loops > 0 {
		log.Info("L4 relays on event loops", "loops", a.engine.Loops, "gomaxprocs", procs, "gomaxprocsBusy", procs+a.engine.Loops)
	}
	if a.engine.AccessLog, err = openAccessLog(cfg.AccessLog); err != nil {
		return nil, err
	}
	if t := cfg.Tracing; t.Enabled {
		a.engine.Tracer, err = l7.NewTracer(context.Background(), l7.TracerConfig{
			Endpoint: t.Endpoint, SampleRatio: t.SampleRatio, BatchTimeout: time.Duration(t.BatchTimeout),
		})
		if err != nil {
			return nil, fmt.Errorf("tracing: %w", err)
		}
	}
	if cfg.Kubernetes.Enabled {
		if a.kube, err = newKubeSource(cfg, log); err != nil {
			return nil, err
		}
	}
	if a.xds, err = newXDSSource(cfg, a, reg, log); err != nil {
		return nil, err
	}
	return a, nil
}

// Run serves weir-cni and the admin endpoints until ctx ends, then shuts
// down: stop accepting, close every capture listener, wait (bounded by
// drainTimeout) for open connections, and return.
//
// Start-up order: re-capture the pods a previous agent left (listeners
// first), serve the CNI socket, sync the Kubernetes caches, reconcile every
// pod with the policy, and only then report ready (and lift the node taint).
func (a *Agent) Run(ctx context.Context) error {
	runCtx, cancelRun := context.WithCancel(context.Background())
	defer cancelRun()
	a.baseCtx = runCtx
	if a.cfg.ProbeSocket != "" {
		stop, err := a.serveProbeSocket()
		if err != nil {
			return err
		}
		defer stop()
	}
	if a.cfg.Standby.Enabled {
		if err := a.standBy(ctx, runCtx); err != nil {
			a.stopStandby()
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		// Promoted: from here on this is the primary, started like one that
		// found no predecessor, with every mirrored listener already open.
		a.standbyRole.Store(false)
		a.ready.Store(false)
	}
	if a.kube != nil && a.promotedAt.IsZero() {
		// (A promoted standby serves every pod already: no taint.)
		if err := a.kube.SetNodeReady(ctx, false); err != nil {
			a.log.Warn("cannot taint node not-ready", "err", err)
		}
	}
	// A running predecessor keeps serving until this agent is ready; this
	// agent joins its listeners (SO_REUSEPORT) and does not write the state
	// file before the predecessor hands over.
	pred, err := findPredecessor(a.cfg.Socket)
	if err != nil {
		return err
	}
	if pred == nil {
		a.ownsState.Store(true)
	} else {
		a.log.Info("taking over from a running agent", "socket", a.cfg.Socket)
	}
	if err := a.restoreState(); err != nil {
		a.log.Error("restore state", "err", err)
	}
	a.syncKernelLB()
	cniLn, err := listenUnix(a.cfg.Socket, pred != nil)
	if err != nil {
		pred.close()
		return err
	}
	cniSrv := &http.Server{Handler: a.cniHandler(), ReadHeaderTimeout: 5 * time.Second}
	adminSrv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 2)
	serveAdmin := func() error {
		adminLn, err := listenAdmin(a.cfg.Admin)
		if err != nil {
			return fmt.Errorf("admin listen on %s: %w", a.cfg.Admin, err)
		}
		a.adminLn.Store(&adminLn)
		go func() {
			// A handover closes the listener (takeover.go): not a failure.
			if err := serveHTTP(adminSrv, adminLn); err != nil && !errors.Is(err, net.ErrClosed) {
				errc <- err
			}
		}()
		a.log.Info("admin listening", "admin", adminLn.Addr().String())
		return nil
	}
	// With a predecessor running, the admin address is joined only once
	// this agent is ready: until then kubelet's HTTP probes (readiness of
	// either agent's pod) reach the predecessor alone, which answers ready,
	// and never a not-yet-ready successor: no pod's readiness flaps during
	// a takeover (a flap can leave a DaemonSet rollout waiting for a
	// re-sync that never comes). The successor's own pod is held unready by
	// its exec startup probe on ProbeSocket, which only it answers.
	if pred == nil {
		if err := serveAdmin(); err != nil {
			cniLn.Close()
			return err
		}
	}
	go func() { errc <- serveHTTP(cniSrv, cniLn) }()

	var changed <-chan struct{}
	if err := a.startSources(runCtx); err != nil {
		cniSrv.Close()
		adminSrv.Close()
		return err
	}
	if a.kube != nil {
		changed = a.kube.Changed()
	}
	if err := a.writeEnablement(); err != nil {
		a.log.Error("write enablement file", "err", err)
	}
	if pred != nil {
		// Ready: the predecessor stops accepting (its queued connections
		// migrate to these listeners) and drains; then take the state it
		// left, which includes any pod it added meanwhile.
		stream, err := pred.handOver()
		if err != nil {
			a.log.Warn("predecessor did not confirm the handover", "err", err)
		}
		if stream != nil {
			go a.receiveConnections(stream)
		}
		a.ownsState.Store(true)
		if err := a.restoreState(); err != nil {
			a.log.Error("restore state after takeover", "err", err)
		}
		a.log.Info("took over", "pods", a.pods.capturedCount())
	}
	a.reconcile(runCtx, "start")
	if pred != nil {
		if err := serveAdmin(); err != nil {
			// The node is served (this agent took over); without the admin
			// address its pod never turns ready, so the rollout stops here
			// instead of removing the pod that still could serve.
			a.log.Error("cannot serve the admin address after the takeover; the pod stays unready", "err", err)
		}
	}
	a.ready.Store(true)
	if a.kube != nil {
		if err := a.kube.SetNodeReady(ctx, true); err != nil {
			a.log.Warn("cannot lift node not-ready taint", "err", err)
		}
	}
	a.log.Info("agent ready", "release", Release, "socket", a.cfg.Socket, "admin", a.cfg.Admin, "kubernetes", a.kube != nil)
	if !a.promotedAt.IsZero() {
		a.log.Info("standby promoted", "since_primary_lost", time.Since(a.promotedAt).String(), "pods", a.pods.capturedCount())
		if a.cfg.Standby.Respawn {
			a.standbyAdmin.Close()
			a.respawnStandby()
		}
	}

	go route.RunHealthChecks(runCtx, a.routes, a.healthDial, time.Second, 64)
	go a.runKernelLB(runCtx)

	sweep := time.NewTicker(time.Duration(a.cfg.SweepInterval))
	defer sweep.Stop()
	resync := time.NewTicker(time.Duration(a.cfg.ReconcileInterval))
	defer resync.Stop()
	mirror := time.NewTicker(mirrorInterval)
	defer mirror.Stop()
	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-a.handover:
			a.log.Info("handed over to a successor; draining")
			break loop
		case err := <-errc:
			runErr = err
			break loop
		case <-sweep.C:
			a.sweep()
		case <-mirror.C:
			if err := a.writeMirror(false); err != nil {
				a.log.Error("write state mirror for older agents", "err", err)
			}
		case <-resync.C:
			a.reconcile(runCtx, "periodic")
		case <-changed:
			a.syncKube()
			if err := a.writeEnablement(); err != nil {
				a.log.Error("write enablement file", "err", err)
			}
			a.reconcile(runCtx, "kubernetes change")
		}
	}
	a.ready.Store(false)
	// Leave the admin address now, not after the drain: a stopping agent is
	// not ready, and another agent on this node (a successor, or the new pod
	// of a deleted one) shares the address, so a "not ready" from here would
	// count against that agent's pod in kubelet's HTTP probes.
	if ln := a.adminLn.Load(); ln != nil {
		(*ln).Close()
	}
	a.log.Info("agent stopping", "pods", a.pods.capturedCount())
	// A standby this agent started goes first: it must not see this agent
	// leave and promote itself.
	a.child.stop(10 * time.Second)
	handedOver := false
	select {
	case <-a.handover:
		handedOver = true
	default:
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	cniSrv.Shutdown(shutCtx)
	cancel()
	if !handedOver {
		// The path is the successor's after a handover.
		os.Remove(a.cfg.Socket)
	}
	for _, p := range a.pods.list() {
		a.closeListeners(p.listeners)
	}
	drainCtx, cancel := context.WithTimeout(context.Background(), time.Duration(a.cfg.DrainTimeout))
	defer cancel()
	sent, drained := make(chan struct{}), make(chan struct{})
	var sender *handoverSender
	if handedOver && a.handoverStream != nil {
		// Greeted before the drain wakes idle HTTP/1 connections, so they
		// find the way to the successor open.
		sender = a.greetSuccessor(a.handoverStream)
	}
	if sender != nil {
		// Idle L4 and HTTP/1 connections go to the successor; the rest drain.
		a.engine.SetIdleHandOff(sender.send)
		go func() { defer close(sent); a.sendConnections(drainCtx, sender, drained) }()
	} else {
		close(sent)
	}
	if err := a.engine.Shutdown(drainCtx); err != nil {
		a.log.Warn("drain deadline passed, closed remaining connections", "timeout", time.Duration(a.cfg.DrainTimeout).String())
	}
	close(drained)
	<-sent
	if handedOver {
		c := a.engine.HandoverMetrics.Counts()
		a.log.Info("L4 connections at the takeover", "handedOver", c["handed_over"], "drained", c["drained"], "cut", c["cut"], "http1HandedOver", c["handed_over_http1"])
	}
	// Rules stay in the pods and the state file stays on disk: a pod of an
	// enabled namespace must not silently leave the mesh because the agent
	// stopped; the next agent picks them up from the state file (an older
	// one from the mirror, brought up to date here).
	if err := a.writeMirror(false); err != nil {
		a.log.Error("write state mirror for older agents", "err", err)
	}
	a.mu.Lock()
	for _, p := range a.pods.list() {
		a.uncapture(p)
	}
	a.mu.Unlock()
	adminSrv.Close()
	flushCtx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := a.engine.Tracer.Shutdown(flushCtx); err != nil {
		a.log.Warn("tracing: spans not all exported at stop", "err", err)
	}
	cancel()
	if a.standbyAdmin != nil {
		a.standbyAdmin.Close()
	}
	if a.ebpf.objs != nil {
		// Pins stay: captured pods stay captured (refused until the next
		// agent listens), as under REDIRECT. The kernel-balanced services
		// stay too: they need no agent.
		a.lbObjs.Store(nil)
		a.klb.mu.Lock()
		a.ebpf.objs.Close()
		a.klb.mu.Unlock()
	}
	a.closeSplicer()
	a.log.Info("agent stopped")
	if handedOver && a.kube != nil {
		// In a pod, an agent that exits after a takeover is restarted by
		// kubelet (the old DaemonSet pod is not deleted until the new one
		// is ready), and the restarted container would take over from its
		// own successor, which then exits in turn: a window with no agent
		// at all. So it stays, holding nothing, until the pod is deleted.
		a.log.Info("handed over; idle until this pod is deleted")
		<-ctx.Done()
	}
	return runErr
}

func serveHTTP(s *http.Server, ln net.Listener) error {
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// healthDial connects active health checks from the agent's own network
// namespace (the node's), where every pod is reachable.
func (a *Agent) healthDial(ctx context.Context, addr netip.AddrPort) (*net.TCPConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

// RegisterMetrics adds collectors owned outside the agent (the command's
// GOMAXPROCS controller) to what the admin address serves on /metrics.
func (a *Agent) RegisterMetrics(cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := a.reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	return nil
}

// Reload swaps in the services (and unknownDestinations, zone) of a new
// config without touching running pods; unchanged clusters keep their state.
// Other settings need a restart; Reload says which ones differ.
func (a *Agent) Reload(cfg Config) error {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	rc, err := staticRoutes(cfg)
	if err != nil {
		return err
	}
	if err := a.publishRoutes(rc); err != nil {
		return err
	}
	a.log.Info("routes reloaded", "services", len(cfg.Services))
	old, cur := a.cfg, cfg
	old.Services, cur.Services = nil, nil
	old.UnknownDestinations, cur.UnknownDestinations = "", ""
	old.Zone, cur.Zone = "", ""
	if !reflect.DeepEqual(old, cur) {
		a.log.Warn("reload applied services only; restart the agent for the other changes")
	}
	return nil
}

// sweep releases pods whose network namespace path is gone or now names a
// different namespace: a DEL that never arrived must not keep a dead
// namespace alive through the handle the agent holds.
func (a *Agent) sweep() {
	for _, p := range a.pods.list() {
		id, err := netns.IDOf(p.netnsPath)
		if err == nil && id == p.nsID {
			continue
		}
		a.forget(p.att, "netns gone", false)
	}
}

// forget drops an attachment: closes its listeners and namespace handle
// and, with removeRules, takes its rules out first (at DEL the plugin has
// done that already). Connections already relayed run to their end.
func (a *Agent) forget(att api.Attachment, why string, removeRules bool) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods.get(att)
	if p == nil {
		return false
	}
	if removeRules && p.ns != nil {
		if err := redirect.Remove(p.ns.FdPath(), redirect.WithPinPath(a.cfg.pinPath()), redirect.WithBackgroundRelease()); err != nil {
			a.log.Warn("remove rules", "container", att.ContainerID, "err", err)
		}
	}
	a.release(p, why)
	return true
}

// release forgets p, closing what it held. Called with a.mu held.
func (a *Agent) release(p *pod, why string) {
	a.pods.remove(p.att)
	a.releaseEBPF(p)
	a.uncapture(p)
	a.afterChange(p.att)
	a.log.Info("pod forgotten", "pod", p.meta.Namespace+"/"+p.meta.Name, "container", p.att.ContainerID, "why", why)
}

// captures is the static enrolment policy: a pod is captured when its
// namespace is listed.
func (a *Agent) captures(p api.Pod) (bool, string) {
	if slices.Contains(a.cfg.Capture.Namespaces, p.Namespace) {
		return true, "namespace " + p.Namespace + " is captured"
	}
	return false, "namespace " + p.Namespace + " is not captured"
}

// openAccessLog builds the L7 access log; nil when disabled. A file is
// opened to append and stays open for the agent's life.
func openAccessLog(c AccessLog) (*l7.AccessLog, error) {
	if !c.Enabled {
		return nil, nil
	}
	var w io.Writer = os.Stderr
	if c.Path != "-" {
		f, err := os.OpenFile(c.Path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return nil, fmt.Errorf("accessLog.path: %w", err)
		}
		w = f
	}
	return l7.NewAccessLog(slog.New(slog.NewJSONHandler(w, nil)), c.SampleRate), nil
}

// procsFromEnv reports whether the GOMAXPROCS environment variable sets the
// P count, as the runtime reads it: a positive integer.
func procsFromEnv(v string) bool {
	n, err := strconv.Atoi(v)
	return err == nil && n > 0
}
