// Package capture holds weir's eBPF capture (redirect mode "ebpf"): the
// programs in capture.c, compiled by bpf2go, and the code that loads, pins,
// attaches and feeds them. It needs Linux 5.15 or later (the netns cookie
// in sockops; SO_NETNS_COOKIE came in 5.14, sk_lookup in 5.9), BTF, a
// cgroup v2 hierarchy and a bpffs; Probe names what a node lacks.
//
// Who does what. The agent loads the programs once per start (Load): maps
// are pinned by name and re-used across restarts, and the cgroup links,
// pinned too, are updated in place to the new programs, never attached a
// second time. weir-cni and the agent's onboarding enrol one pod network
// namespace at a time through the pinned maps (Open, Enrol, Release): for
// outbound that is one map update keyed by the netns cookie; inbound adds an
// sk_lookup link on that namespace, pinned under netns/. Pinning is
// deliberate: links held only by a file descriptor detach when the agent
// exits, and captured pods would then reach everything around the agent.
//
// Layout of the pin directory, an upgrade contract like iptables chain names:
//
//	maps/<map name>      every map of capture.c
//	prog_sk_lookup       the sk_lookup program, attached per pod netns
//	link_<program>       cgroup links: connect4, connect6, getpeername4,
//	                     getpeername6, sockops
//	netns/<cookie>       the sk_lookup link of one enrolled pod netns
//
// Removing the directory (Uninstall) detaches everything.
package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// DefaultPinPath is where weir pins its eBPF objects unless told otherwise.
const DefaultPinPath = "/sys/fs/bpf/weir"

// Names inside the pin directory.
const (
	mapsDir     = "maps"
	netnsDir    = "netns"
	skLookupPin = "prog_sk_lookup"
)

// Options say where Load pins and attaches.
type Options struct {
	// PinPath is weir's directory on a bpffs; empty means DefaultPinPath.
	PinPath string
	// Cgroup is the cgroup v2 directory the socket programs attach to. The
	// node's cgroup v2 root catches every pod whatever the runtime's cgroup
	// layout; a parent of the pods' cgroups narrows it. Programs do nothing
	// for sockets of namespaces that are not enrolled.
	Cgroup string
	// Accelerate turns on sockmap acceleration of local pairs (accel.go)
	// for connections made from now on.
	Accelerate bool
	// AccelerateNode (with Accelerate) also accelerates the pair of the
	// agent's upstream socket and its server when the server is a socket
	// in another network namespace of this node (a pod on the same node).
	AccelerateNode bool
	// AgentCgroup is the agent's own cgroup v2 directory (SelfCgroup):
	// when it is outside Cgroup, the sockops program is attached there too
	// (pinned as link_sockops_agent), so the acceleration sees the agent's
	// sockets. Empty: not needed.
	AgentCgroup string
}

// Objects are the loaded programs and maps, held by the agent.
type Objects struct {
	objs  captureObjects
	pin   string
	accel bool
	// accelNode is whether same-node pairs are accelerated too.
	accelNode bool
	// accelErr is why the acceleration stayed off though asked for.
	accelErr error
	// lb is the agent's copy of the kernel-balanced services (lb.go).
	lb lbTable
}

// cgroupProgs are the programs attached to the cgroup, by pin name.
func (o *Objects) cgroupProgs() []struct {
	name   string
	prog   *ebpf.Program
	attach ebpf.AttachType
} {
	return []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{"connect4", o.objs.WeirConnect4, ebpf.AttachCGroupInet4Connect},
		{"connect6", o.objs.WeirConnect6, ebpf.AttachCGroupInet6Connect},
		{"getpeername4", o.objs.WeirGetpeername4, ebpf.AttachCgroupInet4GetPeername},
		{"getpeername6", o.objs.WeirGetpeername6, ebpf.AttachCgroupInet6GetPeername},
		{"sockops", o.objs.WeirSockops, ebpf.AttachCGroupSockOps},
	}
}

