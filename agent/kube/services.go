package kube

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// LabelZone is the endpoint label that carries an EndpointSlice endpoint's
// zone, which the cluster's locality-aware balancing reads.
const LabelZone = "zone"

// Services derives the route services from every Service and EndpointSlice
// in the cluster, sorted by name:
//   - one route.Service per TCP port of each Service that has a ClusterIP,
//     named "namespace/name:port", whose addresses are every ClusterIP (IPv4
//     and IPv6) with that port;
//   - headless and ExternalName Services, and UDP and SCTP ports (the agent
//     relays TCP only), are left out;
//   - endpoints come from the Service's EndpointSlices (label
//     kubernetes.io/service-name), the slice port whose name (and protocol)
//     matches the service port giving the target port. Ready endpoints are
//     Healthy; serving but terminating ones are Draining (used only when no
//     Healthy endpoint is left, as kube-proxy does); the rest (not ready, or
//     terminating and no longer serving) are left out. An endpoint's zone
//     becomes its "zone" label;
//   - a Service without a usable endpoint still gets its entry, with no
//     endpoints, so its addresses are refused rather than passed through;
//   - the cluster config is the default unless the Service carries
//     weir.dev/cluster (a JSON cluster.Config) or weir.dev/balancer; invalid
//     ones leave the default and record a Warning Event on the Service;
//   - weir.dev/dataplane: kernel marks the ports the kernel can balance
//     (route.Service.KernelError) Kernel; the others stay with the agent,
//     with a Warning Event;
//   - with Options.Gateway, each port carries the HTTPRoutes and GRPCRoutes
//     attached to it (gateway.go), already checked: a route the engine
//     would refuse is refused alone, in its status, never in route.Build.
//
// The result is cached between changes and shared: do not modify it.
func (s *Source) Services() []route.Service {
	s.svcMu.Lock()
	defer s.svcMu.Unlock()
	if !s.svcDirty.Swap(false) {
		return s.svcCache
	}
	svcs, err := s.services.List(labels.Everything())
	if err != nil {
		s.log.Error("list services from cache", "err", err)
		s.svcDirty.Store(true)
		return s.svcCache
	}
	// Services whose object and slices did not change keep the very same
	// route.Service values (and Endpoints slices), so the route rebuild
	// recognises them and re-derives only what changed.
	memo := make(map[string]svcMemo, len(svcs))
	var out []route.Service
	for _, svc := range svcs {
		slices := s.slicesOf(svc.Namespace, svc.Name)
		id := svc.Namespace + "/" + svc.Name
		key := memoKey(svc, slices)
		m, ok := s.svcMemo[id]
		if !ok || m.key != key || svc.ResourceVersion == "" {
			m.key = key
			var problem *serviceProblem
			m.out, problem = buildService(svc, slices)
			if problem != nil {
				s.warnOnce(problem.svc, ReasonInvalidClusterConfig, problem.err.Error())
			}
		}
		memo[id] = m
		out = append(out, m.out...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	s.svcMemo = memo
	out = s.withRoutes(out)
	s.svcCache = out
	return out
}

// svcMemo is one Service's derived routes and the versions they came from.
type svcMemo struct {
	key string
	out []route.Service
}

// memoKey names the versions of a Service and its EndpointSlices.
func memoKey(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) string {
	rvs := make([]string, 0, len(slices)+1)
	for _, sl := range slices {
		rvs = append(rvs, string(sl.UID)+"@"+sl.ResourceVersion)
	}
	sort.Strings(rvs)
	return string(svc.UID) + "@" + svc.ResourceVersion + "|" + strings.Join(rvs, ",")
}

func (s *Source) slicesOf(namespace, name string) []*discoveryv1.EndpointSlice {
	objs, err := s.sliceIndex.ByIndex(indexByService, namespace+"/"+name)
	if err != nil {
		s.log.Error("list endpoint slices from cache", "service", namespace+"/"+name, "err", err)
		return nil
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if sl, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, sl)
		}
	}
	return out
}

// serviceProblem is a Service whose weir.dev/* annotations are invalid.
type serviceProblem struct {
	svc *corev1.Service
	err error
}

