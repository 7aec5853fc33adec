package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ErrNotLoaded is wrapped when the pin directory holds no loaded capture:
// the agent has not started with eBPF capture on this node (or it was
// uninstalled).
var ErrNotLoaded = errors.New("eBPF capture is not loaded")

// Pod is what enrolling one pod netns programs; it mirrors the fields of
// redirect.Spec that eBPF capture reads.
type Pod struct {
	OutboundPort uint16
	// IPv4 and IPv6 select the families whose connects are captured.
	IPv4, IPv6 bool
	// Addrs are the pod's own addresses: outbound connects to them stay
	// in the pod (as loopback does under iptables), and inbound capture
	// is keyed by them.
	Addrs                []netip.Addr
	ExcludeOutboundPorts []uint16
	ExcludeOutboundCIDRs []netip.Prefix
	ExcludeInboundPorts  []uint16
	IncludeInboundPorts  []uint16
}

// Pinned is a handle on the maps and the sk_lookup program the agent
// pinned, for enrolling and releasing pods (weir-cni, the agent's
// onboarding). Close it after use.
type Pinned struct {
	pin                                       string
	pods, outPorts, outCIDRs, inPods, inPorts *ebpf.Map
	skLookup                                  *ebpf.Program
}

// Open opens the pinned capture objects under pinPath (empty: the default).
// It wraps ErrNotLoaded when nothing is pinned there.
func Open(pinPath string) (_ *Pinned, err error) {
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	p := &Pinned{pin: pinPath}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	for _, m := range []struct {
		name string
		dst  **ebpf.Map
	}{
		{captureMapPods, &p.pods}, {captureMapOutPorts, &p.outPorts}, {captureMapOutCidrs, &p.outCIDRs},
		{captureMapInPods, &p.inPods}, {captureMapInPorts, &p.inPorts},
	} {
		path := filepath.Join(pinPath, mapsDir, m.name)
		if *m.dst, err = ebpf.LoadPinnedMap(path, nil); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return nil, fmt.Errorf("%w: no %s", ErrNotLoaded, path)
			}
			return nil, fmt.Errorf("open pinned map %s: %w", path, err)
		}
	}
	path := filepath.Join(pinPath, skLookupPin)
	if p.skLookup, err = ebpf.LoadPinnedProgram(path, nil); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: no %s", ErrNotLoaded, path)
		}
		return nil, fmt.Errorf("open pinned program %s: %w", path, err)
	}
	return p, nil
}

// Close releases the handles; nothing pinned changes.
func (p *Pinned) Close() error {
	for _, m := range []*ebpf.Map{p.pods, p.outPorts, p.outCIDRs, p.inPods, p.inPorts} {
		if m != nil {
			m.Close()
		}
	}
	if p.skLookup != nil {
		p.skLookup.Close()
	}
	return nil
}

// entries is every map entry that belongs to one pod netns.
type entries struct {
	pod      *capturePodConfig
	outPorts []capturePortKey
	outCIDRs []captureCidrKey
	inPods   map[[4]uint32]captureInConfig
	inPorts  []captureInPortKey
}

