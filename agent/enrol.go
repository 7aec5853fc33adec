package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/agent/podconfig"
	"github.com/weir-mesh/weir/proxy"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/redirect"
)

// decision is the enrolment policy's answer for one pod.
type decision struct {
	captured  bool
	reason    string
	overrides podconfig.Overrides
	// err means no decision could be made (the API is unreachable and the
	// pod is unknown): a CNI ADD must fail rather than guess.
	err error
}

// decide asks the policy in force: the Kubernetes source when running in a
// cluster, else the static namespace list. Static overrides apply in both,
// pod annotations on top of them.
func (a *Agent) decide(ctx context.Context, p api.Pod) decision {
	static := a.cfg.overridesFor(p.Namespace, p.Name)
	if a.kube == nil {
		captured, why := a.captures(p)
		return decision{captured: captured, reason: why, overrides: static}
	}
	d := a.kube.DecideUID(ctx, p.Namespace, p.Name, p.UID)
	if d.Err != nil {
		return decision{err: d.Err, reason: d.Reason}
	}
	return decision{captured: d.Captured, reason: d.Reason, overrides: mergeOverrides(static, d.Overrides)}
}

// mergeOverrides lays b over a: a set field of b wins.
func mergeOverrides(a, b podconfig.Overrides) podconfig.Overrides {
	if b.Mode != "" {
		a.Mode = b.Mode
	}
	if b.ExcludeInboundPorts != nil || b.IncludeInboundPorts != nil {
		a.ExcludeInboundPorts, a.IncludeInboundPorts = b.ExcludeInboundPorts, b.IncludeInboundPorts
	}
	if b.ExcludeOutboundPorts != nil {
		a.ExcludeOutboundPorts = b.ExcludeOutboundPorts
	}
	if b.ExcludeOutboundCIDRs != nil {
		a.ExcludeOutboundCIDRs = b.ExcludeOutboundCIDRs
	}
	return a
}

// specFor is the redirect a captured pod gets.
func (a *Agent) specFor(p *pod, d decision) (redirect.Spec, error) {
	v4, v6, err := families(p.cniIPs)
	if err != nil {
		return redirect.Spec{}, err
	}
	mode := p.nodeMode
	if mode == "" {
		mode = redirect.ModeRedirect
	}
	spec, err := a.resolveEBPF(d.overrides.Apply(a.cfg.redirectSpec(v4, v6, mode)))
	if err != nil {
		return redirect.Spec{}, fmt.Errorf("capture for %s/%s: %w", p.meta.Namespace, p.meta.Name, err)
	}
	if spec.Backend == "" {
		spec.Backend = a.backendFor(p)
	}
	spec = spec.WithDefaults()
	if err := spec.Validate(); err != nil {
		return redirect.Spec{}, fmt.Errorf("capture for %s/%s: %w", p.meta.Namespace, p.meta.Name, err)
	}
	return spec, nil
}

