package xds

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

func TestConvertClusterSettings(t *testing.T) {
	c := edsCluster("web")
	c.LbPolicy = clusterv3.Cluster_LEAST_REQUEST
	c.ConnectTimeout = durationpb.New(250 * time.Millisecond)
	c.CircuitBreakers = &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{
		{MaxConnections: weight(7), MaxPendingRequests: weight(3)},
		{Priority: corev3.RoutingPriority_HIGH, MaxConnections: weight(99)},
	}}
	c.OutlierDetection = &clusterv3.OutlierDetection{
		Consecutive_5Xx: weight(9), ConsecutiveGatewayFailure: weight(4), EnforcingConsecutiveGatewayFailure: weight(100),
		BaseEjectionTime: durationpb.New(2 * time.Second), MaxEjectionTime: durationpb.New(20 * time.Second), MaxEjectionPercent: weight(50),
	}
	c.HealthChecks = []*corev3.HealthCheck{{
		Timeout: durationpb.New(time.Second), Interval: durationpb.New(3 * time.Second),
		HealthyThreshold: weight(2), UnhealthyThreshold: weight(4),
		HealthChecker: &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}},
	}}
	c.DnsRefreshRate = durationpb.New(time.Second) // not supported: a warning
	e, n := convertCluster(c)
	if n.err() != "" {
		t.Fatal(n.err())
	}
	want := cluster.Config{
		Balancer:       cluster.LeastRequest,
		ConnectTimeout: cluster.Duration(250 * time.Millisecond),
		CircuitBreaker: cluster.CircuitBreakerConfig{MaxConnections: 7, MaxPendingConnects: 3},
		Outlier: cluster.OutlierConfig{ConsecutiveFailures: 4, BaseEjectionTime: cluster.Duration(2 * time.Second),
			MaxEjectionTime: cluster.Duration(20 * time.Second), MaxEjectionPercent: 50},
		HealthCheck: cluster.HealthCheckConfig{Enabled: true, Interval: cluster.Duration(3 * time.Second),
			Timeout: cluster.Duration(time.Second), HealthyThreshold: 2, UnhealthyThreshold: 4},
	}
	if !e.cfg.Equal(&want) || e.eds != "web" {
		t.Fatalf("got %+v eds %q\nwant %+v", e.cfg, e.eds, want)
	}
	w := strings.Join(n.warnings, "\n")
	for _, s := range []string{"dns_refresh_rate", "priority HIGH"} {
		if !strings.Contains(w, s) {
			t.Errorf("warnings do not mention %s:\n%s", s, w)
		}
	}
}

func TestConvertClusterPolicies(t *testing.T) {
	for _, tc := range []struct {
		policy clusterv3.Cluster_LbPolicy
		want   string
	}{
		{clusterv3.Cluster_ROUND_ROBIN, cluster.RoundRobin},
		{clusterv3.Cluster_LEAST_REQUEST, cluster.LeastRequest},
		{clusterv3.Cluster_RING_HASH, cluster.RingHash},
		{clusterv3.Cluster_MAGLEV, cluster.Maglev},
		{clusterv3.Cluster_RANDOM, cluster.Random},
		{clusterv3.Cluster_CLUSTER_PROVIDED, ""},
	} {
		c := edsCluster("x")
		c.LbPolicy = tc.policy
		e, n := convertCluster(c)
		if tc.want == "" {
			if !strings.Contains(n.err(), "lb_policy CLUSTER_PROVIDED") {
				t.Errorf("%s: error %q", tc.policy, n.err())
			}
			continue
		}
		if n.err() != "" || e.cfg.Balancer != tc.want {
			t.Errorf("%s: balancer %q err %q", tc.policy, e.cfg.Balancer, n.err())
		}
		if !e.cfg.Outlier.Disabled {
			t.Errorf("%s: a cluster without outlier_detection has outlier ejection on", tc.policy)
		}
	}
	dns := edsCluster("dns")
	dns.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
	if _, n := convertCluster(dns); !strings.Contains(n.err(), "STRICT_DNS") {
		t.Errorf("STRICT_DNS: error %q", n.err())
	}
}

