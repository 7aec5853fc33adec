package xds

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/weir-mesh/weir/proxy/route"
)

const testNode = "node-1"

// cp is a real xDS control plane built from go-control-plane's server and
// snapshot cache, on 127.0.0.1. It can be stopped and started again on the
// same port; the cache survives, as a control plane's state would.
type cp struct {
	t     testing.TB
	addr  string
	cache cachev3.SnapshotCache
	srv   *grpc.Server

	mu sync.Mutex
	// sent counts resources sent per type URL (both variants).
	sent map[string]int
	// nacks holds the error details of NACKs received.
	nacks []string
	// deltaInitial holds initial_resource_versions of delta requests.
	deltaInitial []map[string]string
	// subs and unsubs count delta resource_names_subscribe and
	// resource_names_unsubscribe per type URL and name.
	subs, unsubs map[string]map[string]int
	streams      atomic.Int64
}

func newCP(t testing.TB) *cp {
	t.Helper()
	c := &cp{t: t, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), sent: map[string]int{}}
	c.start("127.0.0.1:0")
	t.Cleanup(c.stop)
	return c
}

func (c *cp) callbacks() serverv3.Callbacks {
	return serverv3.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			c.streams.Add(1)
			return nil
		},
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			c.streams.Add(1)
			return nil
		},
		StreamRequestFunc: func(_ int64, r *discovery.DiscoveryRequest) error {
			if r.GetErrorDetail() != nil {
				c.mu.Lock()
				c.nacks = append(c.nacks, r.GetErrorDetail().GetMessage())
				c.mu.Unlock()
			}
			return nil
		},
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discovery.DiscoveryRequest, r *discovery.DiscoveryResponse) {
			c.mu.Lock()
			c.sent[r.GetTypeUrl()] += len(r.GetResources())
			c.mu.Unlock()
		},
		StreamDeltaRequestFunc: func(_ int64, r *discovery.DeltaDiscoveryRequest) error {
			c.mu.Lock()
			if r.GetErrorDetail() != nil {
				c.nacks = append(c.nacks, r.GetErrorDetail().GetMessage())
			}
			for _, n := range r.GetResourceNamesSubscribe() {
				if c.subs == nil {
					c.subs = map[string]map[string]int{}
				}
				if c.subs[r.GetTypeUrl()] == nil {
					c.subs[r.GetTypeUrl()] = map[string]int{}
				}
				c.subs[r.GetTypeUrl()][n]++
			}
			for _, n := range r.GetResourceNamesUnsubscribe() {
				if c.unsubs == nil {
					c.unsubs = map[string]map[string]int{}
				}
				if c.unsubs[r.GetTypeUrl()] == nil {
					c.unsubs[r.GetTypeUrl()] = map[string]int{}
				}
				c.unsubs[r.GetTypeUrl()][n]++
			}
			if len(r.GetInitialResourceVersions()) > 0 {
				c.deltaInitial = append(c.deltaInitial, r.GetInitialResourceVersions())
			}
			c.mu.Unlock()
			return nil
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
			c.mu.Lock()
			c.sent[r.GetTypeUrl()] += len(r.GetResources())
			c.mu.Unlock()
		},
	}
}

func (c *cp) start(addr string) {
	c.t.Helper()
	var ln net.Listener
	var err error
	for i := 0; i < 50; i++ {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		c.t.Fatalf("control plane listen on %s: %v", addr, err)
	}
	c.addr = ln.Addr().String()
	c.srv = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(c.srv, serverv3.NewServer(context.Background(), c.cache, c.callbacks()))
	go c.srv.Serve(ln)
}

func (c *cp) stop() {
	if c.srv != nil {
		c.srv.Stop()
		c.srv = nil
	}
}

// restart stops the server and starts a new one on the same port.
func (c *cp) restart(down time.Duration) {
	c.t.Helper()
	c.stop()
	time.Sleep(down)
	c.start(c.addr)
}

func (c *cp) set(version string, res map[string][]types.Resource) {
	c.t.Helper()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.cache.SetSnapshot(context.Background(), testNode, snap); err != nil {
		c.t.Fatal(err)
	}
}

func (c *cp) sentOf(url string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sent[url]
}

func (c *cp) nackList() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.nacks...)
}

// world is a set of resources for a snapshot.
type world struct {
	clusters  []types.Resource
	endpoints []types.Resource
	listeners []types.Resource
	routes    []types.Resource
}

func (w *world) res() map[string][]types.Resource {
	return map[string][]types.Resource{
		resource.ClusterType: w.clusters, resource.EndpointType: w.endpoints,
		resource.ListenerType: w.listeners, resource.RouteType: w.routes,
	}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{
			EdsConfig: &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		},
		ConnectTimeout: durationpb.New(time.Second),
	}
}