// capture opens the pod's namespace and its listeners and starts serving
// them. It does not touch rules: the plugin programs them at ADD, the
// agent itself when it onboards or repairs. Every path into capture comes
// through here, so the namespace guard (netns.go) runs here once more, on
// the very namespace the listeners would open in. Called with a.mu held.
func (a *Agent) capture(p *pod, spec redirect.Spec, tm *phaseTimer) error {
	ns, err := netns.Open(p.netnsPath)
	if err != nil {
		return err
	}
	if ns.ID() != p.nsID {
		ns.Close()
		return fmt.Errorf("netns %s now is another namespace", p.netnsPath)
	}
	if err := a.notNode(p.netnsPath, ns.ID()); err != nil {
		ns.Close()
		return err
	}
	if err := a.notShared(p.netnsPath, ns.ID(), p.att, p.meta); err != nil {
		ns.Close()
		return err
	}
	var ls []proxy.Listener
	if spec.Mode == redirect.ModeEBPF {
		ls, p.ebpfCookie, err = a.openEBPFListeners(ns, spec, p.ips)
	} else {
		ls, err = openListeners(ns, spec, a.isStandby())
	}
	if err != nil {
		ns.Close()
		return fmt.Errorf("open capture listeners for %s/%s: %w", p.meta.Namespace, p.meta.Name, err)
	}
	p.ns, p.spec, p.listeners = ns, spec, ls
	if a.isStandby() {
		if err := a.steerListeners(p); err != nil {
			closeListeners(ls)
			ns.Close()
			p.ns, p.spec, p.listeners = nil, redirect.Spec{}, nil
			return fmt.Errorf("standby listeners for %s/%s: %w", p.meta.Namespace, p.meta.Name, err)
		}
	}
	tm.mark(phaseListen)
	migrate, stamps := tunePod(ns, a.monotonicTimestamps(spec))
	if migrate != nil {
		a.log.Warn("cannot set net.ipv4.tcp_migrate_req in pod netns; a takeover may reset connections queued on the old agent", "pod", p.meta.Namespace+"/"+p.meta.Name, "err", migrate)
	}
	if stamps != nil {
		a.log.Warn("cannot set net.ipv4.tcp_timestamps=2 in pod netns; the pod's connects may stall on the agent's TIME_WAIT sockets", "pod", p.meta.Namespace+"/"+p.meta.Name, "err", stamps)
	}
	tm.mark(phaseMigrate)
	w := &proxy.Workload{Name: p.meta.Namespace + "/" + p.meta.Name, Netns: ns, Addrs: p.ips}
	p.workload = w
	for _, l := range ls {
		p.serving.Add(1)
		go func() {
			defer p.serving.Done()
			a.engine.Serve(l, w)
		}()
	}
	tm.mark(phaseServe)
	return nil
}

// uncapture closes the pod's listeners and namespace handle; relayed
// connections run to their end.
func (a *Agent) uncapture(p *pod) {
	if p.ns == nil {
		return
	}
	a.closeListeners(p.listeners)
	p.serving.Wait()
	p.workload.Close()
	p.ns.Close()
	p.ns, p.listeners, p.spec, p.workload = nil, nil, redirect.Spec{}, nil
}

// onboard captures a running pod: listeners first, then the rules that point
// at them, all or nothing.
func (a *Agent) onboard(p *pod, spec redirect.Spec) error {
	if err := a.capture(p, spec, nil); err != nil {
		return err
	}
	if err := redirect.Apply(p.ns.FdPath(), spec); err != nil {
		a.uncapture(p)
		return fmt.Errorf("apply rules: %w", err)
	}
	return nil
}

// offboard releases a running pod: rules first, then the listeners.
func (a *Agent) offboard(p *pod) error {
	if p.ns == nil {
		return nil
	}
	if err := redirect.Remove(p.ns.FdPath(), redirect.WithPinPath(a.cfg.pinPath())); err != nil {
		return fmt.Errorf("remove rules: %w", err)
	}
	if a.monotonicTimestamps(p.spec) {
		if err := restoreTimestamps(p.ns); err != nil {
			a.log.Warn("cannot set net.ipv4.tcp_timestamps back to 1 in released pod", "pod", p.meta.Namespace+"/"+p.meta.Name, "err", err)
		}
	}
	a.uncapture(p)
	return nil
}

// monotonicTimestamps says whether a pod captured with spec runs with
// net.ipv4.tcp_timestamps=2 (capture.tcpTimestamps): REDIRECT only, the one
// mode that gives all the pod's outbound connections one local address.
func (a *Agent) monotonicTimestamps(spec redirect.Spec) bool {
	return spec.Mode == redirect.ModeRedirect && a.cfg.Capture.TCPTimestamps != timestampsKeep
}

// reconcile brings every known pod in line with the policy: pods whose
// netns vanished are forgotten; newly enabled pods are onboarded, disabled
// ones released, changed ones re-programmed, and captured ones whose rules
// were damaged repaired. In a cluster it also finds the namespaces of
// enabled pods the agent never saw an ADD for.
//
// It takes the agent's lock pod by pod, not for the whole walk: checking a
// pod's rules costs a netlink dump or an iptables-save, and a CNI ADD
// arriving meanwhile must wait for one pod's check at most, not for the
// node's (seconds at 500 pods, measured by weir-addbench as ADDs stuck in
// the "lock" phase).
func (a *Agent) reconcile(ctx context.Context, why string) {
	a.mu.Lock()
	if a.kube != nil {
		a.discover(ctx)
		a.afterChange()
	}
	pods := a.pods.list()
	a.mu.Unlock()
	for _, p := range pods {
		a.mu.Lock()
		// Replaced (a new ADD) or forgotten (DEL) since the list was taken:
		// whoever did that decided for it.
		if a.pods.get(p.att) == p && a.reconcilePod(ctx, p) {
			a.afterChange(p.att)
		}
		a.mu.Unlock()
	}
	a.log.Debug("reconciled", "why", why, "pods", len(pods))
}