func TestConvertEndpoints(t *testing.T) {
	md, _ := structpb.NewStruct(map[string]any{"version": "v2", "canary": true})
	lb := func(ip string, hs corev3.HealthStatus, w uint32) *endpointv3.LbEndpoint {
		e := &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(ip, 80)}},
			HealthStatus:   hs,
		}
		if w > 0 {
			e.LoadBalancingWeight = weight(w)
		}
		return e
	}
	withMD := lb("10.0.0.5", corev3.HealthStatus_HEALTHY, 0)
	withMD.Metadata = &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{LbEndpointMetadataKey: md}}
	c := &endpointv3.ClusterLoadAssignment{ClusterName: "web", Endpoints: []*endpointv3.LocalityLbEndpoints{
		{Locality: &corev3.Locality{Zone: "a"}, LbEndpoints: []*endpointv3.LbEndpoint{
			lb("10.0.0.1", corev3.HealthStatus_UNKNOWN, 3), lb("10.0.0.2", corev3.HealthStatus_DRAINING, 0),
			lb("10.0.0.3", corev3.HealthStatus_UNHEALTHY, 0), lb("10.0.0.4", corev3.HealthStatus_DEGRADED, 0), withMD,
		}},
		{Locality: &corev3.Locality{Zone: "b"}, Priority: 1, LbEndpoints: []*endpointv3.LbEndpoint{lb("10.0.1.1", corev3.HealthStatus_HEALTHY, 0)}},
	}}
	eps, n := convertCLA(c)
	if n.err() != "" {
		t.Fatal(n.err())
	}
	want := []struct {
		addr   string
		health cluster.Health
		weight uint32
		zone   string
	}{
		{"10.0.0.1:80", cluster.Healthy, 3, "a"}, {"10.0.0.2:80", cluster.Draining, 0, "a"},
		{"10.0.0.3:80", cluster.Unhealthy, 0, "a"}, {"10.0.0.4:80", cluster.Unhealthy, 0, "a"},
		{"10.0.0.5:80", cluster.Healthy, 0, "a"}, {"10.0.1.1:80", cluster.Draining, 0, "b"},
	}
	if len(eps) != len(want) {
		t.Fatalf("got %d endpoints, want %d", len(eps), len(want))
	}
	for i, w := range want {
		e := eps[i]
		if e.Addr.String() != w.addr || e.Health != w.health || e.Weight != w.weight || e.Labels[cluster.ZoneLabel] != w.zone {
			t.Errorf("endpoint %d: %+v, want %+v", i, e, w)
		}
	}
	if eps[4].Labels["version"] != "v2" || eps[4].Labels["canary"] != "true" {
		t.Errorf("metadata labels: %v", eps[4].Labels)
	}
	if !strings.Contains(strings.Join(n.warnings, " "), "priority 1") {
		t.Errorf("priority not warned about: %v", n.warnings)
	}

	c.Endpoints[0].LbEndpoints = append(c.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
		HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr("web.example", 80)}},
	})
	if _, n := convertCLA(c); !strings.Contains(n.err(), "not an IP address") {
		t.Errorf("hostname endpoint: error %q", n.err())
	}
}