// Load loads the programs, pins the maps (re-using pinned ones), makes
// sure each cgroup program is attached to opts.Cgroup exactly once (a
// pinned link is updated to the new program; one attached to another
// cgroup is replaced), moves every pod's sk_lookup link to the new
// program, and pins that program for later enrolments.
func Load(opts Options) (_ *Objects, err error) {
	pin := opts.PinPath
	if pin == "" {
		pin = DefaultPinPath
	}
	if opts.Cgroup == "" {
		return nil, errors.New("load eBPF capture: no cgroup to attach to")
	}
	if err := checkFS(filepath.Dir(pin), unix.BPF_FS_MAGIC, "bpffs"); err != nil {
		return nil, fmt.Errorf("load eBPF capture: pin path %s: %w", pin, err)
	}
	for _, d := range []string{pin, filepath.Join(pin, mapsDir), filepath.Join(pin, netnsDir)} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("load eBPF capture: %w", err)
		}
	}
	spec, err := loadCapture()
	if err != nil {
		return nil, err
	}
	for _, m := range spec.Maps {
		m.Pinning = ebpf.PinByName
	}
	o := &Objects{pin: pin}
	if err := spec.LoadAndAssign(&o.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: filepath.Join(pin, mapsDir)}}); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load eBPF capture programs: %+v", ve)
		}
		return nil, fmt.Errorf("load eBPF capture programs (pinned under %s): %w", pin, err)
	}
	defer func() {
		if err != nil {
			o.Close()
		}
	}()
	if err := o.attachCgroup(opts.Cgroup); err != nil {
		return nil, err
	}
	if err := o.setAccel(opts.Accelerate, opts.AccelerateNode); err != nil {
		return nil, err
	}
	if err := o.attachAgentSockops(opts.Cgroup, opts.AgentCgroup); err != nil {
		return nil, err
	}
	if err := o.pinSkLookup(); err != nil {
		return nil, err
	}
	if err := o.updateNetnsLinks(); err != nil {
		return nil, err
	}
	return o, nil
}

func (o *Objects) attachCgroup(cgroup string) error {
	if err := checkFS(cgroup, unix.CGROUP2_SUPER_MAGIC, "cgroup2"); err != nil {
		return fmt.Errorf("attach eBPF capture to cgroup %s: %w", cgroup, err)
	}
	want, err := inode(cgroup)
	if err != nil {
		return fmt.Errorf("attach eBPF capture: %w", err)
	}
	for _, p := range o.cgroupProgs() {
		if err := o.attachPinned("link_"+p.name, cgroup, want, p.prog, p.attach); err != nil {
			return err
		}
	}
	return nil
}

// attachPinned makes sure prog is attached to cgroup (whose id is want)
// through the link pinned at name: a pinned link on that cgroup is updated
// to prog, one on another cgroup (the configured cgroup changed) or a
// defunct one (its cgroup was removed) is replaced.
func (o *Objects) attachPinned(name, cgroup string, want uint64, prog *ebpf.Program, attach ebpf.AttachType) error {
	path := filepath.Join(o.pin, name)
	l, err := link.LoadPinnedLink(path, nil)
	switch {
	case err == nil:
		info, ierr := l.Info()
		if ierr == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == want {
			uerr := l.Update(prog)
			l.Close()
			if uerr != nil {
				return fmt.Errorf("update pinned link %s to the new program: %w", name, uerr)
			}
			return nil
		}
		l.Unpin()
		l.Close()
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("open pinned link %s: %w", path, err)
	}
	l, err = link.AttachCgroup(link.CgroupOptions{Path: cgroup, Attach: attach, Program: prog})
	if err != nil {
		return fmt.Errorf("attach %s to cgroup %s: %w", name, cgroup, err)
	}
	perr := l.Pin(path)
	l.Close()
	if perr != nil {
		return fmt.Errorf("pin link at %s (an unpinned link would detach when the agent exits): %w", path, perr)
	}
	return nil
}

