package agent

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

func TestWeightedSlots(t *testing.T) {
	ep := func(s string, w uint32) cluster.Endpoint {
		return cluster.Endpoint{Addr: netip.MustParseAddrPort(s), Weight: w}
	}
	a, b, c := "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"
	for _, tc := range []struct {
		eps  []cluster.Endpoint
		max  int
		want string
	}{
		{nil, 8, "[]"},
		{[]cluster.Endpoint{ep(a, 0), ep(b, 0)}, 8, "[10.0.0.1:80 10.0.0.2:80]"},
		{[]cluster.Endpoint{ep(a, 10), ep(b, 20)}, 8, "[10.0.0.1:80 10.0.0.2:80 10.0.0.2:80]"},
		{[]cluster.Endpoint{ep(a, 3), ep(b, 1)}, 8, "[10.0.0.1:80 10.0.0.2:80 10.0.0.1:80 10.0.0.1:80]"},
		{[]cluster.Endpoint{ep(a, 100), ep(b, 1), ep(c, 1)}, 4, "[10.0.0.1:80 10.0.0.2:80 10.0.0.3:80 10.0.0.1:80]"},
		{[]cluster.Endpoint{ep(a, 1), ep(b, 1), ep(c, 1)}, 2, "[10.0.0.1:80 10.0.0.2:80]"},
	} {
		got := weightedSlots(tc.eps, tc.max)
		if fmt.Sprint(got) != tc.want || len(got) > tc.max {
			t.Errorf("weightedSlots(%v, %d) = %v, want %s", tc.eps, tc.max, got, tc.want)
		}
	}
}

// The table takes each address's own family, only up endpoints (Draining
// ones when nothing is Healthy), and the balancer's mode.
func TestKernelTable(t *testing.T) {
	svcs := []route.Service{{
		Name:      "db",
		Addresses: []netip.AddrPort{netip.MustParseAddrPort("10.96.0.20:5432"), netip.MustParseAddrPort("[fd00:96::20]:5432")},
		Cluster:   cluster.Config{Balancer: cluster.Random},
		Endpoints: []cluster.Endpoint{
			{Addr: netip.MustParseAddrPort("10.0.0.1:5432")},
			{Addr: netip.MustParseAddrPort("10.0.0.2:5432"), Health: cluster.Unhealthy},
			{Addr: netip.MustParseAddrPort("[fd00::1]:5432"), Health: cluster.Draining},
		},
		Protocol: route.TCP, Kernel: true,
	}}
	snap, err := route.Build(route.Config{Services: svcs}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := kernelTable(svcs, snap)
	if len(got) != 2 || !got[0].Random ||
		fmt.Sprint(got[0].Slots) != "[10.0.0.1:5432]" || fmt.Sprint(got[1].Slots) != "[[fd00::1]:5432]" {
		t.Fatalf("kernel table %+v", got)
	}
}
