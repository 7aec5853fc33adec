package agent

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/bpf/steer"
	"github.com/weir-mesh/weir/redirect"
)

// Hot standby, so a crash of the agent refuses no connection.
//
// A standby is a second weir-agent process (standby.enabled, or --standby
// with the primary's config file). While the primary lives it:
//
//  1. holds GET /v1/standby/watch open on the primary's socket; the primary
//     writes a "pods" line after each change of its pod set, once the pod
//     state files are written;
//  2. reads the state files (the same ones a restarted agent reads, so the
//     standby's view is exactly what a restart would see, and a second
//     encoding of pods never has to be kept in step) and opens its own
//     listeners in every captured pod: they join the primary's SO_REUSEPORT
//     groups, and a steering program (bpf/steer) on each group sends every
//     new connection to the group's first socket, the primary's;
//  3. serves nothing else: no CNI socket, no rules, no state writes, no
//     node taint; its admin address is standby.admin.
//
// When the primary's process dies the kernel closes its sockets: its
// listeners leave their groups, the standby's become first, and new
// connections reach the standby with no gap; connections queued on the dead
// listeners move to the standby's too (net.ipv4.tcp_migrate_req). The watch
// stream ends at the same moment. The standby then dials the socket path:
// if an agent answers (a successor that took over, an upgrade) it watches
// that one; if none does, it promotes itself: it binds the socket path and
// the admin address, takes the state files, re-captures pods it did not hold
// (eBPF-mode ones, or one added just before the crash), reconciles and
// reports ready, exactly as a restarted agent would, only with every
// listener already open. With standby.respawn it then starts a new standby.
//
// Connections the dead primary was relaying are lost with it; moving those
// needs their sockets, which only a live process can hand over (takeover).

// watchers tells standbys watching this agent that its pod set changed.
type watchers struct {
	mu  sync.Mutex
	gen uint64
	ch  chan struct{} // closed and replaced at every change
}

func (w *watchers) current() (uint64, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = make(chan struct{})
	}
	return w.gen, w.ch
}

func (w *watchers) changed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.gen++
	if w.ch != nil {
		close(w.ch)
	}
	w.ch = make(chan struct{})
}

// handleStandbyWatch is the primary's side of the watch: the stream lives
// as long as this agent does (or until it hands over).
func (a *Agent) handleStandbyWatch(w http.ResponseWriter, r *http.Request) {
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	gen, ch := a.watch.current()
	if enc.Encode(api.StandbyEvent{Event: "hello", Pid: os.Getpid(), Generation: gen}) != nil {
		return
	}
	fl.Flush()
	a.log.Info("a standby is watching")
	for {
		select {
		case <-r.Context().Done():
			return
		case <-a.handover:
			enc.Encode(api.StandbyEvent{Event: "handover"})
			fl.Flush()
			return
		case <-ch:
			gen, ch = a.watch.current()
			if enc.Encode(api.StandbyEvent{Event: "pods", Generation: gen}) != nil {
				return
			}
			fl.Flush()
		}
	}
}

// isStandby reports whether this process still acts as a standby (not
// promoted).
func (a *Agent) isStandby() bool { return a.standbyRole.Load() }