// reconcilePod is reconcile's work for one pod; it reports whether the
// pod's state changed. Called with a.mu held.
func (a *Agent) reconcilePod(ctx context.Context, p *pod) bool {
	name := p.meta.Namespace + "/" + p.meta.Name
	if id, err := netns.IDOf(p.netnsPath); err != nil || id != p.nsID {
		a.releaseEBPF(p)
		a.uncapture(p)
		a.pods.remove(p.att)
		a.log.Info("pod forgotten", "pod", name, "why", "netns gone")
		return true
	}
	d := a.decide(ctx, p.meta)
	if d.err != nil {
		a.log.Warn("reconcile: no decision, leaving pod as it is", "pod", name, "err", d.err)
		return false
	}
	if !d.captured {
		if p.ns == nil {
			return false
		}
		if err := a.offboard(p); err != nil {
			a.log.Error("release failed", "pod", name, "err", err)
			return false
		}
		a.log.Info("pod released", "pod", name, "why", d.reason)
		a.recordCapture(p, false, d.reason)
		return true
	}
	spec, err := a.specFor(p, d)
	if err != nil {
		a.log.Error("reconcile: invalid capture", "pod", name, "err", err)
		return false
	}
	switch {
	case p.ns == nil:
		if err := a.onboard(p, spec); err != nil {
			a.log.Error("onboard failed", "pod", name, "err", err)
			return false
		}
		a.log.Info("pod onboarded", "pod", name, "mode", spec.Mode, "why", d.reason)
		a.recordCapture(p, true, d.reason)
		return true
	case !equalSpec(p.spec, spec) && rulesOnlyChange(p.spec, spec):
		if err := redirect.Apply(p.ns.FdPath(), spec); err != nil {
			a.log.Error("re-program failed", "pod", name, "err", err)
			return false
		}
		p.spec = spec
		p.touched.Add(1)
		a.log.Info("pod re-programmed in place", "pod", name, "backend", spec.Backend)
		return true
	case !equalSpec(p.spec, spec):
		if err := a.offboard(p); err != nil {
			a.log.Error("re-program: release failed", "pod", name, "err", err)
			return false
		}
		if err := a.onboard(p, spec); err != nil {
			a.log.Error("re-program: onboard failed", "pod", name, "err", err)
		}
		a.log.Info("pod re-programmed", "pod", name, "mode", spec.Mode)
		return true
	default:
		if err := redirect.Verify(p.ns.FdPath(), p.spec); err != nil {
			a.log.Warn("rules damaged, repairing", "pod", name, "problem", err)
			if err := redirect.Apply(p.ns.FdPath(), p.spec); err != nil {
				a.log.Error("repair failed", "pod", name, "err", err)
			}
		}
		return false
	}
}

// afterChange refreshes what depends on the set of captured pods. Called
// with a.mu held. Naming the attachments that changed (a CNI call changes
// one) persists those only; with none named every pod is looked at.
func (a *Agent) afterChange(changed ...api.Attachment) {
	// The state file belongs to one agent at a time: not to a successor
	// before its predecessor handed over, not to a predecessor after.
	if !a.ownsState.Load() {
		return
	}
	if err := a.saveState(changed); err != nil {
		a.log.Error("persist state", "err", err)
	}
	a.watch.changed()
}

// recordCapture writes the enrolment onto the pod object, in the
// background: the API being slow must not hold up capture.
func (a *Agent) recordCapture(p *pod, captured bool, reason string) {
	if a.kube == nil {
		return
	}
	ns, name := p.meta.Namespace, p.meta.Name
	go func() {
		if err := a.kube.RecordCapture(a.baseCtx, ns, name, captured, reason); err != nil {
			a.log.Warn("record capture on pod", "pod", ns+"/"+name, "err", err)
		}
	}()
}