func TestConvertRoutes(t *testing.T) {
	rc := routeConfig("r",
		&routev3.VirtualHost{Name: "shop", Domains: []string{"shop.example", "shop.example:80", "*.shop.example"}, Routes: []*routev3.Route{
			{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: "/exact"},
					Headers: []*routev3.HeaderMatcher{
						{Name: "x-env", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "canary"}}}},
						{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_ExactMatch{ExactMatch: "POST"}},
					},
					QueryParameters: []*routev3.QueryParameterMatcher{{Name: "v", QueryParameterMatchSpecifier: &routev3.QueryParameterMatcher_PresentMatch{PresentMatch: true}}},
				},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_WeightedClusters{WeightedClusters: &routev3.WeightedCluster{
					Clusters: []*routev3.WeightedCluster_ClusterWeight{{Name: "a", Weight: weight(90)}, {Name: "b", Weight: weight(10)}},
				}}}},
				RequestHeadersToAdd:     []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-via", Value: "weir"}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD}},
				ResponseHeadersToRemove: []string{"server"},
			},
			{
				Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_PathSeparatedPrefix{PathSeparatedPrefix: "/old"}},
				Action: &routev3.Route_Route{Route: &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "a"}, PrefixRewrite: "/new",
					HostRewriteSpecifier: &routev3.RouteAction_HostRewriteLiteral{HostRewriteLiteral: "a.internal"},
				}},
			},
			{
				Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/http"}},
				Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true}}},
			},
			prefixRoute("/", "b"),
		}},
		&routev3.VirtualHost{Name: "rest", Domains: []string{"*"}, Routes: []*routev3.Route{prefixRoute("/", "c")}},
	)
	e, n := convertRouteConfig(rc)
	if n.err() != "" {
		t.Fatal(n.err())
	}
	if len(e.routes) != 2 || e.routes[1].Name != "rest" || len(e.routes[1].Hostnames) != 0 {
		t.Fatalf("routes: %+v", e.routes)
	}
	shop := e.routes[0]
	if strings.Join(shop.Hostnames, ",") != "shop.example,*.shop.example" {
		t.Errorf("hostnames %v", shop.Hostnames)
	}
	r0 := shop.Rules[0]
	m := r0.Matches[0]
	if m.Path.Type != route.PathExact || m.Method != "POST" || len(m.Headers) != 1 || m.Headers[0].Value != "canary" || len(m.QueryParams) != 1 {
		t.Errorf("rule 0 match %+v", m)
	}
	if len(r0.Backends) != 2 || *r0.Backends[0].Weight != 90 || r0.Backends[1].Service != "b" {
		t.Errorf("rule 0 backends %+v", r0.Backends)
	}
	var req, resp *route.HeaderModifier
	for _, f := range r0.Filters {
		if f.RequestHeaderModifier != nil {
			req = f.RequestHeaderModifier
		}
		if f.ResponseHeaderModifier != nil {
			resp = f.ResponseHeaderModifier
		}
	}
	if req == nil || len(req.Set) != 1 || req.Set[0].Name != "x-via" || resp == nil || resp.Remove[0] != "server" {
		t.Errorf("rule 0 header filters %+v", r0.Filters)
	}
	r1 := shop.Rules[1]
	if r1.Matches[0].Path.Type != route.PathPrefix || r1.Filters[0].URLRewrite.Path.ReplacePrefixMatch != "/new" || r1.Filters[0].URLRewrite.Hostname != "a.internal" {
		t.Errorf("rule 1 %+v", r1)
	}
	r2 := shop.Rules[2]
	if r2.Matches[0].Path.Type != route.PathRegex || r2.Filters[0].RequestRedirect.Scheme != "https" || r2.Filters[0].RequestRedirect.StatusCode != 301 {
		t.Errorf("rule 2 %+v / %+v", r2.Matches[0].Path, r2.Filters[0].RequestRedirect)
	}
	// The routes compile in weir's router once backends name services.
	svcs := []route.Service{{Name: "a"}, {Name: "b"}, {Name: "c"}, {Name: "front", Addresses: []netip.AddrPort{mustAddrPort("10.96.0.1:80")}, HTTPRoutes: e.routes}}
	if _, err := route.Build(route.Config{Services: svcs}, nil); err != nil {
		t.Fatalf("converted routes do not build: %v", err)
	}
	// Unsupported match conditions make the configuration unusable.
	bad := routeConfig("bad", &routev3.VirtualHost{Name: "v", Domains: []string{"*"}, Routes: []*routev3.Route{{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}, Grpc: &routev3.RouteMatch_GrpcRouteMatchOptions{}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "a"}}},
	}}})
	if _, n := convertRouteConfig(bad); !strings.Contains(n.err(), "grpc is not supported") {
		t.Errorf("grpc match: error %q", n.err())
	}
}