// standBy is the standby's life until it is promoted (nil) or ctx ends
// (ctx.Err()). What it opened for the standby role only (its socket) is
// closed before it returns; pod listeners stay. The route sources run on
// runCtx, which outlives a promotion.
func (a *Agent) standBy(ctx, runCtx context.Context) error {
	a.standbyRole.Store(true)
	if other, _ := findPredecessor(a.cfg.Standby.Socket); other != nil {
		other.close()
		return fmt.Errorf("a standby already answers on %s", a.cfg.Standby.Socket)
	}
	sockLn, err := listenUnix(a.cfg.Standby.Socket, false)
	if err != nil {
		return fmt.Errorf("standby socket: %w", err)
	}
	adminLn, err := listenAdmin(a.cfg.Standby.Admin)
	if err != nil {
		sockLn.Close()
		os.Remove(a.cfg.Standby.Socket)
		return fmt.Errorf("standby admin listen on %s: %w", a.cfg.Standby.Admin, err)
	}
	var primaryPid int
	var pidMu sync.Mutex
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+api.PathStandbyStatus, func(w http.ResponseWriter, r *http.Request) {
		pidMu.Lock()
		pp := primaryPid
		pidMu.Unlock()
		writeJSON(w, http.StatusOK, api.StandbyStatus{Pid: os.Getpid(), Ready: a.ready.Load(), Pods: a.pods.capturedCount(), PrimaryPid: pp})
	})
	sockSrv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	adminSrv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 5 * time.Second}
	go serveHTTP(sockSrv, sockLn)
	go serveHTTP(adminSrv, adminLn)
	defer func() {
		sockSrv.Close()
		os.Remove(a.cfg.Standby.Socket)
	}()
	// The admin address stays open after a promotion unless a new standby
	// is to be started here (it needs the address): a supervisor probing
	// the standby's container must not find a promoted one dead.
	a.standbyAdmin = adminSrv
	if err := a.startSources(runCtx); err != nil {
		return err
	}
	a.log.Info("standby started", "primary", a.cfg.Socket, "socket", a.cfg.Standby.Socket, "admin", a.cfg.Standby.Admin)

	waiting, hadPrimary := false, false
	for {
		w, err := a.watchPrimary(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if hadPrimary {
				// The agent that answered after the last stream ended
				// is gone too.
				a.log.Warn("standby: no primary answers; promoting", "err", err)
				return nil
			}
			if !waiting {
				a.log.Info("standby: no primary answers yet; waiting", "socket", a.cfg.Socket, "err", err)
				waiting = true
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		waiting, hadPrimary = false, true
		pidMu.Lock()
		primaryPid = w.pid
		pidMu.Unlock()
		a.syncFromState()
		a.ready.Store(true)
		a.log.Info("standby ready", "primaryPid", w.pid, "pods", a.pods.capturedCount())
		handedOver := a.followPrimary(ctx, w)
		a.promotedAt = time.Now()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// The stream ended: an agent answering on the socket means an
		// upgrade (a successor took over), not a crash.
		if a.primaryAnswers(ctx) {
			a.log.Info("standby: the primary changed; watching the new one", "handedOver", handedOver)
			continue
		}
		a.log.Warn("standby: the primary is gone; promoting", "primaryPid", w.pid, "handedOver", handedOver)
		return nil
	}
}

// primaryAnswers reports whether an agent answers a status call on the
// socket. A connect alone proves nothing: a dying process's listener may
// outlive, by a moment, the watch stream that already ended, and accept
// into its backlog a connection the kernel then resets.
func (a *Agent) primaryAnswers(ctx context.Context) bool {
	c := &http.Client{
		Timeout: time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", a.cfg.Socket)
			},
			DisableKeepAlives: true,
		},
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://weir-agent"+api.PathStatus, nil)
	resp, err := c.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// stopStandby ends a standby that was not promoted: its listeners close
// (the primary's stay, so nothing is refused) and what it relays (little:
// only what reached it while a group had no program yet) drains.
func (a *Agent) stopStandby() {
	a.ready.Store(false)
	a.mu.Lock()
	for _, p := range a.pods.list() {
		a.uncapture(p)
	}
	a.mu.Unlock()
	drainCtx, cancel := context.WithTimeout(context.Background(), time.Duration(a.cfg.DrainTimeout))
	defer cancel()
	if err := a.engine.Shutdown(drainCtx); err != nil {
		a.log.Warn("standby: drain deadline passed, closed remaining connections")
	}
	if a.ebpf.objs != nil {
		a.ebpf.objs.Close()
	}
	a.closeSplicer()
	if a.standbyAdmin != nil {
		a.standbyAdmin.Close()
	}
	a.log.Info("standby stopped")
}

// primaryWatch is an open watch stream.
type primaryWatch struct {
	conn net.Conn
	r    *bufio.Reader
	pid  int
}

// watchPrimary opens the watch stream on the primary's socket and reads its
// hello.
func (a *Agent) watchPrimary(ctx context.Context) (*primaryWatch, error) {
	var d net.Dialer
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := d.DialContext(dctx, "unix", a.cfg.Socket)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	req, _ := http.NewRequest(http.MethodGet, "http://weir-agent"+api.PathStandbyWatch, nil)
	if err := req.Write(c); err != nil {
		c.Close()
		return nil, fmt.Errorf("send watch: %w", err)
	}
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read watch answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("the agent on %s refused the standby watch: %s (an agent without standby support?)", a.cfg.Socket, resp.Status)
	}
	// The body is chunked: read events through the response body.
	w := &primaryWatch{conn: c, r: bufio.NewReader(resp.Body)}
	var hello api.StandbyEvent
	line, err := w.r.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &hello)
	}
	if err != nil || hello.Event != "hello" {
		c.Close()
		return nil, fmt.Errorf("watch: no hello from the primary: %v", err)
	}
	c.SetDeadline(time.Time{})
	w.pid = hello.Pid
	return w, nil
}