// agentSockopsPin is the sockops link on the agent's own cgroup.
const agentSockopsPin = "link_sockops_agent"

// attachAgentSockops runs the sockops program for the agent's own sockets
// too when the agent's cgroup lies outside the capture cgroup: the
// acceleration needs it to see the agent's accepted and upstream sockets
// established (an accepted socket belongs to its listener's cgroup). When
// the agent is inside (the usual case: capture on the cgroup v2 root) a
// stale link from an earlier start is removed, so the program never runs
// twice for one socket.
func (o *Objects) attachAgentSockops(cgroup, agentCgroup string) error {
	if agentCgroup == "" || below(agentCgroup, cgroup) {
		l, err := link.LoadPinnedLink(filepath.Join(o.pin, agentSockopsPin), nil)
		if err == nil {
			l.Unpin()
			l.Close()
		}
		return nil
	}
	id, err := inode(agentCgroup)
	if err != nil {
		return fmt.Errorf("attach sockops to the agent's cgroup: %w", err)
	}
	return o.attachPinned(agentSockopsPin, agentCgroup, id, o.objs.WeirSockops, ebpf.AttachCGroupSockOps)
}

// pinSkLookup pins the sk_lookup program beside a name and renames it over
// prog_sk_lookup, so an enrolment never finds the path missing.
func (o *Objects) pinSkLookup() error {
	path := filepath.Join(o.pin, skLookupPin)
	tmp := path + "_new" // bpffs refuses names with a dot
	os.Remove(tmp)
	if err := o.objs.WeirSkLookup.Pin(tmp); err != nil {
		return fmt.Errorf("pin sk_lookup program: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("pin sk_lookup program at %s: %w", path, err)
	}
	return nil
}

// updateNetnsLinks moves every enrolled pod's sk_lookup link to the new
// program. A link whose netns is gone (the kernel severed it: the pod went
// while no agent ran) cannot move; its netns is released instead (link
// unpinned, map entries removed), so one vanished pod does not make the
// whole capture unusable after a restart.
func (o *Objects) updateNetnsLinks() error {
	dir := filepath.Join(o.pin, netnsDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list pod sk_lookup links: %w", err)
	}
	var errs []error
	var severed []uint64
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("open %s: %w", path, err))
			continue
		}
		err = l.Update(o.objs.WeirSkLookup)
		l.Close()
		switch cookie, perr := strconv.ParseUint(e.Name(), 10, 64); {
		case err == nil:
		case errors.Is(err, unix.ENOLINK) && perr == nil:
			severed = append(severed, cookie)
		default:
			errs = append(errs, fmt.Errorf("update %s: %w", path, err))
		}
	}
	if len(severed) > 0 {
		p, err := Open(o.pin)
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("release netns of severed sk_lookup links: %w", err))...)
		}
		defer p.Close()
		for _, c := range severed {
			errs = append(errs, p.Release(c))
		}
	}
	return errors.Join(errs...)
}

// CgroupLinks counts the BPF links attached to the cgroup v2 directory
// cgroup, whoever made them: after any number of agent restarts, weir's
// share of them stays five.
func CgroupLinks(cgroup string) (int, error) {
	id, err := inode(cgroup)
	if err != nil {
		return 0, err
	}
	n := 0
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		l := it.Take()
		info, err := l.Info()
		l.Close()
		if err == nil && info.Cgroup() != nil && info.Cgroup().CgroupId == id {
			n++
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("list BPF links: %w", err)
	}
	return n, nil
}

// Close releases the agent's handles. Pinned maps and links stay: capture
// goes on (connections are refused while no listener is there, as under
// REDIRECT) until the next agent loads again.
func (o *Objects) Close() error { return o.objs.Close() }

// PinPath is the directory the objects are pinned in.
func (o *Objects) PinPath() string { return o.pin }