func TestServiceName(t *testing.T) {
	for in, want := range map[string]string{
		"outbound|80||web.shop.svc.cluster.local":   "shop/web:80",
		"outbound|80|v1|web.shop.svc.cluster.local": "outbound|80|v1|web.shop.svc.cluster.local",
		"inbound|80||":   "inbound|80||",
		"plain-cluster":  "plain-cluster",
		"outbound|443||": "outbound|443||",
	} {
		if got := ServiceName(in); got != want {
			t.Errorf("ServiceName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConvertListeners(t *testing.T) {
	// A wildcard address holds every destination on its port.
	l := tcpListener(t, "any-80", "0.0.0.0:80", "web")
	e, n := convertListener(l)
	if n.err() != "" || len(e.chains) != 1 || len(e.chains[0].cidrs) != 1 || e.chains[0].cidrs[0].Prefix.String() != "0.0.0.0/0" || e.chains[0].cidrs[0].Port != 80 {
		t.Fatalf("0.0.0.0:80: %+v %v", e, n.err())
	}
	// Capture listeners are weir's own job.
	l = tcpListener(t, "virtualOutbound", "0.0.0.0:15001", "PassthroughCluster")
	l.UseOriginalDst = wrapperspb.Bool(true)
	if e, n := convertListener(l); !e.skip || n.err() != "" {
		t.Fatalf("use_original_dst listener not skipped: %+v %v", e, n.err())
	}
	// A chain matching server names is not supported: warned, and with no
	// other chain the listener is unusable.
	l = tcpListener(t, "sni", "10.96.0.30:443", "web")
	l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{ServerNames: []string{"a.example"}}
	if _, n := convertListener(l); !strings.Contains(n.err(), "no filter chain") || !strings.Contains(strings.Join(n.warnings, " "), "server names") {
		t.Fatalf("SNI chain: err %q warnings %v", n.err(), n.warnings)
	}
	// An HTTP listener names its route configuration.
	e, n = convertListener(httpListener(t, "front", "10.96.0.20:80", "front-routes"))
	if n.err() != "" || e.chains[0].rds != "front-routes" || e.chains[0].addrs[0].String() != "10.96.0.20:80" {
		t.Fatalf("HTTP listener: %+v %v", e, n.err())
	}
	// Istio's outbound HTTP listener: the HTTP chain selected by
	// application protocol, a passthrough default chain for the rest. The
	// HTTP chain takes the port; the default chain's overlap is dropped.
	l = httpListener(t, "0.0.0.0_80", "0.0.0.0:80", "80")
	l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{TransportProtocol: "raw_buffer", ApplicationProtocols: []string{"http/1.1", "h2c"}}
	l.DefaultFilterChain = tcpListener(t, "x", "0.0.0.0:80", "PassthroughCluster").FilterChains[0]
	e, n = convertListener(l)
	if n.err() != "" || len(e.chains) != 1 || e.chains[0].rds != "80" || e.chains[0].protocol != route.HTTP || e.chains[0].cidrs[0].Prefix.String() != "0.0.0.0/0" || e.chains[0].cidrs[0].Port != 80 {
		t.Fatalf("Istio HTTP listener: %+v %v", e, n.err())
	}
	if w := strings.Join(n.warnings, " "); !strings.Contains(w, "plaintext HTTP takes every connection") {
		t.Errorf("warnings do not say the default chain is not used: %s", w)
	}
	// Other application protocols (TLS ALPNs) are still not supported.
	l.FilterChains[0].FilterChainMatch = &listenerv3.FilterChainMatch{ApplicationProtocols: []string{"istio-http/1.1"}}
	l.DefaultFilterChain = nil
	if _, n := convertListener(l); !strings.Contains(n.err(), "no filter chain") {
		t.Fatalf("istio-http/1.1 chain: err %q", n.err())
	}
}

func TestComposeNamesConflictsAndMissingClusters(t *testing.T) {
	s := newStore()
	web, _ := convertCluster(edsCluster("outbound|80||web.shop.svc.cluster.local"))
	s.clusters["outbound|80||web.shop.svc.cluster.local"] = web
	s.endpoints["outbound|80||web.shop.svc.cluster.local"], _ = convertCLA(cla("outbound|80||web.shop.svc.cluster.local", "10.0.0.1:80"))
	a, _ := convertListener(tcpListener(t, "a", "10.96.0.10:80", "outbound|80||web.shop.svc.cluster.local"))
	b, _ := convertListener(tcpListener(t, "b", "10.96.0.10:80", "outbound|80||web.shop.svc.cluster.local"))
	c, _ := convertListener(tcpListener(t, "c", "10.96.0.11:80", "missing"))
	s.listeners["a"], s.listeners["b"], s.listeners["c"] = a, b, c
	u, problems := s.compose()
	if len(u.Services) != 1 || u.Services[0].Name != "shop/web:80" || len(u.Services[0].Addresses) != 1 {
		t.Fatalf("services: %s", describe(u))
	}
	p := strings.Join(problems, "\n")
	if !strings.Contains(p, "listener b: 10.96.0.10:80 already belongs to listener a") || !strings.Contains(p, `cluster "missing" is not known`) {
		t.Fatalf("problems:\n%s", p)
	}
	if _, err := route.Build(route.Config{Services: u.Services, CIDRs: u.CIDRs}, nil); err != nil {
		t.Fatal(err)
	}
}
