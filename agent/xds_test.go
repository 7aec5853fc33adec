package agent

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/agent/xds"
	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

func TestXDSConfigValidation(t *testing.T) {
	c, err := ParseConfig([]byte("xds:\n  address: istiod.istio-system.svc:15010\n  mode: sotw\n  nodeId: n1\n  precedence: xds\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c.XDS.Address != "istiod.istio-system.svc:15010" || c.XDS.Mode != "sotw" || c.XDS.Precedence != "xds" {
		t.Fatalf("xds keys not read: %+v", c.XDS)
	}
	for _, tc := range []struct{ yaml, key string }{
		{"xds:\n  address: nohost\n", "xds.address"},
		{"xds:\n  address: cp:0\n", "xds.address"},
		{"xds:\n  address: cp:15010\n  mode: incremental\n", "xds.mode"},
		{"xds:\n  address: cp:15010\n  precedence: static\n", "xds.precedence"},
		{"xds:\n  address: cp:15010\n  tls:\n    certFile: /x\n", "xds.tls.certFile and xds.tls.keyFile"},
		{"xds:\n  address: cp:15010\n  tls:\n    caFile: /nonexistent/ca.pem\n", "xds.tls.caFile"},
		{"xds:\n  mode: delta\n", "xds.address"},
		{"xds:\n  adress: cp:1\n", "adress"},
		{"xds:\n  address: cp:15010\n  mode: sotw\n  onDemand: true\n", "xds.onDemand"},
		{"xds:\n  address: cp:15010\n  onDemandTimeout: 2s\n", "xds.onDemandTimeout"},
		{"xds:\n  address: cp:15010\n  onDemand: true\n  onDemandIdle: -1s\n", "xds.onDemandIdle"},
		{"xds:\n  address: cp:15010\n  onDemand: true\n  onDemandTimeout: 10s\n  onDemandIdle: 1s\n", "xds.onDemandIdle"},
		{"xds:\n  onDemand: true\n", "xds.address"},
		{"xds:\n  metadata:\n    CLUSTER_ID: Kubernetes\n", "xds.address"},
		{"xds:\n  address: cp:15010\n  onDemand: true\n  onDemandIdle: 2s\n", "xds.onDemandIdle"},
	} {
		_, err := ParseConfig([]byte(tc.yaml))
		if err == nil || !strings.Contains(err.Error(), tc.key) {
			t.Errorf("%q: error %v, want one naming %s", tc.yaml, err, tc.key)
		}
	}
	c, err = ParseConfig([]byte("xds:\n  address: cp:15010\n  onDemand: true\n  onDemandTimeout: 3s\n  onDemandIdle: 90s\n"))
	if err != nil {
		t.Fatal(err)
	}
	if !c.XDS.OnDemand || c.XDS.OnDemandTimeout != Duration(3*time.Second) || c.XDS.OnDemandIdle != Duration(90*time.Second) {
		t.Fatalf("on-demand keys not read: %+v", c.XDS)
	}
	// Metadata is any JSON object; it reaches the node as a Struct.
	c, err = ParseConfig([]byte("xds:\n  address: cp:15010\n  metadata:\n    ISTIO_VERSION: 1.28.0\n    LABELS:\n      app: weir\n    INSTANCE_IPS: 10.0.0.5\n"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := c.XDS.metadata()
	if err != nil {
		t.Fatal(err)
	}
	if m.Fields["ISTIO_VERSION"].GetStringValue() != "1.28.0" || m.Fields["LABELS"].GetStructValue().Fields["app"].GetStringValue() != "weir" {
		t.Fatalf("metadata %v", m)
	}
	if _, err := (XDS{Address: "cp:1", Metadata: map[string]any{"bad": make(chan int)}}).metadata(); err == nil || !strings.Contains(err.Error(), "xds.metadata") {
		t.Errorf("metadata that is no JSON value: %v", err)
	}
}

func TestXDSPrecedence(t *testing.T) {
	ap := netip.MustParseAddrPort
	other := route.Config{Unknown: "refuse", Services: []route.Service{
		{Name: "shop/web:80", Addresses: []netip.AddrPort{ap("10.96.0.10:80")}},
		{Name: "shop/db:5432", Addresses: []netip.AddrPort{ap("10.96.0.11:5432"), ap("10.96.0.12:80")}},
		{Name: "shop/cache:6379", Addresses: []netip.AddrPort{ap("10.96.0.13:6379")}},
	}}
	fromXDS := xds.Update{Services: []route.Service{
		{Name: "shop/web:80", Addresses: []netip.AddrPort{ap("10.96.0.20:80")}},
		{Name: "listener:front", Addresses: []netip.AddrPort{ap("10.96.0.12:80")}},
	}}
	names := func(rc route.Config) string {
		var out []string
		for _, s := range rc.Services {
			out = append(out, s.Name+"="+strings.Join(strAddrs(s.Addresses), ","))
		}
		return strings.Join(out, " ")
	}
	for _, tc := range []struct{ precedence, want string }{
		{PrecedenceBoth, "shop/web:80=10.96.0.20:80 listener:front=10.96.0.12:80 shop/db:5432=10.96.0.11:5432 shop/cache:6379=10.96.0.13:6379"},
		{PrecedenceXDS, "shop/web:80=10.96.0.20:80 listener:front=10.96.0.12:80"},
		{PrecedenceKubernetes, "shop/web:80=10.96.0.10:80 shop/db:5432=10.96.0.11:5432,10.96.0.12:80 shop/cache:6379=10.96.0.13:6379"},
	} {
		s := &xdsSource{precedence: tc.precedence, other: other, last: &fromXDS}
		rc := s.mergeLocked()
		if got := names(rc); got != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.precedence, got, tc.want)
		}
		if rc.Unknown != "refuse" {
			t.Errorf("%s: the other source's unknownDestinations was lost", tc.precedence)
		}
		if _, err := route.Build(rc, nil); err != nil {
			t.Errorf("%s: merged routing does not build: %v", tc.precedence, err)
		}
	}
}

func strAddrs(as []netip.AddrPort) []string {
	var out []string
	for _, a := range as {
		out = append(out, a.String())
	}
	return out
}

// An endpoint push changes the agent's routing in place of a full merge
// (route.Snapshot.WithEndpoints) and gives the same routing as merging
// and building everything, with each precedence, also after the other
// source changed in between.
func TestXDSEndpointPushMerged(t *testing.T) {
	ap := netip.MustParseAddrPort
	eps := func(addrs ...string) []cluster.Endpoint {
		var out []cluster.Endpoint
		for _, a := range addrs {
			out = append(out, cluster.Endpoint{Addr: ap(a)})
		}
		return out
	}
	other := route.Config{Services: []route.Service{
		{Name: "shop/web:80", Addresses: []netip.AddrPort{ap("10.96.0.10:80")}, Endpoints: eps("10.1.0.1:80")},
		{Name: "shop/db:5432", Addresses: []netip.AddrPort{ap("10.96.0.11:5432")}, Endpoints: eps("10.1.0.2:5432")},
	}}
	base := xds.Update{Services: []route.Service{
		{Name: "shop/web:80", Addresses: []netip.AddrPort{ap("10.96.0.20:80")}, Endpoints: eps("10.2.0.1:80")},
		{Name: "shop/api:80", Addresses: []netip.AddrPort{ap("10.96.0.21:80")}, Endpoints: eps("10.2.0.2:80")},
	}}
	push := func(web ...string) xds.Update {
		u := base
		u.Endpoints = map[string][]cluster.Endpoint{"shop/web:80": eps(web...), "shop/api:80": base.Services[1].Endpoints}
		return u
	}
	dump := func(s *route.Snapshot) string {
		b, err := json.Marshal(s.Dump())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	for _, precedence := range []string{PrecedenceBoth, PrecedenceXDS, PrecedenceKubernetes} {
		a := &Agent{routes: &route.Table{}}
		var logged strings.Builder
		s := &xdsSource{a: a, precedence: precedence, log: slog.New(slog.NewTextHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug})), other: other}
		a.xds = s
		check := func(step string, u xds.Update) {
			t.Helper()
			// What a full merge and build of the same routing gives.
			want := &xdsSource{precedence: precedence, other: s.other, last: &xds.Update{Services: u.AllServices(), CIDRs: u.CIDRs}}
			full, err := route.Build(want.mergeLocked(), nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := dump(a.routes.Load()), dump(full); got != want {
				t.Errorf("%s, %s:\n got %s\nwant %s", precedence, step, got, want)
			}
		}
		steps := []struct {
			name  string
			u     xds.Update
			other bool // the other source publishes (keeping s.last) instead
		}{
			{name: "first update", u: base},
			{name: "endpoint push", u: push("10.2.0.9:80", "10.2.0.1:80")},
			{name: "other source changed", other: true},
			{name: "push after it", u: push("10.2.0.7:80")},
			{name: "push back", u: push("10.2.0.1:80")},
		}
		for _, st := range steps {
			if st.other {
				other.Services = append(other.Services[:2:2], route.Service{Name: "shop/new:80", Addresses: []netip.AddrPort{ap("10.96.0.30:80")}})
				if err := a.publishRoutes(other); err != nil {
					t.Fatal(err)
				}
				check(st.name, *s.last)
				continue
			}
			logged.Reset()
			if err := s.publish(st.u); err != nil {
				t.Fatalf("%s, %s: %v", precedence, st.name, err)
			}
			check(st.name, st.u)
			incremental := strings.Contains(logged.String(), "changed=endpoints")
			if want := precedence != PrecedenceKubernetes && st.u.Endpoints != nil; incremental != want {
				t.Errorf("%s, %s: endpoints applied alone %v, want %v (%s)", precedence, st.name, incremental, want, logged.String())
			}
		}
		other.Services = other.Services[:2]
	}
}
