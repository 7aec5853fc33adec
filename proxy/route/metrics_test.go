package route

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// gather returns the value of one series, or -1 when it is absent.
func gather(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue next
				}
			}
			if m.GetCounter() != nil {
				return m.GetCounter().GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return -1
}

func TestCollectorSurvivesRebuild(t *testing.T) {
	var tb Table
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(&tb))

	cfg := Config{Services: []Service{svc("web", []string{"10.96.0.10:80"}, "10.1.0.1:8080", "10.1.0.2:8080")}}
	tb.Store(mustBuild(t, cfg, nil))

	refuse := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		return nil, errors.New("refused")
	}
	r := tb.Load().Lookup(ap("10.96.0.10:80"))
	if _, _, err := r.Cluster.Connect(context.Background(), 0, refuse); !errors.Is(err, cluster.ErrConnectFailed) {
		t.Fatalf("connect: %v", err)
	}
	web := map[string]string{"cluster": "web"}
	if v := gather(t, reg, "weir_cluster_connect_failures_total", web); v != 1 {
		t.Fatalf("connect failures = %v, want 1", v)
	}
	ep1 := map[string]string{"cluster": "web", "endpoint": "10.1.0.1:8080"}
	before := gather(t, reg, "weir_endpoint_connect_failures_total", ep1)
	if before < 1 {
		t.Fatalf("endpoint connect failures = %v, want >= 1", before)
	}

	// One endpoint added: the cluster is rebuilt, the counters carry over.
	cfg2 := Config{Services: []Service{svc("web", []string{"10.96.0.10:80"}, "10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080")}}
	tb.Store(mustBuild(t, cfg2, tb.Load()))
	if v := gather(t, reg, "weir_cluster_connect_failures_total", web); v != 1 {
		t.Errorf("after rebuild: cluster connect failures = %v, want 1", v)
	}
	if v := gather(t, reg, "weir_endpoint_connect_failures_total", ep1); v != before {
		t.Errorf("after rebuild: endpoint connect failures = %v, want %v", v, before)
	}
	if v := gather(t, reg, "weir_endpoint_connections_total", map[string]string{"cluster": "web", "endpoint": "10.1.0.3:8080"}); v != 0 {
		t.Errorf("new endpoint series = %v, want 0", v)
	}
}