// buildServices is Services without the caches: slicesOf returns the
// EndpointSlices of one Service.
func buildServices(svcs []*corev1.Service, slicesOf func(namespace, name string) []*discoveryv1.EndpointSlice) ([]route.Service, []serviceProblem) {
	var out []route.Service
	var problems []serviceProblem
	for _, svc := range svcs {
		rs, problem := buildService(svc, slicesOf(svc.Namespace, svc.Name))
		if problem != nil {
			problems = append(problems, *problem)
		}
		out = append(out, rs...)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, problems
}

// buildService derives the routes of one Service from it and its slices.
func buildService(svc *corev1.Service, slices []*discoveryv1.EndpointSlice) ([]route.Service, *serviceProblem) {
	ips := clusterIPs(svc)
	if len(ips) == 0 {
		return nil, nil
	}
	var problem *serviceProblem
	cfg, err := clusterConfig(svc.Annotations)
	if err != nil {
		problem = &serviceProblem{svc, fmt.Errorf("service %s/%s: %w; using the default cluster config", svc.Namespace, svc.Name, err)}
		cfg = cluster.Config{}
	}
	// addProblem keeps every problem of the Service, for one Event.
	addProblem := func(err error) {
		if problem == nil {
			problem = &serviceProblem{svc, err}
		} else {
			problem.err = errors.Join(problem.err, err)
		}
	}
	kernel := false
	switch dp := svc.Annotations[AnnotationDataplane]; dp {
	case "", "agent":
	case "kernel":
		kernel = true
	default:
		addProblem(fmt.Errorf("service %s/%s: annotation %s: want agent or kernel, got %q; using agent", svc.Namespace, svc.Name, AnnotationDataplane, dp))
	}
	var out []route.Service
	for _, sp := range svc.Spec.Ports {
		if !isTCP(sp.Protocol) || sp.Port <= 0 || sp.Port > 65535 {
			continue
		}
		rs := route.Service{
			Name:      svc.Namespace + "/" + svc.Name + ":" + strconv.Itoa(int(sp.Port)),
			Cluster:   cfg,
			Endpoints: endpointsFor(sp.Name, slices),
			Protocol:  PortProtocol(sp),
		}
		if kernel {
			if err := rs.KernelError(); err != nil {
				addProblem(fmt.Errorf("service %s/%s port %d: annotation %s kernel: %w; the agent balances it", svc.Namespace, svc.Name, sp.Port, AnnotationDataplane, err))
			} else {
				rs.Kernel = true
			}
		}
		for _, ip := range ips {
			rs.Addresses = append(rs.Addresses, netip.AddrPortFrom(ip, uint16(sp.Port)))
		}
		out = append(out, rs)
	}
	return out, problem
}

// clusterIPs returns a Service's virtual addresses; none for ExternalName,
// headless Services and Services with no address allocated yet.
func clusterIPs(svc *corev1.Service) []netip.Addr {
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		return nil
	}
	raw := svc.Spec.ClusterIPs
	if len(raw) == 0 && svc.Spec.ClusterIP != "" {
		raw = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	for _, r := range raw {
		if r == corev1.ClusterIPNone {
			return nil
		}
		if a, err := netip.ParseAddr(r); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func isTCP(p corev1.Protocol) bool { return p == "" || p == corev1.ProtocolTCP }

// endpointsFor collects the endpoints of the service port named portName
// from the Service's slices, sorted by address. An address found in two
// slices (as during a slice rewrite) is kept once, with its best health.
func endpointsFor(portName string, slices []*discoveryv1.EndpointSlice) []cluster.Endpoint {
	best := map[netip.AddrPort]cluster.Endpoint{}
	for _, sl := range slices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue // FQDN slices name hosts, which the agent cannot dial by address
		}
		port, ok := slicePort(sl, portName)
		if !ok {
			continue
		}
		for _, ep := range sl.Endpoints {
			health, usable := endpointHealth(ep.Conditions)
			if !usable {
				continue
			}
			var lbl map[string]string
			if ep.Zone != nil && *ep.Zone != "" {
				lbl = map[string]string{LabelZone: *ep.Zone}
			}
			for _, raw := range ep.Addresses {
				a, err := netip.ParseAddr(raw)
				if err != nil || a.Unmap().Is4() != (sl.AddressType == discoveryv1.AddressTypeIPv4) {
					continue
				}
				ap := netip.AddrPortFrom(a.Unmap(), port)
				if prev, seen := best[ap]; seen && prev.Health <= health {
					continue
				}
				best[ap] = cluster.Endpoint{Addr: ap, Labels: lbl, Health: health}
			}
		}
	}
	if len(best) == 0 {
		return nil
	}
	out := make([]cluster.Endpoint, 0, len(best))
	for _, e := range best {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Compare(out[j].Addr) < 0 })
	return out
}

