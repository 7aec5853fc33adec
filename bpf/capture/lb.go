package capture

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
)

// Kernel balancing of services (services[].dataplane: kernel): an enrolled
// pod's connect to a service address goes straight to one of the service's
// endpoints, rewritten by the connect programs (capture.c, lb_pick), so the
// connection has no proxy in its path. The agent writes the table with
// SetKernelServices; it lives in pinned maps, so it outlives the agent like
// enrolment does.

// MaxKernelSlots caps the slots of one service address: an endpoint of
// weight w takes w slots (weights divided by their greatest common
// divisor, scaled down past the cap).
const MaxKernelSlots = 256

// KernelService is one service address balanced in the kernel.
type KernelService struct {
	// Addr is the address and port pods dial.
	Addr netip.AddrPort
	// Random picks a slot at random; false goes round them in turn.
	Random bool
	// Slots are the endpoints the connect program picks from, an endpoint
	// repeated as often as its weight says; each must have Addr's family.
	// None refuses connects (ECONNREFUSED): no endpoint is up.
	Slots []netip.AddrPort
}

// lbTable is the agent's copy of what it wrote into lb_backends, by
// service id, so an unchanged service costs no system call per sync.
type lbTable struct {
	mu    sync.Mutex
	slots map[uint32][]captureEndpoint
	// swept: stale slots left by an earlier agent are gone.
	swept bool
}

const lbRandom = 1 // capture.c LB_RANDOM

// SetKernelServices makes the kernel's table of balanced services hold
// want and nothing else. Per service address the order keeps every
// connect served during the change: new slots are written before the
// count that exposes them, and a smaller count lands before the slots
// beyond it go. Entries no longer wanted (a service removed, or left by an
// earlier agent) are deleted.
func (o *Objects) SetKernelServices(want []KernelService) error {
	t := &o.lb
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.slots == nil {
		t.slots = map[uint32][]captureEndpoint{}
	}
	have, err := o.kernelServiceIDs()
	if err != nil {
		return err
	}
	used := map[uint32]bool{}
	for _, s := range have {
		used[s.Id] = true
	}
	next := uint32(1)
	alloc := func() uint32 {
		for used[next] {
			next++
		}
		used[next] = true
		return next
	}
	var errs []error
	wanted := map[captureLbKey]bool{}
	for _, ks := range want {
		if len(ks.Slots) > MaxKernelSlots {
			errs = append(errs, fmt.Errorf("kernel service %s: %d slots, at most %d", ks.Addr, len(ks.Slots), MaxKernelSlots))
			continue
		}
		k := lbKeyOf(ks.Addr)
		wanted[k] = true
		var err error
		slots := make([]captureEndpoint, len(ks.Slots))
		for i, e := range ks.Slots {
			if e.Addr().Unmap().Is4() != ks.Addr.Addr().Unmap().Is4() {
				err = fmt.Errorf("kernel service %s: endpoint %s is of the other address family", ks.Addr, e)
				break
			}
			slots[i] = endpointOf(e)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var flags uint32
		if ks.Random {
			flags = lbRandom
		}
		cur, ok := have[k]
		if !ok {
			cur.Id = alloc()
			delete(t.slots, cur.Id)
		}
		if c, ok := t.slots[cur.Id]; ok && uint32(len(c)) != cur.Count {
			// Someone else (the other agent of a takeover) changed it.
			delete(t.slots, cur.Id)
		}
		old, err := o.lbSlots(cur.Id, cur.Count)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok && cur.Flags == flags && slices.Equal(old, slots) {
			continue
		}
		if err := o.writeKernelService(k, cur.Id, flags, old, slots); err != nil {
			errs = append(errs, fmt.Errorf("kernel service %s: %w", ks.Addr, err))
		}
	}
	for k, s := range have {
		if wanted[k] {
			continue
		}
		if err := o.objs.LbServices.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete kernel service %s: %w", lbKeyAddr(k), err))
			continue
		}
		old, _ := o.lbSlots(s.Id, s.Count)
		errs = append(errs, o.deleteSlots(s.Id, 0, uint32(len(old))))
		delete(t.slots, s.Id)
	}
	errs = append(errs, o.sweepSlots())
	return errors.Join(errs...)
}

// writeKernelService moves one service address from its old slots to
// slots: slots first, then the service entry, then the slots beyond the
// new count.
func (o *Objects) writeKernelService(k captureLbKey, id, flags uint32, old, slots []captureEndpoint) error {
	for i, e := range slots {
		if i < len(old) && old[i] == e {
			continue
		}
		bk := captureLbBackendKey{Id: id, Slot: uint32(i)}
		if err := o.objs.LbBackends.Put(&bk, &e); err != nil {
			return fmt.Errorf("put endpoint slot %d: %w", i, err)
		}
	}
	o.lb.slots[id] = slots
	v := captureLbService{Id: id, Count: uint32(len(slots)), Flags: flags}
	if err := o.objs.LbServices.Put(&k, &v); err != nil {
		return fmt.Errorf("put service entry: %w", err)
	}
	return o.deleteSlots(id, uint32(len(slots)), uint32(len(old)))
}

