package redirect

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/bpf/capture"
)

// ModeEBPF programs no rule and no route: it enrols the namespace in the
// eBPF capture the agent loaded and pinned (package bpf/capture). Outbound
// is one entry keyed by the namespace's cookie in a map the cgroup connect
// programs read; inbound is an sk_lookup link on the namespace plus entries
// keyed by the pod's addresses. Exclusions live in maps, from the same
// Spec fields as the iptables modes. Applying it also takes out whatever
// rules and routes another mode left in the namespace.

// Option adjusts Apply, Remove and Installed (each says which it heeds).
type Option func(*options)

type options struct {
	pinPath   string
	trace     func(phase string, took time.Duration)
	bgRelease bool
}

// WithBackgroundRelease has Remove close its nftables netlink sockets in
// the background, for a long-lived caller (the agent) that must not wait.
// Deleting weir's table is committed before Remove returns; it is the
// socket's release that waits: the kernel frees what a deleting
// transaction removed only after an RCU grace period, and releasing any
// nftables netlink socket while such work is pending waits for it (about
// 10 ms). A short-lived caller gains nothing: its exit would wait instead.
func WithBackgroundRelease() Option { return func(o *options) { o.bgRelease = true } }

// WithPinPath names the bpffs directory of the agent's eBPF capture, for a
// node whose agent pins somewhere other than capture.DefaultPinPath.
func WithPinPath(path string) Option { return func(o *options) { o.pinPath = path } }

// WithTrace has Apply report how long each of its phases took, in order
// (see Phases), for whoever chases the latency of a pod's ADD: weir-cni logs
// them and weir-addbench reports their distribution.
func WithTrace(fn func(phase string, took time.Duration)) Option {
	return func(o *options) { o.trace = fn }
}

func optionsOf(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// applyEBPF enrols the namespace at netnsPath; s is defaulted and valid.
// The enrolment goes in first, then other modes' rules go out; if that
// fails, an enrolment this call made is taken back.
func applyEBPF(netnsPath string, s Spec) error {
	err := inNetns(netnsPath, func() error {
		nl, err := openNetlink()
		if err != nil {
			return err
		}
		err = checkFamilies(nl, s)
		nl.close()
		if err != nil {
			return err
		}
		pod, err := ebpfPod(s)
		if err != nil {
			return err
		}
		return withPinned(s.PinPath, func(p *capture.Pinned, cookie uint64, nsFd int) error {
			was, err := p.Enrolled(cookie)
			if err != nil {
				return err
			}
			if err := p.Enrol(nsFd, cookie, pod); err != nil {
				return err
			}
			if err := remove(false); err != nil {
				err = fmt.Errorf("remove rules of another mode: %w", err)
				if !was {
					if rerr := p.Release(cookie); rerr != nil {
						err = errors.Join(err, fmt.Errorf("roll back: %w", rerr))
					}
				}
				return err
			}
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("apply redirect in %s: %w", netnsPath, err)
	}
	return nil
}

// verifyEBPF runs inside the namespace.
func verifyEBPF(s Spec) error {
	pod, err := ebpfPod(s)
	if err != nil {
		return err
	}
	var probs []string
	err = withPinned(s.PinPath, func(p *capture.Pinned, cookie uint64, nsFd int) error {
		var err error
		probs, err = p.Verify(nsFd, cookie, pod)
		return err
	})
	if err != nil {
		return err
	}
	if other, err := installed(); err != nil {
		return err
	} else if other {
		probs = append(probs, "iptables rules or policy routes of another mode are present")
	}
	if len(probs) > 0 {
		return &VerifyError{Problems: probs}
	}
	return nil
}

// removeEBPF runs inside the namespace: it releases the namespace from the
// capture pinned at pinPath, if any is loaded there.
func removeEBPF(pinPath string) error {
	err := withPinned(pinPath, func(p *capture.Pinned, cookie uint64, _ int) error {
		return p.Release(cookie)
	})
	if errors.Is(err, capture.ErrNotLoaded) {
		return nil
	}
	return err
}

// enrolledEBPF runs inside the namespace.
func enrolledEBPF(pinPath string) (bool, error) {
	var on bool
	err := withPinned(pinPath, func(p *capture.Pinned, cookie uint64, _ int) error {
		var err error
		on, err = p.Enrolled(cookie)
		return err
	})
	if errors.Is(err, capture.ErrNotLoaded) {
		return false, nil
	}
	return on, err
}

// withPinned opens the pinned capture and the calling thread's namespace
// (its cookie and an fd on it) for f.
func withPinned(pinPath string, f func(p *capture.Pinned, cookie uint64, nsFd int) error) error {
	p, err := capture.Open(pinPath)
	if err != nil {
		return err
	}
	defer p.Close()
	cookie, err := capture.CurrentNetnsCookie()
	if err != nil {
		return err
	}
	fd, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open own netns: %w", err)
	}
	defer unix.Close(fd)
	return f(p, cookie, fd)
}

// ebpfPod is what s enrols in the calling thread's namespace: its own
// addresses (outbound to them stays in the pod; inbound is keyed by them).
func ebpfPod(s Spec) (capture.Pod, error) {
	pod := capture.Pod{
		OutboundPort:         s.OutboundPort,
		IPv4:                 s.IPv4,
		IPv6:                 s.IPv6,
		ExcludeOutboundPorts: s.ExcludeOutboundPorts,
		ExcludeInboundPorts:  s.ExcludeInboundPorts,
		IncludeInboundPorts:  s.IncludeInboundPorts,
	}
	for _, c := range s.ExcludeOutboundCIDRs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return pod, fmt.Errorf("excludeOutboundCIDRs: %w", err)
		}
		pod.ExcludeOutboundCIDRs = append(pod.ExcludeOutboundCIDRs, p)
	}
	addrs, err := ownAddrs()
	if err != nil {
		return pod, err
	}
	for _, a := range addrs {
		if (a.Is4() && s.IPv4) || (a.Is6() && s.IPv6) {
			pod.Addrs = append(pod.Addrs, a)
		}
	}
	return pod, nil
}

// ownAddrs lists the namespace's addresses, loopback and link-local left
// out (checkFamilies skips the same).
func ownAddrs() ([]netip.Addr, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink: %w", err)
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []netip.Addr
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok || ip.IsLoopback() || ip.IsLinkLocalUnicast() {
				continue
			}
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}