// want is what enrolling pod under cookie must leave in the maps.
func want(cookie uint64, pod Pod) entries {
	e := entries{inPods: map[[4]uint32]captureInConfig{}}
	var flags uint16
	if pod.IPv4 {
		flags |= 1
	}
	if pod.IPv6 {
		flags |= 2
	}
	e.pod = &capturePodConfig{OutboundPort: pod.OutboundPort, Flags: flags}
	for _, port := range dedupe(pod.ExcludeOutboundPorts) {
		e.outPorts = append(e.outPorts, capturePortKey{Netns: cookie, Port: port})
	}
	prefixes := slices.Clone(pod.ExcludeOutboundCIDRs)
	for _, a := range pod.Addrs {
		prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
	}
	seen := map[captureCidrKey]bool{}
	for _, pfx := range prefixes {
		pfx = pfx.Masked()
		bits := pfx.Bits()
		if pfx.Addr().Is4() {
			bits += 96
		}
		k := captureCidrKey{Prefixlen: uint32(64 + bits), Netns: cookieWords(cookie), Addr: addrKey(pfx.Addr())}
		if !seen[k] {
			seen[k] = true
			e.outCIDRs = append(e.outCIDRs, k)
		}
	}
	var inFlags uint16
	ports := pod.ExcludeInboundPorts
	if len(pod.IncludeInboundPorts) > 0 {
		inFlags, ports = 1, pod.IncludeInboundPorts
	}
	for _, a := range pod.Addrs {
		k := addrKey(a)
		e.inPods[k] = captureInConfig{Netns: cookie, Flags: inFlags}
		for _, port := range dedupe(ports) {
			e.inPorts = append(e.inPorts, captureInPortKey{Addr: k, Port: port})
		}
	}
	e.sort()
	return e
}

func (e *entries) sort() {
	sort.Slice(e.outPorts, func(i, j int) bool { return e.outPorts[i].Port < e.outPorts[j].Port })
	sort.Slice(e.outCIDRs, func(i, j int) bool { return fmt.Sprint(e.outCIDRs[i]) < fmt.Sprint(e.outCIDRs[j]) })
	sort.Slice(e.inPorts, func(i, j int) bool { return fmt.Sprint(e.inPorts[i]) < fmt.Sprint(e.inPorts[j]) })
}

func dedupe(ports []uint16) []uint16 {
	out := slices.Clone(ports)
	slices.Sort(out)
	return slices.Compact(out)
}

// have reads what the maps hold for cookie.
func (p *Pinned) have(cookie uint64) (entries, error) {
	e := entries{inPods: map[[4]uint32]captureInConfig{}}
	var pc capturePodConfig
	switch err := p.pods.Lookup(cookie, &pc); {
	case err == nil:
		e.pod = &pc
	case !errors.Is(err, ebpf.ErrKeyNotExist):
		return e, fmt.Errorf("read enrolment: %w", err)
	}
	var pk capturePortKey
	var one uint8
	it := p.outPorts.Iterate()
	for it.Next(&pk, &one) {
		if pk.Netns == cookie {
			e.outPorts = append(e.outPorts, pk)
		}
	}
	if err := it.Err(); err != nil {
		return e, fmt.Errorf("read outbound port exclusions: %w", err)
	}
	var ck captureCidrKey
	it = p.outCIDRs.Iterate()
	for it.Next(&ck, &one) {
		if wordsCookie(ck.Netns) == cookie {
			e.outCIDRs = append(e.outCIDRs, ck)
		}
	}
	if err := it.Err(); err != nil {
		return e, fmt.Errorf("read outbound CIDR exclusions: %w", err)
	}
	var ak [4]uint32
	var ic captureInConfig
	it = p.inPods.Iterate()
	for it.Next(&ak, &ic) {
		if ic.Netns == cookie {
			e.inPods[ak] = ic
		}
	}
	if err := it.Err(); err != nil {
		return e, fmt.Errorf("read inbound enrolment: %w", err)
	}
	var ipk captureInPortKey
	it = p.inPorts.Iterate()
	for it.Next(&ipk, &one) {
		if _, ok := e.inPods[ipk.Addr]; ok {
			e.inPorts = append(e.inPorts, ipk)
		}
	}
	if err := it.Err(); err != nil {
		return e, fmt.Errorf("read inbound ports: %w", err)
	}
	e.sort()
	return e, nil
}

