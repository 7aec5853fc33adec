package route

import (
	"fmt"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// KernelError says, naming the field, why s cannot be balanced in the
// kernel (Service.Kernel), or nil. The connect program rewrites a service
// address to one endpoint picked at random or in turn, weights honoured,
// once per connect, and nothing else: the service must declare protocol
// tcp, and have no L7 routing, rate limit, retries, outlier detection,
// circuit breaking, locality or subsets. Active health checks are allowed:
// they take endpoints out of the kernel's table. The static config and the
// Kubernetes source both check with it.
func (s Service) KernelError() error {
	if s.Protocol != TCP {
		return fmt.Errorf("protocol: dataplane kernel needs protocol tcp (the kernel does not sniff or parse), got %q", string(s.Protocol))
	}
	if s.UpstreamProtocol != Auto {
		return fmt.Errorf("upstreamProtocol: not available with dataplane kernel (no L7)")
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"httpRoutes", len(s.HTTPRoutes) > 0},
		{"tlsRoutes", len(s.TLSRoutes) > 0},
		{"rpcRoutes", len(s.RPCRoutes) > 0},
		{"rpc", s.RPC != nil},
		{"rateLimit", s.RateLimit != nil},
	} {
		if f.set {
			return fmt.Errorf("%s: not available with dataplane kernel (no L7, no rate limit: connections never reach the agent)", f.name)
		}
	}
	cc := s.Cluster
	switch cc.Balancer {
	case "", cluster.RoundRobin, cluster.Random:
	default:
		return fmt.Errorf("cluster.balancer: dataplane kernel balances round_robin or random, got %q", cc.Balancer)
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"cluster.retry", cc.Retry != (cluster.RetryConfig{}) && cc.Retry != (cluster.RetryConfig{Disabled: true})},
		{"cluster.outlier", cc.Outlier != (cluster.OutlierConfig{}) && cc.Outlier != (cluster.OutlierConfig{Disabled: true})},
		{"cluster.circuitBreaker", cc.CircuitBreaker != (cluster.CircuitBreakerConfig{})},
		{"cluster.connectTimeout", cc.ConnectTimeout != 0},
		{"cluster.peakEwma", cc.PeakEWMA != (cluster.PeakEWMAConfig{})},
		{"cluster.ringHash", cc.RingHash != (cluster.RingHashConfig{})},
		{"cluster.maglev", cc.Maglev != (cluster.MaglevConfig{})},
		{"cluster.subset", len(cc.Subset.Selector) > 0 || cc.Subset.Fallback != ""},
		{"cluster.locality", cc.Locality != (cluster.LocalityConfig{})},
	} {
		if f.set {
			return fmt.Errorf("%s: not available with dataplane kernel (the kernel picks an endpoint once per connect: no retries, outlier detection, circuit breaking or locality)", f.name)
		}
	}
	return nil
}