// Uninstall removes weir's pin directory: every cgroup and pod link
// detaches once no process holds it, every map goes with its last user.
func Uninstall(pinPath string) error {
	if pinPath == "" {
		pinPath = DefaultPinPath
	}
	if err := os.RemoveAll(pinPath); err != nil {
		return fmt.Errorf("remove eBPF pins under %s: %w", pinPath, err)
	}
	return nil
}

// AllowCgroup exempts the sockets of one cgroup (the agent's own) from
// capture. Sockets are told apart by the cgroup of the task calling
// connect(): a pod cannot put a task into the agent's cgroup without write
// access to the host's cgroup filesystem, which containers do not get.
func (o *Objects) AllowCgroup(id uint64) error {
	if err := o.objs.AgentCgroups.Put(id, uint8(1)); err != nil {
		return fmt.Errorf("exempt cgroup %d from capture: %w", id, err)
	}
	return nil
}

// Flags the sockops program ors into a record's family once the agent's
// accepted socket is established (capture.c, accel_passive).
const (
	origDecided = 0x4000
	origAccel   = 0x8000
)

// AccelState is what an OrigDstAccel record says of the agent's accepted
// socket: whether it is in the accel sockhash, or nothing.
type AccelState uint8

const (
	// AccelUnknown: the sockops program did not say (the socket was not
	// announced, the record was read before the program ran, or an older
	// program wrote it): ask Accelerated.
	AccelUnknown AccelState = iota
	// AccelOut: the socket is not in the accel sockhash.
	AccelOut
	// AccelIn: the socket is in the accel sockhash.
	AccelIn
)

// OrigDstAccel returns (and forgets) where the connection from client,
// accepted by the agent's outbound listener in the netns with this cookie,
// was going: the sockops program published it before the app's SYN left.
// With it comes whether the agent's accepted socket went into the accel
// sockhash, which the sockops program wrote into the same record (one
// system call answers both).
func (o *Objects) OrigDstAccel(netnsCookie uint64, client netip.AddrPort) (netip.AddrPort, AccelState, error) {
	k := captureTupleKey{Netns: netnsCookie, Addr: addrKey(client.Addr()), Port: client.Port()}
	var v captureEndpoint
	if err := o.objs.OrigTuples.LookupAndDelete(&k, &v); err != nil {
		return netip.AddrPort{}, AccelUnknown, fmt.Errorf("original destination of %s (netns cookie %d): %w", client, netnsCookie, err)
	}
	st := AccelUnknown
	switch {
	case v.Family&origAccel != 0:
		st = AccelIn
	case v.Family&origDecided != 0:
		st = AccelOut
	}
	return endpointAddr(v), st, nil
}

// TagClient records on the agent's upstream socket fd (before it connects
// to the app) the client the app's accept() and getpeername() must report.
func (o *Objects) TagClient(fd int, client netip.AddrPort) error {
	v := endpointOf(client)
	if err := o.objs.ClientOf.Update(uint32(fd), &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("tag upstream socket with client %s: %w", client, err)
	}
	return nil
}

// SetListener puts the agent's inbound listener (fd) in the sockhash under
// the pod address it serves; sk_lookup steers that address's captured
// connections to it. The kernel drops the entry when the socket closes.
// The listener must not be MPTCP (such sockets cannot enter a sockhash).
func (o *Objects) SetListener(addr netip.Addr, fd int) error {
	k := addrKey(addr)
	if err := o.objs.InListeners.Update(&k, uint64(fd), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("put inbound listener for %s in the sockhash: %w", addr, err)
	}
	return nil
}

// DeleteListener removes the listener entry of a pod address.
func (o *Objects) DeleteListener(addr netip.Addr) error {
	k := addrKey(addr)
	if err := o.objs.InListeners.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete inbound listener of %s: %w", addr, err)
	}
	return nil
}

// Stat names the counters the programs keep.
var statNames = []string{
	"connect_redirected", "connect_excluded", "connect_no_storage", "origdst_published",
	"peer_restored", "client_reported", "inbound_steered", "inbound_no_listener",
}