func sockAddr(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

func cla(name string, addrs ...string) *endpointv3.ClusterLoadAssignment {
	loc := &endpointv3.LocalityLbEndpoints{Locality: &corev3.Locality{Zone: "z1"}}
	for _, a := range addrs {
		ap := netip.MustParseAddrPort(a)
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sockAddr(ap.Addr().String(), uint32(ap.Port()))}},
		})
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{loc}}
}

func tcpListener(t testing.TB, name, addr, clusterName string) *listenerv3.Listener {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	tp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: clusterName}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(ap.Addr().String(), uint32(ap.Port())),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
		}}}},
	}
}

func httpListener(t testing.TB, name, addr, rds string) *listenerv3.Listener {
	t.Helper()
	ap := netip.MustParseAddrPort(addr)
	h, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
			RouteConfigName: rds,
			ConfigSource:    &corev3.ConfigSource{ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name:    name,
		Address: sockAddr(ap.Addr().String(), uint32(ap.Port())),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: h},
		}}}},
	}
}

func routeConfig(name string, vhosts ...*routev3.VirtualHost) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: vhosts}
}

func prefixRoute(prefix, clusterName string) *routev3.Route {
	return &routev3.Route{
		Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: prefix}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: clusterName}}},
	}
}

// sink collects what the client publishes and checks it builds.
type sink struct {
	t    testing.TB
	mu   sync.Mutex
	last *Update // as published, with AllServices in Services
	from *Update // as published
	snap *route.Snapshot
	n    int
	ch   chan struct{}
}

func newSink(t testing.TB) *sink { return &sink{t: t, ch: make(chan struct{}, 1)} }

func (s *sink) publish(u Update) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	snap, err := u.Snapshot(s.snap, s.from)
	if err != nil {
		s.t.Errorf("published routing does not build: %v", err)
		return err
	}
	all := Update{Services: u.AllServices(), CIDRs: u.CIDRs}
	if len(all.Services) <= 100 {
		// An endpoint push applied to the last snapshot routes exactly as
		// the whole routing built afresh.
		full, err := route.Build(route.Config{Services: all.Services, CIDRs: all.CIDRs}, nil)
		if err != nil {
			s.t.Errorf("published routing does not build from scratch: %v", err)
			return err
		}
		if a, b := dumpJSON(snap), dumpJSON(full); a != b {
			s.t.Errorf("snapshot from the push:\n%s\nbuilt afresh:\n%s", a, b)
		}
	}
	s.last, s.from, s.snap = &all, &u, snap
	s.n++
	select {
	case s.ch <- struct{}{}:
	default:
	}
	return nil
}

func dumpJSON(s *route.Snapshot) string {
	b, err := json.Marshal(s.Dump())
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// wait waits until cond holds for the last published update.
func (s *sink) wait(d time.Duration, what string, cond func(Update) bool) time.Duration {
	s.t.Helper()
	start := time.Now()
	deadline := time.After(d)
	for {
		s.mu.Lock()
		ok := s.last != nil && cond(*s.last)
		s.mu.Unlock()
		if ok {
			return time.Since(start)
		}
		select {
		case <-s.ch:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			s.mu.Lock()
			defer s.mu.Unlock()
			if s.last == nil {
				s.t.Fatalf("%s: nothing published within %v", what, d)
			}
			s.t.Fatalf("%s: not within %v; last published: %s", what, d, describe(*s.last))
		}
	}
}

func describe(u Update) string {
	var b strings.Builder
	for _, s := range u.Services {
		fmt.Fprintf(&b, "[%s addrs=%v eps=%d routes=%d] ", s.Name, s.Addresses, len(s.Endpoints), len(s.HTTPRoutes))
	}
	return b.String()
}

func service(u Update, name string) *route.Service {
	for i := range u.Services {
		if u.Services[i].Name == name {
			return &u.Services[i]
		}
	}
	return nil
}

func endpointsOf(u Update, name string) []string {
	s := service(u, name)
	if s == nil {
		return nil
	}
	var out []string
	for _, e := range s.Endpoints {
		out = append(out, e.Addr.String())
	}
	return out
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startClient runs a client against c until the test ends.
func startClient(t testing.TB, c *cp, delta bool, s *sink, mod func(*Options)) *Client {
	t.Helper()
	opts := Options{
		Target: c.addr, Delta: delta, Node: &corev3.Node{Id: testNode, Cluster: "test"},
		Publish: s.publish, Log: testLogger(t),
		BackoffBase: 50 * time.Millisecond, BackoffMax: 400 * time.Millisecond,
	}
	if mod != nil {
		mod(&opts)
	}
	cl, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { cl.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return cl
}

func weight(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
