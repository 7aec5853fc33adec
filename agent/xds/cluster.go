package xds

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// clusterEntry is a CDS resource as weir understands it.
type clusterEntry struct {
	cfg cluster.Config
	// eds is the EDS resource name its endpoints come from ("" for a
	// STATIC cluster, whose endpoints are in static).
	eds    string
	static []cluster.Endpoint
	// passthrough marks an ORIGINAL_DST cluster: connections sent to it go
	// to their own destination, which weir does without a cluster.
	passthrough bool
}

// envoyConsecutive5xx is Envoy's default outlier threshold, used when a
// cluster's outlier_detection leaves it unset (Envoy's base ejection time,
// 30s, and maximum ejection percentage, 10, are weir's defaults too).
const envoyConsecutive5xx = 5

// convertCluster maps a Cluster onto weir's cluster settings.
func convertCluster(c *clusterv3.Cluster) (*clusterEntry, notes) {
	var n notes
	e := &clusterEntry{}
	n.ignored(c, "", "name", "type", "eds_cluster_config", "connect_timeout", "lb_policy", "load_assignment",
		"health_checks", "circuit_breakers", "outlier_detection", "ring_hash_lb_config", "maglev_lb_config",
		"least_request_lb_config", "round_robin_lb_config", "lb_subset_config", "common_lb_config",
		"load_balancing_policy",
		// Names and labels for the control plane's own use.
		"alt_stat_name", "metadata")

	switch c.GetType() {
	case clusterv3.Cluster_EDS:
		e.eds = c.GetEdsClusterConfig().GetServiceName()
		if e.eds == "" {
			e.eds = c.GetName()
		}
		if src := c.GetEdsClusterConfig().GetEdsConfig(); src != nil && src.GetAds() == nil {
			n.warn("eds_cluster_config.eds_config is not ads: endpoints are requested on the ADS stream anyway")
		}
	case clusterv3.Cluster_STATIC:
		eps, en := convertLocalities(c.GetLoadAssignment().GetEndpoints(), "load_assignment.")
		n.errs = append(n.errs, en.errs...)
		n.warnings = append(n.warnings, en.warnings...)
		e.static = eps
	case clusterv3.Cluster_ORIGINAL_DST:
		e.passthrough = true
		return e, n
	default:
		if ct := c.GetClusterType(); ct != nil {
			n.fail("cluster_type %s is not supported", ct.GetName())
		} else {
			n.fail("type %s is not supported (weir does not resolve names: use EDS or STATIC)", c.GetType())
		}
		return e, n
	}

	cfg := &e.cfg
	cfg.ConnectTimeout = positiveDuration(&n, "connect_timeout", c.GetConnectTimeout())
	convertBalancer(c, cfg, &n)
	convertBreakers(c.GetCircuitBreakers(), cfg, &n)
	convertOutlier(c.GetOutlierDetection(), cfg, &n)
	convertHealthChecks(c.GetHealthChecks(), cfg, &n)
	if s := c.GetLbSubsetConfig(); s != nil {
		n.ignored(s, "lb_subset_config.", "fallback_policy", "default_subset", "subset_selectors")
		if len(s.GetSubsetSelectors()) > 0 {
			n.warn("lb_subset_config.subset_selectors ignored: routes cannot select subsets per request; the default_subset applies to every connection")
		}
		switch s.GetFallbackPolicy() {
		case clusterv3.Cluster_LbSubsetConfig_NO_FALLBACK:
		case clusterv3.Cluster_LbSubsetConfig_ANY_ENDPOINT:
			cfg.Subset.Fallback = cluster.FallbackAny
		case clusterv3.Cluster_LbSubsetConfig_DEFAULT_SUBSET:
			cfg.Subset.Selector = structLabels(s.GetDefaultSubset())
		}
	}
	if cl := c.GetCommonLbConfig(); cl != nil {
		n.ignored(cl, "common_lb_config.", "zone_aware_lb_config", "locality_weighted_lb_config")
		if z := cl.GetZoneAwareLbConfig(); z != nil {
			cfg.Locality.Enabled = true
			if p := z.GetMinClusterSize(); p != nil {
				n.warn("common_lb_config.zone_aware_lb_config.min_cluster_size ignored")
			}
		}
		if cl.GetLocalityWeightedLbConfig() != nil {
			n.warn("common_lb_config.locality_weighted_lb_config ignored: locality weights are not supported, endpoint weights are")
		}
	}
	if err := cfg.Validate(); err != nil {
		n.fail("%v", err)
	}
	return e, n
}

