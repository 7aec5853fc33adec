package kube

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

func svc(name string, ips []string, ports ...corev1.ServicePort) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name, UID: types.UID("svc-" + name)}}
	s.Spec.ClusterIPs = ips
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	s.Spec.Ports = ports
	return s
}

func sport(name string, port int32, proto corev1.Protocol) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: port, Protocol: proto}
}

func eport(name string, port int32) discoveryv1.EndpointPort {
	return discoveryv1.EndpointPort{Name: &name, Port: &port, Protocol: new(corev1.ProtocolTCP)}
}

type cond struct{ ready, serving, terminating *bool }

func ep(addr string, c cond, zone string) discoveryv1.Endpoint {
	e := discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: c.ready, Serving: c.serving, Terminating: c.terminating}}
	if zone != "" {
		e.Zone = &zone
	}
	return e
}

func slice(t discoveryv1.AddressType, ports []discoveryv1.EndpointPort, eps ...discoveryv1.Endpoint) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{AddressType: t, Ports: ports, Endpoints: eps}
}

func TestBuildServices(t *testing.T) {
	yes, no := new(true), new(false)
	ready := cond{ready: yes}
	notReady := cond{ready: no, serving: no, terminating: no}
	drainingServing := cond{ready: no, serving: yes, terminating: yes}
	drainingGone := cond{ready: no, serving: no, terminating: yes}
	unset := cond{}

	webPorts := []discoveryv1.EndpointPort{eport("http", 8080), eport("admin", 9000)}
	slices := map[string][]*discoveryv1.EndpointSlice{
		"web": {
			slice(discoveryv1.AddressTypeIPv4, webPorts,
				ep("10.1.0.2", ready, "zone-a"),
				ep("10.1.0.1", unset, ""),
				ep("10.1.0.3", notReady, ""),
				ep("10.1.0.4", drainingServing, "zone-b"),
				ep("10.1.0.5", drainingGone, ""),
				ep("fd00::1", ready, ""), // wrong family for the slice
			),
			slice(discoveryv1.AddressTypeIPv6, webPorts, ep("fd00::2", ready, "zone-a")),
			// The same address in a second slice (a rewrite in progress)
			// counts once, at its best health.
			slice(discoveryv1.AddressTypeIPv4, webPorts, ep("10.1.0.4", ready, "zone-b")),
			slice(discoveryv1.AddressTypeFQDN, webPorts, ep("db.example.invalid", ready, "")),
		},
		"unnamed": {slice(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("", 5000)}, ep("10.2.0.1", ready, ""))},
	}
	slicesOf := func(ns, name string) []*discoveryv1.EndpointSlice {
		if ns != "ns" {
			t.Fatalf("slices asked for namespace %q", ns)
		}
		return slices[name]
	}

	headless := svc("headless", []string{corev1.ClusterIPNone}, sport("", 80, ""))
	external := svc("ext", nil, sport("", 80, ""))
	external.Spec.Type = corev1.ServiceTypeExternalName
	external.Spec.ExternalName = "example.invalid"
	balanced := svc("balanced", []string{"10.96.0.30"}, sport("", 80, ""))
	balanced.Annotations = map[string]string{AnnotationCluster: `{"connectTimeout":"2s","balancer":"random"}`, AnnotationBalancer: "maglev"}
	bad := svc("bad", []string{"10.96.0.31"}, sport("", 80, ""))
	bad.Annotations = map[string]string{AnnotationBalancer: "fastest"}

	in := []*corev1.Service{
		svc("web", []string{"10.96.0.10", "fd00:96::10"},
			sport("http", 80, corev1.ProtocolTCP), sport("admin", 9000, ""), sport("dns", 53, corev1.ProtocolUDP), sport("nomatch", 81, "")),
		svc("unnamed", []string{"10.96.0.20"}, sport("", 5000, "")),
		svc("pending", nil, sport("", 80, "")), // no ClusterIP allocated
		headless, external, balanced, bad,
	}
	got, problems := buildServices(in, slicesOf)

	hp := func(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
	zone := func(z string) map[string]string { return map[string]string{LabelZone: z} }
	webHTTP := []cluster.Endpoint{
		{Addr: hp("10.1.0.1:8080")},
		{Addr: hp("10.1.0.2:8080"), Labels: zone("zone-a")},
		{Addr: hp("10.1.0.4:8080"), Labels: zone("zone-b")},
		{Addr: hp("[fd00::2]:8080"), Labels: zone("zone-a")},
	}
	webAdmin := []cluster.Endpoint{
		{Addr: hp("10.1.0.1:9000")},
		{Addr: hp("10.1.0.2:9000"), Labels: zone("zone-a")},
		{Addr: hp("10.1.0.4:9000"), Labels: zone("zone-b")},
		{Addr: hp("[fd00::2]:9000"), Labels: zone("zone-a")},
	}
	want := []route.Service{
		{Name: "ns/bad:80", Addresses: []netip.AddrPort{hp("10.96.0.31:80")}},
		{Name: "ns/balanced:80", Addresses: []netip.AddrPort{hp("10.96.0.30:80")},
			Cluster: cluster.Config{Balancer: cluster.Maglev, ConnectTimeout: cluster.Duration(2e9)}},
		{Name: "ns/unnamed:5000", Addresses: []netip.AddrPort{hp("10.96.0.20:5000")}, Endpoints: []cluster.Endpoint{{Addr: hp("10.2.0.1:5000")}}},
		{Name: "ns/web:80", Addresses: []netip.AddrPort{hp("10.96.0.10:80"), hp("[fd00:96::10]:80")}, Endpoints: webHTTP, Protocol: route.HTTP}, // the port is named "http"
		{Name: "ns/web:81", Addresses: []netip.AddrPort{hp("10.96.0.10:81"), hp("[fd00:96::10]:81")}},
		{Name: "ns/web:9000", Addresses: []netip.AddrPort{hp("10.96.0.10:9000"), hp("[fd00:96::10]:9000")}, Endpoints: webAdmin},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("buildServices:\n got %+v\nwant %+v", got, want)
	}
	if len(problems) != 1 || problems[0].svc != bad || !strings.Contains(problems[0].err.Error(), `annotation weir.dev/balancer: balancer "fastest"`) {
		t.Errorf("problems = %+v, want one naming weir.dev/balancer of ns/bad", problems)
	}
}

