package agent

import (
	"context"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/bpf/capture"
	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// Kernel-balanced services (services[].dataplane: kernel): the agent keeps
// the eBPF capture's table of service addresses and their up endpoints in
// step with its routes (static config, Kubernetes, xDS) and with the
// endpoints' health (readiness, active health checks), and the connect
// programs send enrolled pods' connects straight to those endpoints. The
// table is in pinned maps: it outlives the agent, and a successor takes it
// over and converges it to its own routes.

// kernelLBInterval is how often the table is checked against the
// endpoints' health; a route change syncs it at once.
const kernelLBInterval = 500 * time.Millisecond

// kernelLB is the agent's side of the kernel's service table.
type kernelLB struct {
	// svcs are the kernel-balanced services of the routes last published.
	svcs atomic.Pointer[[]route.Service]
	// mu serialises syncs and the objects' close at shutdown; last is
	// what the last sync wrote into wrote's maps: a check that finds the
	// same table to write writes nothing, so the ticker costs no map dump
	// and no system call per slot while nothing changed.
	mu    sync.Mutex
	last  []capture.KernelService
	wrote *capture.Objects
	// services and endpoints are the gauges' values.
	services, endpoints atomic.Int64
}

// setKernelServices remembers the kernel-balanced services of routes about
// to be published.
func (a *Agent) setKernelServices(all []route.Service) {
	var ks []route.Service
	for _, s := range all {
		if s.Kernel {
			ks = append(ks, s)
		}
	}
	a.klb.svcs.Store(&ks)
}

// syncKernelLB writes the kernel's table from the kernel-balanced
// services and their endpoints' current health. Nothing happens before
// eBPF capture is loaded (config validation allows kernel services only
// in capture.mode ebpf, which loads it at start).
func (a *Agent) syncKernelLB() {
	// Under mu: shutdown clears lbObjs and closes the objects under it.
	a.klb.mu.Lock()
	defer a.klb.mu.Unlock()
	objs := a.lbObjs.Load()
	if objs == nil {
		return
	}
	var svcs []route.Service
	if p := a.klb.svcs.Load(); p != nil {
		svcs = *p
	}
	want := kernelTable(svcs, a.routes.Load())
	changed := !slices.EqualFunc(a.klb.last, want, sameKernelService)
	if objs == a.klb.wrote && !changed {
		return
	}
	if err := objs.SetKernelServices(want); err != nil {
		a.log.Error("program kernel-balanced services", "err", err)
		return
	}
	eps := map[netip.AddrPort]bool{}
	for _, ks := range want {
		for _, e := range ks.Slots {
			eps[e] = true
		}
	}
	a.klb.services.Store(int64(len(want)))
	a.klb.endpoints.Store(int64(len(eps)))
	if changed {
		a.log.Info("kernel-balanced services programmed", "addresses", len(want), "endpoints", len(eps))
	}
	a.klb.last, a.klb.wrote = want, objs
}

// runKernelLB re-syncs the table every kernelLBInterval until ctx ends, so
// an endpoint a health check takes out gets no new connections.
func (a *Agent) runKernelLB(ctx context.Context) {
	t := time.NewTicker(kernelLBInterval)
	defer t.Stop()
	for {
		a.syncKernelLB()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sameKernelService(a, b capture.KernelService) bool {
	return a.Addr == b.Addr && a.Random == b.Random && slices.Equal(a.Slots, b.Slots)
}

// kernelTable is the kernel's service table for svcs: per address, the
// endpoints of its family that are up in snap's cluster (Healthy and not
// failing active health checks; Draining ones only when none of that
// family is Healthy, as kube-proxy does), weighted into slots.
func kernelTable(svcs []route.Service, snap *route.Snapshot) []capture.KernelService {
	var out []capture.KernelService
	for _, s := range svcs {
		var eps []cluster.Endpoint
		if cl := snap.Cluster(s.Name); cl != nil {
			for _, e := range cl.Stats().Endpoints {
				if !e.HealthCheckFailing {
					eps = append(eps, e.Endpoint)
				}
			}
		} else {
			eps = s.Endpoints
		}
		for _, addr := range s.Addresses {
			var fam []cluster.Endpoint
			for _, e := range eps {
				if e.Addr.Addr().Unmap().Is4() == addr.Addr().Unmap().Is4() {
					fam = append(fam, e)
				}
			}
			out = append(out, capture.KernelService{Addr: addr, Random: s.Cluster.Balancer == cluster.Random, Slots: weightedSlots(upEndpoints(fam), capture.MaxKernelSlots)})
		}
	}
	return out
}

// upEndpoints keeps the Healthy endpoints, or the Draining ones when none
// is Healthy.
func upEndpoints(eps []cluster.Endpoint) []cluster.Endpoint {
	for _, h := range []cluster.Health{cluster.Healthy, cluster.Draining} {
		var out []cluster.Endpoint
		for _, e := range eps {
			if e.Health == h {
				out = append(out, e)
			}
		}
		if len(out) > 0 {
			return out
		}
	}
	return nil
}

// weightedSlots spreads eps over at most max slots, each endpoint taking
// its weight (0 counts as 1) divided by the weights' greatest common
// divisor, scaled down (never below one slot) when the total exceeds max.
// Slots are interleaved (a b a a for weights 3 and 1) so round robin
// alternates. Beyond max endpoints, the first max get one slot each.
func weightedSlots(eps []cluster.Endpoint, max int) []netip.AddrPort {
	if len(eps) == 0 {
		return nil
	}
	if len(eps) > max {
		eps = eps[:max]
	}
	units := make([]uint64, len(eps))
	var g, total uint64
	for i, e := range eps {
		units[i] = uint64(max1(e.Weight))
		g = gcd(g, units[i])
	}
	for i := range units {
		units[i] /= g
		total += units[i]
	}
	if total > uint64(max) {
		// Scale down; the floor of one slot each may leave the sum above
		// max by up to len(eps), which the trim below takes back.
		sum := uint64(0)
		for i := range units {
			units[i] = units[i] * uint64(max) / total
			if units[i] == 0 {
				units[i] = 1
			}
			sum += units[i]
		}
		for i := 0; sum > uint64(max); i = (i + 1) % len(units) {
			if units[i] > 1 {
				units[i]--
				sum--
			}
		}
	}
	var out []netip.AddrPort
	for round := uint64(0); ; round++ {
		added := false
		for i, e := range eps {
			if units[i] > round {
				out = append(out, e.Addr)
				added = true
			}
		}
		if !added {
			return out
		}
	}
}

func max1(w uint32) uint32 {
	if w == 0 {
		return 1
	}
	return w
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// kernelLBCollector exports the table's size and the connect programs'
// balancing counters.
type kernelLBCollector struct{ a *Agent }

var (
	kernelLBServicesDesc = prometheus.NewDesc("weir_kernel_lb_services",
		"Service addresses balanced in the kernel (services[].dataplane: kernel): enrolled pods' connects to them go straight to an endpoint.",
		nil, nil)
	kernelLBEndpointsDesc = prometheus.NewDesc("weir_kernel_lb_endpoints",
		"Distinct endpoints, up, in the kernel's service table.",
		nil, nil)
	kernelLBEventsDesc = prometheus.NewDesc("weir_kernel_lb_events_total",
		"Kernel balancing, counted by the connect programs: connects sent straight to an endpoint (connect_balanced), refused because the service had no endpoint up (connect_no_endpoint), balanced sockets whose getpeername shows the endpoint for want of socket storage (no_storage).",
		[]string{"event"}, nil)
)

func (c *kernelLBCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- kernelLBServicesDesc
	ch <- kernelLBEndpointsDesc
	ch <- kernelLBEventsDesc
}

func (c *kernelLBCollector) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(kernelLBServicesDesc, prometheus.GaugeValue, float64(c.a.klb.services.Load()))
	ch <- prometheus.MustNewConstMetric(kernelLBEndpointsDesc, prometheus.GaugeValue, float64(c.a.klb.endpoints.Load()))
	objs := c.a.lbObjs.Load()
	if objs == nil {
		return
	}
	st, err := objs.KernelLBStats()
	if err != nil {
		return
	}
	for k, v := range st {
		ch <- prometheus.MustNewConstMetric(kernelLBEventsDesc, prometheus.CounterValue, float64(v), k)
	}
}