// convertBalancer maps lb_policy (or the first load_balancing_policy weir
// knows) and the policy's settings.
func convertBalancer(c *clusterv3.Cluster, cfg *cluster.Config, n *notes) {
	policy := c.GetLbPolicy()
	if p := c.GetLoadBalancingPolicy(); p != nil && len(p.GetPolicies()) > 0 {
		known := false
		for _, pol := range p.GetPolicies() {
			t := pol.GetTypedExtensionConfig().GetTypedConfig().GetTypeUrl()
			switch {
			case strings.HasSuffix(t, ".round_robin.v3.RoundRobin"):
				policy = clusterv3.Cluster_ROUND_ROBIN
			case strings.HasSuffix(t, ".least_request.v3.LeastRequest"):
				policy = clusterv3.Cluster_LEAST_REQUEST
			case strings.HasSuffix(t, ".ring_hash.v3.RingHash"):
				policy = clusterv3.Cluster_RING_HASH
			case strings.HasSuffix(t, ".maglev.v3.Maglev"):
				policy = clusterv3.Cluster_MAGLEV
			case strings.HasSuffix(t, ".random.v3.Random"):
				policy = clusterv3.Cluster_RANDOM
			default:
				continue
			}
			known = true
			n.warn("load_balancing_policy: %s used with its defaults (its settings are ignored)", t)
			break
		}
		if !known {
			n.fail("load_balancing_policy names no policy weir supports (round_robin, least_request, ring_hash, maglev, random)")
			return
		}
	}
	switch policy {
	case clusterv3.Cluster_ROUND_ROBIN:
		cfg.Balancer = cluster.RoundRobin
		n.ignored(c.GetRoundRobinLbConfig(), "round_robin_lb_config.")
	case clusterv3.Cluster_LEAST_REQUEST:
		cfg.Balancer = cluster.LeastRequest
		if lr := c.GetLeastRequestLbConfig(); lr != nil {
			n.ignored(lr, "least_request_lb_config.", "choice_count")
			if cc := lr.GetChoiceCount(); cc != nil && cc.GetValue() != 2 {
				n.warn("least_request_lb_config.choice_count %d ignored: weir always compares two choices", cc.GetValue())
			}
		}
	case clusterv3.Cluster_RING_HASH:
		cfg.Balancer = cluster.RingHash
		if rh := c.GetRingHashLbConfig(); rh != nil {
			n.ignored(rh, "ring_hash_lb_config.", "minimum_ring_size", "maximum_ring_size", "hash_function")
			if v := rh.GetMinimumRingSize(); v != nil {
				cfg.RingHash.MinRingSize = int(v.GetValue())
			}
			if v := rh.GetMaximumRingSize(); v != nil {
				cfg.RingHash.MaxRingSize = int(v.GetValue())
			}
		}
		n.warn("ring_hash hashes the client's source address (route hash_policy is not supported)")
	case clusterv3.Cluster_MAGLEV:
		cfg.Balancer = cluster.Maglev
		if mg := c.GetMaglevLbConfig(); mg != nil {
			n.ignored(mg, "maglev_lb_config.", "table_size")
			if v := mg.GetTableSize(); v != nil {
				cfg.Maglev.TableSize = int(v.GetValue())
			}
		}
		n.warn("maglev hashes the client's source address (route hash_policy is not supported)")
	case clusterv3.Cluster_RANDOM:
		cfg.Balancer = cluster.Random
	default:
		n.fail("lb_policy %s is not supported (ROUND_ROBIN, LEAST_REQUEST, RING_HASH, MAGLEV, RANDOM)", policy)
	}
}

// convertBreakers takes the DEFAULT priority's thresholds; HIGH priority
// has no meaning in weir (it has no request priorities).
func convertBreakers(cb *clusterv3.CircuitBreakers, cfg *cluster.Config, n *notes) {
	if cb == nil {
		return
	}
	n.ignored(cb, "circuit_breakers.", "thresholds")
	for i, t := range cb.GetThresholds() {
		if t.GetPriority() != corev3.RoutingPriority_DEFAULT {
			n.warn("circuit_breakers.thresholds[%d] (priority %s) ignored: only DEFAULT applies", i, t.GetPriority())
			continue
		}
		p := fmt.Sprintf("circuit_breakers.thresholds[%d].", i)
		n.ignored(t, p, "priority", "max_connections", "max_pending_requests", "track_remaining")
		if v := t.GetMaxConnections(); v != nil {
			cfg.CircuitBreaker.MaxConnections = max(1, int(v.GetValue()))
		}
		if v := t.GetMaxPendingRequests(); v != nil {
			// weir's pending unit is a connect in progress.
			cfg.CircuitBreaker.MaxPendingConnects = max(1, int(v.GetValue()))
		}
	}
}

