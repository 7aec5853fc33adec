package agent

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/redirect"
)

// pod is one attachment the agent knows, captured or not. Knowing the
// netns of uncaptured pods lets the agent onboard them later without a
// restart. When captured, ns, spec and listeners are set.
type pod struct {
	att       api.Attachment
	meta      api.Pod
	netnsPath string
	nsID      netns.ID
	cniIPs    []string // addresses as the CNI result gave them (CIDR)
	ips       []netip.Addr
	nodeMode  redirect.Mode // the conflist's mode, the node default
	// ebpfCookie is the netns cookie of a pod captured in mode ebpf (its
	// key in the eBPF maps, usable after the namespace is gone).
	ebpfCookie uint64

	ns        *netns.Handle
	spec      redirect.Spec
	listeners []proxy.Listener
	workload  *proxy.Workload
	serving   sync.WaitGroup
	// touched counts in-place changes the state file must record (a spec
	// re-programmed without new listeners); see savedMark.
	touched atomic.Uint64
}

// registry holds known pods by attachment, and indexes them by network
// namespace so the guard's "is this namespace another pod's" costs the same
// at 5 pods as at 500. Its lock guards the maps only; nothing on the
// connection path takes it.
type registry struct {
	mu   sync.Mutex
	pods map[api.Attachment]*pod
	byNS map[netns.ID]map[api.Attachment]*pod
}

func newRegistry() *registry {
	return &registry{pods: map[api.Attachment]*pod{}, byNS: map[netns.ID]map[api.Attachment]*pod{}}
}

// index adds p to byNS, unindex takes it out. Called with r.mu held.
func (r *registry) index(p *pod) {
	m := r.byNS[p.nsID]
	if m == nil {
		m = map[api.Attachment]*pod{}
		r.byNS[p.nsID] = m
	}
	m[p.att] = p
}

func (r *registry) unindex(p *pod) {
	if m := r.byNS[p.nsID]; m != nil && m[p.att] == p {
		delete(m, p.att)
		if len(m) == 0 {
			delete(r.byNS, p.nsID)
		}
	}
}

// inNetns lists the pods known in namespace id, by container id.
func (r *registry) inNetns(id netns.ID) []*pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.byNS[id]
	out := make([]*pod, 0, len(m))
	for _, p := range m {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].att.ContainerID < out[j].att.ContainerID })
	return out
}

func (r *registry) get(a api.Attachment) *pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pods[a]
}

// swap stores p under its attachment and returns what was there.
func (r *registry) swap(p *pod) *pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	old := r.pods[p.att]
	if old != nil {
		r.unindex(old)
	}
	r.pods[p.att] = p
	r.index(p)
	return old
}

func (r *registry) remove(a api.Attachment) *pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.pods[a]
	if p != nil {
		r.unindex(p)
	}
	delete(r.pods, a)
	return p
}

func (r *registry) list() []*pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*pod, 0, len(r.pods))
	for _, p := range r.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].att.ContainerID < out[j].att.ContainerID })
	return out
}

// appendSorted appends every pod to dst, by container id, as list does.
func (r *registry) appendSorted(dst []*pod) []*pod {
	r.mu.Lock()
	for _, p := range r.pods {
		dst = append(dst, p)
	}
	r.mu.Unlock()
	slices.SortFunc(dst, func(a, b *pod) int { return strings.Compare(a.att.ContainerID, b.att.ContainerID) })
	return dst
}

// snapshot copies the map, for a walk that must not hold the lock.
func (r *registry) snapshot() map[api.Attachment]*pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return maps.Clone(r.pods)
}

func (r *registry) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.pods)
}

func (r *registry) capturedCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, p := range r.pods {
		if p.ns != nil {
			n++
		}
	}
	return n
}

// families reports which address families a pod has, from its CNI result.
// A pod with no address at all gets both, so nothing escapes capture.
func families(ips []string) (v4, v6 bool, err error) {
	for _, s := range ips {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return false, false, fmt.Errorf("pod IP %q: want an address or CIDR", s)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if p.Addr().Unmap().Is4() {
			v4 = true
		} else {
			v6 = true
		}
	}
	if !v4 && !v6 {
		return true, true, nil
	}
	return v4, v6, nil
}

// podAddrs parses the pod's CNI addresses (CIDR form), skipping bad ones
// (families has rejected those already).
func podAddrs(ips []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ips {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Addr().Unmap())
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// equalSpec reports whether two specs program the same capture.
func equalSpec(a, b redirect.Spec) bool {
	return reflect.DeepEqual(a, b)
}

// openListeners opens the capture sockets of spec inside ns. Outbound
// listeners bind loopback only: REDIRECT in OUTPUT targets loopback (and
// TPROXY's outbound rule delivers there), and a wildcard bind would let peers
// reach the outbound port directly. In TPROXY mode every listener is
// IP_TRANSPARENT, without which TPROXY drops the packets. All carry
// SO_REUSEPORT so a successor agent or a standby can join them. A standby's
// are plain TCP (no MPTCP): the reuseport steering program is attached
// through them, and the program's test covers a plain TCP socket steering a
// group whose first member (the primary's) is MPTCP.
func openListeners(ns *netns.Handle, spec redirect.Spec, standby bool) ([]proxy.Listener, error) {
	wants := captureAddrs(spec)
	transparent := spec.Mode == redirect.ModeTPROXY
	var out []proxy.Listener
	for _, w := range wants {
		ln, err := ns.Listen(w.addr, netns.SocketOptions{ReusePort: true, Transparent: transparent, NoMPTCP: standby})
		if err != nil {
			closeListeners(out)
			return nil, err
		}
		out = append(out, proxy.Listener{TCP: ln, Direction: w.dir, Transparent: transparent})
	}
	return out, nil
}

// closeListeners closes listeners the engine serves (Engine.CloseListener:
// a listener on the event loops is no longer Go's to close).
func (a *Agent) closeListeners(ls []proxy.Listener) {
	for _, l := range ls {
		if err := a.engine.CloseListener(l); err != nil && !errors.Is(err, net.ErrClosed) {
			_ = err // a listener that cannot close is already gone
		}
	}
}

// closeListeners closes listeners no engine serves yet.
func closeListeners(ls []proxy.Listener) {
	for _, l := range ls {
		if err := l.TCP.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			_ = err // a listener that cannot close is already gone
		}
	}
}

// listenAddr is one capture listener's address and direction.
type listenAddr struct {
	addr netip.AddrPort
	dir  proxy.Direction
}

// captureAddrs are the listeners every capture mode opens for spec:
// outbound on loopback (where REDIRECT, TPROXY and the eBPF connect
// rewrite deliver), inbound on the wildcard, per family.
func captureAddrs(spec redirect.Spec) []listenAddr {
	var out []listenAddr
	if spec.IPv4 {
		out = append(out,
			listenAddr{netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), spec.OutboundPort), proxy.Outbound},
			listenAddr{netip.AddrPortFrom(netip.IPv4Unspecified(), spec.InboundPort), proxy.Inbound})
	}
	if spec.IPv6 {
		out = append(out,
			listenAddr{netip.AddrPortFrom(netip.IPv6Loopback(), spec.OutboundPort), proxy.Outbound},
			listenAddr{netip.AddrPortFrom(netip.IPv6Unspecified(), spec.InboundPort), proxy.Inbound})
	}
	return out
}