// slicePort finds the slice port for a service port, matched by name (the
// endpointslice controller copies the service port's name) and TCP.
func slicePort(sl *discoveryv1.EndpointSlice, portName string) (uint16, bool) {
	for _, p := range sl.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		if name != portName || (p.Protocol != nil && !isTCP(*p.Protocol)) {
			continue
		}
		if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
			return 0, false
		}
		return uint16(*p.Port), true
	}
	return 0, false
}

// endpointHealth maps EndpointSlice conditions to a cluster health, per the
// API's rules for unset conditions: ready unset means ready, serving unset
// means the same as ready, terminating unset means not terminating.
func endpointHealth(c discoveryv1.EndpointConditions) (cluster.Health, bool) {
	ready := c.Ready == nil || *c.Ready
	serving := ready
	if c.Serving != nil {
		serving = *c.Serving
	}
	terminating := c.Terminating != nil && *c.Terminating
	switch {
	case terminating && serving:
		return cluster.Draining, true
	case terminating:
		return 0, false
	case ready:
		return cluster.Healthy, true
	default:
		return 0, false
	}
}

// clusterConfig reads a Service's weir.dev/cluster and weir.dev/balancer
// annotations, with the same validation as the static config.
func clusterConfig(a map[string]string) (cluster.Config, error) {
	var cfg cluster.Config
	if v, ok := a[AnnotationCluster]; ok {
		dec := json.NewDecoder(bytes.NewReader([]byte(v)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&cfg); err != nil {
			return cluster.Config{}, fmt.Errorf("annotation %s: %w", AnnotationCluster, err)
		}
		if dec.More() {
			return cluster.Config{}, fmt.Errorf("annotation %s: trailing data after the JSON object", AnnotationCluster)
		}
		if err := cfg.Validate(); err != nil {
			return cluster.Config{}, fmt.Errorf("annotation %s: %w", AnnotationCluster, err)
		}
	}
	if v, ok := a[AnnotationBalancer]; ok {
		cfg.Balancer = v
		if err := (cluster.Config{Balancer: v}).Validate(); err != nil {
			return cluster.Config{}, fmt.Errorf("annotation %s: %w", AnnotationBalancer, err)
		}
	}
	cfg.Name = "" // the route names the cluster after the service port
	return cfg, nil
}

// PortProtocol is what a Service port declares it speaks: its appProtocol
// (the standard field: "http", "kubernetes.io/h2c", "grpc", "tls", "tcp",
// and the "kubernetes.io/ws" family as http; "dubbo", and "bolt" or
// "sofarpc" for SOFABolt, "rocketmq"), else the name prefix other meshes
// use ("http-", "http2-", "grpc-", "tls-", "tcp-", "dubbo-", "bolt-",
// "rocketmq-", or the bare name),
// else Auto: the agent sniffs.
func PortProtocol(sp corev1.ServicePort) route.Protocol {
	if sp.AppProtocol != nil {
		switch strings.ToLower(*sp.AppProtocol) {
		case "http", "kubernetes.io/ws", "kubernetes.io/wss", "http1":
			return route.HTTP
		case "kubernetes.io/h2c", "http2", "h2c":
			return route.HTTP2
		case "grpc", "grpc-web":
			return route.GRPC
		case "tls", "https", "kubernetes.io/wss+tls":
			return route.TLS
		case "tcp":
			return route.TCP
		case "dubbo":
			return route.Dubbo
		case "bolt", "sofarpc":
			return route.Bolt
		case "rocketmq":
			return route.RocketMQ
		}
		return route.Auto
	}
	name := strings.ToLower(sp.Name)
	if i := strings.IndexByte(name, '-'); i >= 0 {
		name = name[:i]
	}
	switch name {
	case "http":
		return route.HTTP
	case "http2", "h2c":
		return route.HTTP2
	case "grpc":
		return route.GRPC
	case "tls", "https":
		return route.TLS
	case "tcp", "mysql", "mongo", "redis":
		return route.TCP
	case "dubbo":
		return route.Dubbo
	case "bolt", "sofarpc":
		return route.Bolt
	case "rocketmq":
		return route.RocketMQ
	}
	return route.Auto
}