func TestBuildServicesDraining(t *testing.T) {
	// A serving, terminating endpoint is kept as Draining: the cluster
	// uses it only when no healthy endpoint is left.
	yes, no := new(true), new(false)
	s := svc("web", []string{"10.96.0.10"}, sport("", 80, ""))
	sl := slice(discoveryv1.AddressTypeIPv4, []discoveryv1.EndpointPort{eport("", 8080)},
		ep("10.1.0.4", cond{ready: no, serving: yes, terminating: yes}, ""))
	got, _ := buildServices([]*corev1.Service{s}, func(string, string) []*discoveryv1.EndpointSlice { return []*discoveryv1.EndpointSlice{sl} })
	if len(got) != 1 || len(got[0].Endpoints) != 1 || got[0].Endpoints[0].Health != cluster.Draining {
		t.Fatalf("got %+v, want one Draining endpoint", got)
	}
}

func TestClusterConfigAnnotation(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		want cluster.Config
		err  string
	}{
		{name: "none"},
		{name: "balancer", ann: map[string]string{AnnotationBalancer: "least_request"}, want: cluster.Config{Balancer: cluster.LeastRequest}},
		{name: "json", ann: map[string]string{AnnotationCluster: `{"outlier":{"consecutiveFailures":3}}`}, want: cluster.Config{Outlier: cluster.OutlierConfig{ConsecutiveFailures: 3}}},
		{name: "name is ignored", ann: map[string]string{AnnotationCluster: `{"name":"x"}`}},
		{name: "unknown key", ann: map[string]string{AnnotationCluster: `{"balancr":"random"}`}, err: `unknown field "balancr"`},
		{name: "invalid value", ann: map[string]string{AnnotationCluster: `{"retry":{"maxRetries":50}}`}, err: "retry.maxRetries must be <= 10"},
		{name: "not json", ann: map[string]string{AnnotationCluster: `balancer: random`}, err: "annotation weir.dev/cluster"},
		{name: "trailing", ann: map[string]string{AnnotationCluster: `{} {}`}, err: "trailing data"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := clusterConfig(tc.ann)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !got.Equal(&tc.want) {
				t.Fatalf("config = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestPortProtocol(t *testing.T) {
	ap := func(s string) *string { return &s }
	for _, tc := range []struct {
		sp   corev1.ServicePort
		want route.Protocol
	}{
		{corev1.ServicePort{Name: "web", AppProtocol: ap("http")}, route.HTTP},
		{corev1.ServicePort{Name: "tcp-x", AppProtocol: ap("kubernetes.io/h2c")}, route.HTTP2},
		{corev1.ServicePort{AppProtocol: ap("GRPC")}, route.GRPC},
		{corev1.ServicePort{AppProtocol: ap("tls")}, route.TLS},
		{corev1.ServicePort{Name: "http", AppProtocol: ap("weir.invalid/custom")}, route.Auto},
		{corev1.ServicePort{Name: "http-api"}, route.HTTP},
		{corev1.ServicePort{Name: "grpc-backend"}, route.GRPC},
		{corev1.ServicePort{Name: "tcp-db"}, route.TCP},
		{corev1.ServicePort{Name: "https"}, route.TLS},
		{corev1.ServicePort{Name: "httpx"}, route.Auto},
		{corev1.ServicePort{Name: "web"}, route.Auto},
		{corev1.ServicePort{Name: "rpc", AppProtocol: ap("dubbo")}, route.Dubbo},
		{corev1.ServicePort{Name: "dubbo-users"}, route.Dubbo},
		{corev1.ServicePort{AppProtocol: ap("sofarpc")}, route.Bolt},
		{corev1.ServicePort{Name: "bolt"}, route.Bolt},
		{corev1.ServicePort{AppProtocol: ap("rocketmq")}, route.RocketMQ},
		{corev1.ServicePort{Name: "rocketmq-broker"}, route.RocketMQ},
	} {
		if got := PortProtocol(tc.sp); got != tc.want {
			t.Errorf("PortProtocol(%s, %v) = %q, want %q", tc.sp.Name, tc.sp.AppProtocol, got, tc.want)
		}
	}
}

// weir.dev/dataplane: kernel marks the ports the kernel can balance; the
// others stay with the agent and the Service gets a problem naming why.
func TestBuildServiceKernelDataplane(t *testing.T) {
	tcp := "tcp"
	db := sport("db", 5432, corev1.ProtocolTCP)
	db.AppProtocol = &tcp
	web := sport("http", 80, corev1.ProtocolTCP)
	s := svc("db", []string{"10.96.0.30"}, db, web)
	s.Annotations = map[string]string{AnnotationDataplane: "kernel"}
	out, problem := buildService(s, nil)
	if len(out) != 2 || !out[0].Kernel || out[1].Kernel {
		t.Fatalf("services %+v; want port 5432 kernel-balanced, port 80 not", out)
	}
	if problem == nil || !strings.Contains(problem.err.Error(), "port 80") || !strings.Contains(problem.err.Error(), "protocol: dataplane kernel needs protocol tcp") {
		t.Fatalf("problem %+v; want one naming port 80's protocol", problem)
	}
	s.Annotations[AnnotationDataplane] = "xdp"
	out, problem = buildService(s, nil)
	if out[0].Kernel || problem == nil || !strings.Contains(problem.err.Error(), AnnotationDataplane) {
		t.Fatalf("dataplane xdp: %+v, %+v; want agent and a problem naming the annotation", out, problem)
	}
	s.Annotations = map[string]string{AnnotationDataplane: "kernel", AnnotationBalancer: "least_request"}
	if out, problem = buildService(s, nil); out[0].Kernel || problem == nil || !strings.Contains(problem.err.Error(), "cluster.balancer") {
		t.Fatalf("kernel with least_request: %+v, %+v; want agent and a problem naming cluster.balancer", out, problem)
	}
}