// converge makes the maps hold to for cookie where they hold from: new
// exclusions and inbound entries first, then the enrolment itself, then
// stale entries out; an empty to (no pod) removes the enrolment first.
func (p *Pinned) converge(cookie uint64, from, to entries) error {
	var errs []error
	put := func(m *ebpf.Map, k, v any) {
		if err := m.Put(k, v); err != nil {
			errs = append(errs, fmt.Errorf("%s: put %v: %w", m, k, err))
		}
	}
	del := func(m *ebpf.Map, k any) {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("%s: delete %v: %w", m, k, err))
		}
	}
	if to.pod == nil && from.pod != nil {
		del(p.pods, cookie)
	}
	for _, k := range to.outPorts {
		put(p.outPorts, k, uint8(1))
	}
	for _, k := range to.outCIDRs {
		put(p.outCIDRs, k, uint8(1))
	}
	for _, k := range to.inPorts {
		put(p.inPorts, k, uint8(1))
	}
	for k, v := range to.inPods {
		put(p.inPods, k, v)
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if to.pod != nil {
		put(p.pods, cookie, *to.pod)
	}
	for k := range from.inPods {
		if _, ok := to.inPods[k]; !ok {
			del(p.inPods, k)
		}
	}
	for _, k := range from.inPorts {
		if !slices.Contains(to.inPorts, k) {
			del(p.inPorts, k)
		}
	}
	for _, k := range from.outCIDRs {
		if !slices.Contains(to.outCIDRs, k) {
			del(p.outCIDRs, k)
		}
	}
	for _, k := range from.outPorts {
		if !slices.Contains(to.outPorts, k) {
			del(p.outPorts, k)
		}
	}
	return errors.Join(errs...)
}

// Enrol captures the pod netns open at netnsFd, whose cookie is cookie:
// exclusions and inbound entries, the sk_lookup link (pinned under
// netns/<cookie>), and last the enrolment entry that turns outbound capture
// on. Repeating it converges on pod. On error the maps are put back as they
// were.
func (p *Pinned) Enrol(netnsFd int, cookie uint64, pod Pod) error {
	from, err := p.have(cookie)
	if err != nil {
		return err
	}
	hadLink, err := p.linkOK(cookie, netnsFd)
	if err != nil {
		return err
	}
	if !hadLink {
		if err := p.attachLink(cookie, netnsFd); err != nil {
			return err
		}
	}
	if err := p.converge(cookie, from, want(cookie, pod)); err != nil {
		now, rerr := p.have(cookie)
		if rerr == nil {
			rerr = p.converge(cookie, now, from)
		}
		if !hadLink {
			rerr = errors.Join(rerr, p.detachLink(cookie))
		}
		if rerr != nil {
			err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
		}
		return fmt.Errorf("enrol netns cookie %d: %w", cookie, err)
	}
	return nil
}

// Release takes the pod netns with this cookie out of capture: the
// enrolment entry first (outbound connects go direct from then on), then
// inbound entries, the sk_lookup link and the exclusions. Releasing a netns
// that is not enrolled is a no-op.
func (p *Pinned) Release(cookie uint64) error {
	from, err := p.have(cookie)
	if err != nil {
		return err
	}
	var errs []error
	if err := p.converge(cookie, from, entries{}); err != nil {
		errs = append(errs, err)
	}
	if err := p.detachLink(cookie); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release netns cookie %d: %w", cookie, err)
	}
	return nil
}

// Enrolled reports whether anything of weir's capture refers to the netns
// with this cookie: an enrolment entry, an inbound entry or a link.
func (p *Pinned) Enrolled(cookie uint64) (bool, error) {
	e, err := p.have(cookie)
	if err != nil {
		return false, err
	}
	if e.pod != nil || len(e.inPods) > 0 || len(e.outPorts) > 0 || len(e.outCIDRs) > 0 {
		return true, nil
	}
	_, err = os.Stat(p.linkPath(cookie))
	return err == nil, nil
}