// Stats sums the programs' per-CPU counters by name.
func (o *Objects) Stats() (map[string]uint64, error) {
	return sumPerCPU(o.objs.Stats, statNames)
}

// sumPerCPU reads a per-CPU array of counters, one name per index.
func sumPerCPU(m *ebpf.Map, names []string) (map[string]uint64, error) {
	out := make(map[string]uint64, len(names))
	for i, name := range names {
		var per []uint64
		if err := m.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("read counter %s: %w", name, err)
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		out[name] = sum
	}
	return out, nil
}

// soNetnsCookie is SO_NETNS_COOKIE (Linux 5.14), missing from x/sys.
const soNetnsCookie = 71

// NetnsCookieOf returns the cookie of the network namespace socket fd
// lives in: the key enrolment and original destinations use.
func NetnsCookieOf(fd int) (uint64, error) {
	v, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
	if err != nil {
		return 0, fmt.Errorf("SO_NETNS_COOKIE: %w", err)
	}
	return v, nil
}

// CurrentNetnsCookie returns the cookie of the calling thread's network
// namespace (call it on a locked thread switched into the pod's).
func CurrentNetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("socket for the netns cookie: %w", err)
	}
	defer unix.Close(fd)
	return NetnsCookieOf(fd)
}

// addrKey is an address as the programs store it: 16 bytes in network
// order, IPv4 mapped into IPv6, read as four native-endian words.
func addrKey(a netip.Addr) [4]uint32 {
	b := a.Unmap().As16()
	var out [4]uint32
	for i := range out {
		out[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return out
}

func keyAddr(k [4]uint32) netip.Addr {
	var b [16]byte
	for i, w := range k {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b).Unmap()
}

// netOrder16 is a port in network byte order as a native-endian word.
func netOrder16(p uint16) uint16 {
	return binary.NativeEndian.Uint16([]byte{byte(p >> 8), byte(p)})
}

func endpointOf(ap netip.AddrPort) captureEndpoint {
	fam := uint16(unix.AF_INET6)
	if ap.Addr().Unmap().Is4() {
		fam = unix.AF_INET
	}
	return captureEndpoint{Addr: addrKey(ap.Addr()), Port: netOrder16(ap.Port()), Family: fam}
}

func endpointAddr(e captureEndpoint) netip.AddrPort {
	return netip.AddrPortFrom(keyAddr(e.Addr), netOrder16(e.Port))
}

// cookieWords splits a netns cookie as the programs copy it into an LPM key.
func cookieWords(c uint64) [2]uint32 {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], c)
	return [2]uint32{binary.NativeEndian.Uint32(b[:4]), binary.NativeEndian.Uint32(b[4:])}
}

func wordsCookie(w [2]uint32) uint64 {
	var b [8]byte
	binary.NativeEndian.PutUint32(b[:4], w[0])
	binary.NativeEndian.PutUint32(b[4:], w[1])
	return binary.NativeEndian.Uint64(b[:])
}

// below reports whether directory dir is top or lies below it, comparing
// (device, inode) up dir's path, so two mounts of one cgroup hierarchy
// compare right.
func below(dir, top string) bool {
	var want unix.Stat_t
	if err := unix.Stat(top, &want); err != nil {
		return false
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		var st unix.Stat_t
		if err := unix.Stat(d, &st); err == nil && st.Dev == want.Dev && st.Ino == want.Ino {
			return true
		}
		if d == "/" || d == "." {
			return false
		}
	}
}

// checkFS fails unless path is on a filesystem with the given magic.
func checkFS(path string, magic int64, name string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if int64(st.Type) != magic {
		return fmt.Errorf("%s is not on a %s (filesystem magic %#x)", path, name, st.Type)
	}
	return nil
}

// inode is a file's inode number: a cgroup v2 directory's is its cgroup id.
func inode(path string) (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}

func cookieName(c uint64) string { return strconv.FormatUint(c, 10) }