// convertOutlier maps consecutive failure ejection. A cluster without
// outlier_detection has none, as in Envoy.
func convertOutlier(od *clusterv3.OutlierDetection, cfg *cluster.Config, n *notes) {
	if od == nil {
		cfg.Outlier.Disabled = true
		return
	}
	n.ignored(od, "outlier_detection.", "consecutive_5xx", "consecutive_gateway_failure", "enforcing_consecutive_5xx",
		"enforcing_consecutive_gateway_failure", "base_ejection_time", "max_ejection_time", "max_ejection_percent",
		"interval", "consecutive_local_origin_failure", "enforcing_consecutive_local_origin_failure", "split_external_local_origin_errors")
	// weir counts connect failures and connections that end in an upstream
	// error, close to Envoy's gateway and local origin failures. The
	// smallest enforced threshold applies, with Envoy's defaults (5
	// failures; 5xx enforced at 100%, gateway failures at 0%).
	threshold := uint32(0)
	consider := func(v, enforcing *wrapperspb.UInt32Value, enforcingDefault uint32) {
		e := enforcingDefault
		if enforcing != nil {
			e = enforcing.GetValue()
		}
		if e == 0 {
			return
		}
		t := uint32(envoyConsecutive5xx)
		if v != nil {
			t = v.GetValue()
		}
		if threshold == 0 || t < threshold {
			threshold = t
		}
	}
	consider(od.GetConsecutive_5Xx(), od.GetEnforcingConsecutive_5Xx(), 100)
	consider(od.GetConsecutiveGatewayFailure(), od.GetEnforcingConsecutiveGatewayFailure(), 0)
	if od.GetSplitExternalLocalOriginErrors() {
		consider(od.GetConsecutiveLocalOriginFailure(), od.GetEnforcingConsecutiveLocalOriginFailure(), 100)
	}
	if threshold == 0 {
		cfg.Outlier.Disabled = true
		return
	}
	cfg.Outlier.ConsecutiveFailures = int(max(1, threshold))
	cfg.Outlier.BaseEjectionTime = positiveDuration(n, "outlier_detection.base_ejection_time", od.GetBaseEjectionTime())
	cfg.Outlier.MaxEjectionTime = positiveDuration(n, "outlier_detection.max_ejection_time", od.GetMaxEjectionTime())
	if cfg.Outlier.MaxEjectionTime != 0 && cfg.Outlier.BaseEjectionTime == 0 && cfg.Outlier.MaxEjectionTime.D() < cluster.DefaultBaseEjectionTime {
		cfg.Outlier.BaseEjectionTime = cfg.Outlier.MaxEjectionTime
	}
	if v := od.GetMaxEjectionPercent(); v != nil {
		p := int(v.GetValue())
		if p == 0 {
			cfg.Outlier.Disabled = true
		}
		cfg.Outlier.MaxEjectionPercent = min(p, 100)
	}
	if od.GetInterval() != nil {
		n.warn("outlier_detection.interval ignored: weir ejects at the failure that crosses the threshold")
	}
}

// convertHealthChecks maps a plain TCP connect check; checks that send or
// expect bytes, HTTP and gRPC checks are not supported.
func convertHealthChecks(hcs []*corev3.HealthCheck, cfg *cluster.Config, n *notes) {
	for i, hc := range hcs {
		p := fmt.Sprintf("health_checks[%d].", i)
		tcp := hc.GetTcpHealthCheck()
		if tcp == nil || tcp.GetSend() != nil || len(tcp.GetReceive()) > 0 {
			n.warn("%s ignored: only a tcp_health_check without send or receive is supported", strings.TrimSuffix(p, "."))
			continue
		}
		if cfg.HealthCheck.Enabled {
			n.warn("%s ignored: one health check per cluster", strings.TrimSuffix(p, "."))
			continue
		}
		n.ignored(hc, p, "timeout", "interval", "healthy_threshold", "unhealthy_threshold", "tcp_health_check")
		cfg.HealthCheck = cluster.HealthCheckConfig{
			Enabled:  true,
			Interval: positiveDuration(n, p+"interval", hc.GetInterval()),
			Timeout:  positiveDuration(n, p+"timeout", hc.GetTimeout()),
		}
		if v := hc.GetHealthyThreshold(); v != nil {
			cfg.HealthCheck.HealthyThreshold = max(1, int(v.GetValue()))
		}
		if v := hc.GetUnhealthyThreshold(); v != nil {
			cfg.HealthCheck.UnhealthyThreshold = max(1, int(v.GetValue()))
		}
	}
}