// Verify lists what differs between the maps and link of the netns open at
// netnsFd and what Enrol(pod) would leave; nil when nothing does.
func (p *Pinned) Verify(netnsFd int, cookie uint64, pod Pod) ([]string, error) {
	have, err := p.have(cookie)
	if err != nil {
		return nil, err
	}
	w := want(cookie, pod)
	var probs []string
	switch {
	case have.pod == nil:
		probs = append(probs, "ebpf: netns not enrolled (no entry in the pods map)")
	case *have.pod != *w.pod:
		probs = append(probs, fmt.Sprintf("ebpf: enrolment is %+v, want %+v", *have.pod, *w.pod))
	}
	diff := func(what string, have, want []string) {
		for _, s := range want {
			if !slices.Contains(have, s) {
				probs = append(probs, "ebpf: missing "+what+" "+s)
			}
		}
		for _, s := range have {
			if !slices.Contains(want, s) {
				probs = append(probs, "ebpf: unexpected "+what+" "+s)
			}
		}
	}
	diff("outbound port exclusion", portNames(have.outPorts), portNames(w.outPorts))
	diff("outbound CIDR exclusion", cidrNames(have.outCIDRs), cidrNames(w.outCIDRs))
	diff("inbound address", inNames(have.inPods), inNames(w.inPods))
	diff("inbound port", inPortNames(have.inPorts), inPortNames(w.inPorts))
	ok, err := p.linkOK(cookie, netnsFd)
	if err != nil {
		return nil, err
	}
	if !ok {
		probs = append(probs, "ebpf: no sk_lookup link on the netns")
	}
	return probs, nil
}

func portNames(ks []capturePortKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, fmt.Sprint(k.Port))
	}
	return out
}

func cidrNames(ks []captureCidrKey) []string {
	var out []string
	for _, k := range ks {
		a := keyAddr(k.Addr)
		bits := int(k.Prefixlen) - 64
		if a.Is4() {
			bits -= 96
		}
		out = append(out, netip.PrefixFrom(a, bits).String())
	}
	return out
}

func inNames(m map[[4]uint32]captureInConfig) []string {
	var out []string
	for k, v := range m {
		mode := "exclude-listed"
		if v.Flags&1 != 0 {
			mode = "include-listed"
		}
		out = append(out, keyAddr(k).String()+" "+mode)
	}
	return out
}

func inPortNames(ks []captureInPortKey) []string {
	var out []string
	for _, k := range ks {
		out = append(out, netip.AddrPortFrom(keyAddr(k.Addr), k.Port).String())
	}
	return out
}

func (p *Pinned) linkPath(cookie uint64) string {
	return filepath.Join(p.pin, netnsDir, cookieName(cookie))
}

// linkOK reports whether the pinned sk_lookup link of cookie exists and is
// attached to the netns open at netnsFd.
func (p *Pinned) linkOK(cookie uint64, netnsFd int) (bool, error) {
	l, err := link.LoadPinnedLink(p.linkPath(cookie), nil)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("open sk_lookup link of netns cookie %d: %w", cookie, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil || info.NetNs() == nil {
		return false, nil
	}
	ino, err := fdInode(netnsFd)
	if err != nil {
		return false, err
	}
	return uint64(info.NetNs().NetnsInode) == ino, nil
}

func (p *Pinned) attachLink(cookie uint64, netnsFd int) error {
	// A pin left over (defunct, or for another program) goes first.
	if err := p.detachLink(cookie); err != nil {
		return err
	}
	l, err := link.AttachNetNs(netnsFd, p.skLookup)
	if err != nil {
		return fmt.Errorf("attach sk_lookup to netns cookie %d: %w", cookie, err)
	}
	defer l.Close()
	if err := l.Pin(p.linkPath(cookie)); err != nil {
		return fmt.Errorf("pin sk_lookup link of netns cookie %d: %w", cookie, err)
	}
	return nil
}

func (p *Pinned) detachLink(cookie uint64) error {
	if err := os.Remove(p.linkPath(cookie)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("unpin sk_lookup link of netns cookie %d: %w", cookie, err)
	}
	return nil
}

func fdInode(fd int) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, fmt.Errorf("stat netns fd: %w", err)
	}
	return st.Ino, nil
}