// followPrimary mirrors the primary's pods until the stream ends, and says
// whether the primary announced a handover.
func (a *Agent) followPrimary(ctx context.Context, w *primaryWatch) (handedOver bool) {
	stop := context.AfterFunc(ctx, func() { w.conn.Close() })
	defer stop()
	defer w.conn.Close()
	events := make(chan api.StandbyEvent)
	go func() {
		defer close(events)
		for {
			line, err := w.r.ReadBytes('\n')
			if err != nil {
				return
			}
			var ev api.StandbyEvent
			if json.Unmarshal(line, &ev) == nil {
				events <- ev
			}
		}
	}()
	// A resync now and then covers a change whose event was lost (none is
	// expected: the stream is reliable while it lives).
	resync := time.NewTicker(time.Duration(a.cfg.SweepInterval))
	defer resync.Stop()
	for {
		select {
		case ev, ok := <-events:
			if !ok {
				return handedOver
			}
			switch ev.Event {
			case "pods":
				a.syncFromState()
			case "handover":
				handedOver = true
			}
		case <-resync.C:
			a.syncFromState()
		}
	}
}

// syncFromState makes the standby's listeners match the primary's state
// files: pods it lists get listeners (and the steering program), pods it no
// longer lists, or lists with another namespace or spec, lose them. No rule
// is touched: the primary owns them. Pods in eBPF mode are left to the
// promotion: their inbound path is a sockhash entry naming one socket,
// which a standby must not take.
func (a *Agent) syncFromState() {
	a.mu.Lock()
	defer a.mu.Unlock()
	saved, err := a.loadState()
	if err != nil {
		a.log.Error("standby: read state", "err", err)
		return
	}
	want := make(map[api.Attachment]savedPod, len(saved))
	for _, sp := range saved {
		if sp.Spec != nil && sp.Spec.Mode == redirect.ModeEBPF {
			continue
		}
		want[sp.Attachment] = sp
	}
	for _, p := range a.pods.list() {
		sp, ok := want[p.att]
		if ok && sp.NetnsID == p.nsID && (sp.Spec == nil) == (p.ns == nil) && (sp.Spec == nil || equalSpec(*sp.Spec, p.spec)) {
			delete(want, p.att)
			continue
		}
		a.uncapture(p)
		a.pods.remove(p.att)
	}
	added := 0
	for _, sp := range want {
		p, ok := a.admitSaved(sp)
		if !ok {
			continue
		}
		if sp.Spec != nil {
			if err := a.capture(p, *sp.Spec, nil); err != nil {
				a.log.Error("standby: cannot open listeners", "pod", sp.Pod.Namespace+"/"+sp.Pod.Name, "err", err)
				continue
			}
			added++
		}
		a.pods.swap(p)
	}
	a.afterChange()
	a.log.Debug("standby: synced with the primary's state", "added", added, "captured", a.pods.capturedCount())
}

// steerListeners puts the standby's listeners of p behind the primary's
// (bpf/steer). A listener that cannot take the program is closed: without
// it the kernel would spread connections over both agents, which works but
// is not what a standby is for.
func (a *Agent) steerListeners(p *pod) error {
	for _, l := range p.listeners {
		if err := steer.ToFirst(l.TCP); err != nil {
			return fmt.Errorf("steer listener %s: %w", l.TCP.Addr(), err)
		}
	}
	return nil
}

// startSources starts the Kubernetes and xDS sources once (a standby needs
// its routes before the first connection reaches it).
func (a *Agent) startSources(ctx context.Context) error {
	if a.sourcesStarted {
		return nil
	}
	a.sourcesStarted = true
	if a.kube != nil {
		if err := a.kube.Run(ctx); err != nil {
			return fmt.Errorf("kubernetes: %w", err)
		}
		a.syncKube()
	}
	a.xds.start(ctx)
	return nil
}

// respawnStandby starts a new standby after a promotion: this binary, with
// the arguments this process got (so --standby, or the config file that
// says standby: true). Its output goes where this process's goes.
func (a *Agent) respawnStandby() {
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...)
	cmd.Args[0] = os.Args[0]
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	// Its own process group: a signal meant for this process's group (a
	// terminal's ^C) must not take the standby down with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		a.log.Error("cannot start a new standby", "err", err)
		return
	}
	a.log.Info("started a new standby", "pid", cmd.Process.Pid)
	done := make(chan struct{})
	a.child = &childStandby{cmd: cmd, done: done}
	go func() {
		err := cmd.Wait()
		a.log.Info("standby exited", "pid", cmd.Process.Pid, "err", err)
		close(done)
	}()
}

// childStandby is a standby this agent started.
type childStandby struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// stop ends a standby this agent started, at a graceful stop: the agent
// stopping on purpose must not leave a standby that promotes itself.
func (c *childStandby) stop(timeout time.Duration) {
	if c == nil {
		return
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		<-c.done
	}
}