func (o *Objects) deleteSlots(id, from, to uint32) error {
	var errs []error
	for i := from; i < to; i++ {
		bk := captureLbBackendKey{Id: id, Slot: i}
		if err := o.objs.LbBackends.Delete(&bk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete endpoint slot %d of kernel service id %d: %w", i, id, err))
		}
	}
	return errors.Join(errs...)
}

// lbSlots is what lb_backends holds for id's first count slots: the
// agent's copy, or read from the map the first time (entries an earlier
// agent wrote).
func (o *Objects) lbSlots(id, count uint32) ([]captureEndpoint, error) {
	if s, ok := o.lb.slots[id]; ok {
		return s, nil
	}
	var out []captureEndpoint
	for i := uint32(0); i < count; i++ {
		var e captureEndpoint
		bk := captureLbBackendKey{Id: id, Slot: i}
		switch err := o.objs.LbBackends.Lookup(&bk, &e); {
		case errors.Is(err, ebpf.ErrKeyNotExist):
			e = captureEndpoint{} // rewritten below
		case err != nil:
			return nil, fmt.Errorf("read endpoint slot %d of kernel service id %d: %w", i, id, err)
		}
		out = append(out, e)
	}
	o.lb.slots[id] = out
	return out, nil
}

// kernelServiceIDs reads lb_services.
func (o *Objects) kernelServiceIDs() (map[captureLbKey]captureLbService, error) {
	out := map[captureLbKey]captureLbService{}
	var k captureLbKey
	var v captureLbService
	it := o.objs.LbServices.Iterate()
	for it.Next(&k, &v) {
		out[k] = v
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read kernel services: %w", err)
	}
	return out, nil
}

// sweepSlots deletes endpoint slots no service entry covers (an agent
// stopped halfway through a change), once per agent: after that, every
// slot the maps hold is in the agent's copy.
func (o *Objects) sweepSlots() error {
	if o.lb.swept {
		return nil
	}
	var bk captureLbBackendKey
	var e captureEndpoint
	var stale []captureLbBackendKey
	it := o.objs.LbBackends.Iterate()
	for it.Next(&bk, &e) {
		if s, ok := o.lb.slots[bk.Id]; !ok || bk.Slot >= uint32(len(s)) {
			stale = append(stale, bk)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read kernel service endpoints: %w", err)
	}
	var errs []error
	for _, k := range stale {
		if err := o.objs.LbBackends.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete stale endpoint slot %+v: %w", k, err))
		}
	}
	o.lb.swept = len(errs) == 0
	return errors.Join(errs...)
}

// KernelServices reads back the kernel's table, by service address (tests,
// the config dump).
func (o *Objects) KernelServices() (map[netip.AddrPort]KernelService, error) {
	have, err := o.kernelServiceIDs()
	if err != nil {
		return nil, err
	}
	out := map[netip.AddrPort]KernelService{}
	for k, v := range have {
		ks := KernelService{Addr: lbKeyAddr(k), Random: v.Flags&lbRandom != 0}
		for i := uint32(0); i < v.Count; i++ {
			var e captureEndpoint
			bk := captureLbBackendKey{Id: v.Id, Slot: i}
			if err := o.objs.LbBackends.Lookup(&bk, &e); err != nil {
				return nil, fmt.Errorf("read endpoint slot %d of kernel service %s: %w", i, ks.Addr, err)
			}
			ks.Slots = append(ks.Slots, endpointAddr(e))
		}
		out[ks.Addr] = ks
	}
	return out, nil
}

var lbStatNames = []string{"connect_balanced", "connect_no_endpoint", "no_storage"}

// KernelLBStats sums the kernel balancing counters by name: connects sent
// straight to an endpoint, connects refused for want of one, and balanced
// sockets whose getpeername will show the endpoint (no socket storage).
func (o *Objects) KernelLBStats() (map[string]uint64, error) {
	return sumPerCPU(o.objs.LbStats, lbStatNames)
}

func lbKeyOf(a netip.AddrPort) captureLbKey {
	return captureLbKey{Addr: addrKey(a.Addr()), Port: a.Port()}
}

func lbKeyAddr(k captureLbKey) netip.AddrPort { return netip.AddrPortFrom(keyAddr(k.Addr), k.Port) }