// discover finds the network namespace of enabled pods on this node that
// the agent has no attachment for (they were added while it was down), by
// looking for a namespace holding the pod's IP. Called with a.mu held.
func (a *Agent) discover(ctx context.Context) {
	known := map[string]bool{}
	for _, p := range a.pods.list() {
		known[p.meta.Namespace+"/"+p.meta.Name] = true
	}
	var want []kubePod
	for _, kp := range a.kube.Pods() {
		if !kp.Decision.Captured || known[kp.Namespace+"/"+kp.Name] || len(kp.IPs) == 0 {
			continue
		}
		want = append(want, kubePod{namespace: kp.Namespace, name: kp.Name, uid: kp.UID, ips: kp.IPs})
	}
	if len(want) == 0 {
		return
	}
	found := findNetns(a.cfg.NetnsDirs, want, a.nodeNetns)
	for _, kp := range want {
		path, ok := found[kp.namespace+"/"+kp.name]
		if !ok {
			a.log.Warn("no network namespace found for enabled pod", "pod", kp.namespace+"/"+kp.name, "ips", kp.ips)
			continue
		}
		att := api.Attachment{ContainerID: discoveredPrefix + kp.uid, IfName: "eth0"}
		meta := api.Pod{Namespace: kp.namespace, Name: kp.name, UID: kp.uid}
		id, err := a.admitNetns(path, att, meta)
		if err != nil {
			if !notExist(err) {
				a.log.Warn("discovery: namespace refused", "pod", kp.namespace+"/"+kp.name, "err", err)
			}
			continue
		}
		if a.deleted.has(id, kp.uid, time.Now()) {
			// Its CNI DEL came a moment ago: the rest of the chain is
			// tearing the namespace down, not a pod added while we were away.
			continue
		}
		var cidrs []string
		for _, ip := range kp.ips {
			cidrs = append(cidrs, netip.PrefixFrom(ip, ip.BitLen()).String())
		}
		p := &pod{att: att, meta: meta, netnsPath: path, nsID: id, cniIPs: cidrs, ips: kp.ips}
		a.pods.swap(p)
		a.log.Info("found netns of a pod added while the agent was away", "pod", kp.namespace+"/"+kp.name, "netns", path)
	}
}

// localPodAddrs lists the addresses in h that sit on an interface whose
// peer (a veth's other end) is in the agent's namespace.
func localPodAddrs(h *netns.Handle) ([]netip.Addr, error) {
	host, err := netns.Host()
	if err != nil {
		return nil, err
	}
	if h.ID() == host.ID() {
		return nil, nil
	}
	var out []netip.Addr
	err = h.Do(func() error {
		hostID, err := netlink.GetNetNsIdByFd(host.Fd())
		if err != nil || hostID < 0 {
			return fmt.Errorf("no peer link to the agent's namespace")
		}
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			link, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil || link.Attrs().NetNsID != hostID {
				continue
			}
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
		return nil
	})
	return out, err
}

// kubePod is what discovery needs of a pod.
type kubePod struct {
	namespace, name, uid string
	ips                  []netip.Addr
}

// findNetns scans the namespace bind-mount directories (then /proc) for
// namespaces holding the pods' IPs on an interface whose peer lives in the
// agent's own namespace: a pod of this node. Matching the IP alone is not
// enough: namespaces of other nodes on the same machine (test worlds,
// nested clusters) may hold the same addresses, and rules must never be
// programmed into them. The node's own namespaces (skip) are never
// candidates, nor is anything that is no network namespace (netns.Open).
func findNetns(dirs []string, pods []kubePod, skip nodeNamespaces) map[string]string {
	byIP := map[netip.Addr]string{}
	for _, p := range pods {
		for _, ip := range p.ips {
			byIP[ip] = p.namespace + "/" + p.name
		}
	}
	out := map[string]string{}
	for _, path := range netnsCandidates(dirs) {
		h, err := netns.Open(path)
		if err != nil {
			continue
		}
		if _, node := skip[h.ID()]; node {
			h.Close()
			continue
		}
		addrs, err := localPodAddrs(h)
		h.Close()
		if err != nil {
			continue
		}
		for _, ip := range addrs {
			if key, ok := byIP[ip]; ok {
				if _, dup := out[key]; !dup {
					out[key] = path
				}
			}
		}
	}
	return out
}