// convertCLA maps a ClusterLoadAssignment onto endpoints.
func convertCLA(cla *endpointv3.ClusterLoadAssignment) ([]cluster.Endpoint, notes) {
	var n notes
	n.ignored(cla, "", "cluster_name", "endpoints", "policy")
	if p := cla.GetPolicy(); p != nil {
		n.ignored(p, "policy.", "overprovisioning_factor")
	}
	eps, en := convertLocalities(cla.GetEndpoints(), "")
	n.errs = append(n.errs, en.errs...)
	n.warnings = append(n.warnings, en.warnings...)
	return eps, n
}

// LbEndpointMetadataKey is the filter_metadata namespace whose string
// fields become endpoint labels (for subsets), as Envoy's subset balancer
// reads it.
const LbEndpointMetadataKey = "envoy.lb"

func convertLocalities(locs []*endpointv3.LocalityLbEndpoints, prefix string) ([]cluster.Endpoint, notes) {
	var n notes
	var out []cluster.Endpoint
	seen := map[netip.AddrPort]bool{}
	for li, loc := range locs {
		lp := fmt.Sprintf("%sendpoints[%d].", prefix, li)
		n.ignored(loc, lp, "locality", "lb_endpoints", "priority", "load_balancing_weight")
		if loc.GetLoadBalancingWeight() != nil {
			n.warn("%sload_balancing_weight ignored: locality weights are not supported, endpoint weights are", lp)
		}
		zone := loc.GetLocality().GetZone()
		health := cluster.Healthy
		if loc.GetPriority() > 0 {
			// weir has no priority levels: a lower priority serves only
			// when no endpoint of priority 0 is up, as draining ones do.
			health = cluster.Draining
			n.warn("%spriority %d: its endpoints serve only when no priority 0 endpoint is up", lp, loc.GetPriority())
		}
		for ei, lb := range loc.GetLbEndpoints() {
			ep := fmt.Sprintf("%slb_endpoints[%d]", lp, ei)
			n.ignored(lb, ep+".", "endpoint", "health_status", "metadata", "load_balancing_weight")
			sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
			if sa == nil {
				n.fail("%s.endpoint.address: only socket addresses are supported", ep)
				continue
			}
			if sa.GetProtocol() != corev3.SocketAddress_TCP {
				n.fail("%s.endpoint.address.protocol %s is not supported", ep, sa.GetProtocol())
				continue
			}
			ip, err := netip.ParseAddr(sa.GetAddress())
			if err != nil {
				n.fail("%s.endpoint.address %q is not an IP address (weir does not resolve names)", ep, sa.GetAddress())
				continue
			}
			pv, ok := sa.GetPortSpecifier().(*corev3.SocketAddress_PortValue)
			if !ok || pv.PortValue == 0 || pv.PortValue > 65535 {
				n.fail("%s.endpoint.address needs a port_value between 1 and 65535", ep)
				continue
			}
			ap := netip.AddrPortFrom(ip.Unmap(), uint16(pv.PortValue))
			if seen[ap] {
				n.fail("%s.endpoint.address %s repeats an earlier endpoint", ep, ap)
				continue
			}
			seen[ap] = true
			e := cluster.Endpoint{Addr: ap, Health: health}
			if w := lb.GetLoadBalancingWeight(); w != nil {
				if w.GetValue() == 0 {
					n.fail("%s.load_balancing_weight must be at least 1", ep)
					continue
				}
				e.Weight = w.GetValue()
			}
			switch lb.GetHealthStatus() {
			case corev3.HealthStatus_UNKNOWN, corev3.HealthStatus_HEALTHY:
			case corev3.HealthStatus_DRAINING:
				e.Health = cluster.Draining
			default:
				e.Health = cluster.Unhealthy
			}
			labels := structLabels(lb.GetMetadata().GetFilterMetadata()[LbEndpointMetadataKey])
			if zone != "" {
				if labels == nil {
					labels = map[string]string{}
				}
				labels[cluster.ZoneLabel] = zone
			}
			e.Labels = labels
			out = append(out, e)
		}
	}
	return out, n
}

// structLabels turns a Struct's scalar fields into labels.
func structLabels(s *structpb.Struct) map[string]string {
	if len(s.GetFields()) == 0 {
		return nil
	}
	out := make(map[string]string, len(s.GetFields()))
	for k, v := range s.GetFields() {
		switch x := v.GetKind().(type) {
		case *structpb.Value_StringValue:
			out[k] = x.StringValue
		case *structpb.Value_BoolValue:
			out[k] = strconv.FormatBool(x.BoolValue)
		case *structpb.Value_NumberValue:
			out[k] = strconv.FormatFloat(x.NumberValue, 'f', -1, 64)
		}
	}
	return out
}
