package integration

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weir-mesh/weir/integration/testworld"
)

const xdsNode = "weir-test-node"

// controlPlane is a go-control-plane xDS server run by the test process.
// Its listening socket is inside the node netns (nothing listens in the
// test's own namespace), so only the agent there reaches it.
type controlPlane struct {
	node  *testworld.Node
	addr  string
	cache cachev3.SnapshotCache
	srv   *grpc.Server
}

func startControlPlane(t *testing.T, node *testworld.Node) *controlPlane {
	t.Helper()
	cp := &controlPlane{node: node, cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	cp.start(t, "127.0.0.1:0")
	t.Cleanup(cp.stop)
	return cp
}

func (cp *controlPlane) start(t *testing.T, addr string) {
	t.Helper()
	ln := cp.node.Listen(t, addr)
	cp.addr = ln.Addr().String()
	cp.srv = grpc.NewServer()
	discovery.RegisterAggregatedDiscoveryServiceServer(cp.srv, serverv3.NewServer(context.Background(), cp.cache, nil))
	go cp.srv.Serve(ln)
}

func (cp *controlPlane) stop() {
	if cp.srv != nil {
		cp.srv.Stop()
		cp.srv = nil
	}
}

// push publishes one service: a listener at vip sending TCP to cluster
// web, whose endpoints are eps.
func (cp *controlPlane) push(t *testing.T, version string, vip netip.AddrPort, eps ...netip.AddrPort) {
	t.Helper()
	sock := func(a netip.AddrPort) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: a.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port())},
		}}}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: "web", Endpoints: []*endpointv3.LocalityLbEndpoints{{}}}
	for _, e := range eps {
		cla.Endpoints[0].LbEndpoints = append(cla.Endpoints[0].LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock(e)}},
		})
	}
	tp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: "web", ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: "web"}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ClusterType: {&clusterv3.Cluster{
			Name:                 "web",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			}},
			ConnectTimeout: durationpb.New(2 * time.Second),
		}},
		resource.EndpointType: {cla},
		resource.ListenerType: {&listenerv3.Listener{
			Name:    "web-tcp",
			Address: sock(vip),
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
			}}}},
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), xdsNode, snap); err != nil {
		t.Fatal(err)
	}
}

// TestXDSRoutesFollowControlPlane: a service that exists only in the xDS
// snapshot is reachable from a captured pod; an endpoint push changes the
// answering server within 1s; the control plane stopped and started again
// costs no request.
func TestXDSRoutesFollowControlPlane(t *testing.T) {
	for _, mode := range []string{"delta", "sotw"} {
		t.Run(mode, func(t *testing.T) {
			node := testworld.NewNode(t, world{"1.1.0", "redirect", "v4", ""}.nodeOptions())
			capture := map[string]any{"namespaces": []string{"demo"}}
			agent := node.StartAgent(t, map[string]any{"capture": capture})
			srvA := node.MustAddPod(t, "backend", "server-a")
			srvB := node.MustAddPod(t, "backend", "server-b")
			srvA.StartNginx(t, 8080, "server-a")
			srvB.StartNginx(t, 8080, "server-b")
			agent.Stop(t)

			// Not the skeleton's VIP: this address is nowhere but in xDS.
			vip := netip.MustParseAddrPort("10.96.7.7:80")
			epA := netip.AddrPortFrom(addr(srvA, "v4"), 8080)
			epB := netip.AddrPortFrom(addr(srvB, "v4"), 8080)
			cp := startControlPlane(t, node)
			cp.push(t, "1", vip, epA)
			agent = node.StartAgent(t, map[string]any{
				"capture": capture,
				"xds":     map[string]any{"address": cp.addr, "mode": mode, "nodeId": xdsNode},
			})
			client := node.MustAddPod(t, "demo", "client")

			get := func() (string, error) {
				body, err := client.Get(url(vip))
				return strings.TrimSpace(body), err
			}
			if body, err := get(); err != nil || body != "server-a" {
				t.Fatalf("request to the xDS-only service %s: %q, %v", vip, body, err)
			}
			if got := agent.Metric(t, "weir_xds_connected"); got != 1 {
				t.Fatalf("weir_xds_connected = %v, want 1", got)
			}

			// A push moves the service to server-b within 1s.
			cp.push(t, "2", vip, epB)
			start := time.Now()
			for {
				body, err := get()
				if err == nil && body == "server-b" {
					break
				}
				if time.Since(start) > time.Second {
					t.Fatalf("1s after the push the service still answers %q (%v)", body, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("%s: push followed in %v", mode, time.Since(start).Round(time.Millisecond))

			// The control plane goes away and comes back while a client
			// keeps sending requests: none fails.
			stopLoad := steadyLoad(t, get, "server-b")
			time.Sleep(300 * time.Millisecond)
			cp.stop()
			waitMetric(t, agent, "weir_xds_connected", 0, 5*time.Second)
			time.Sleep(1500 * time.Millisecond) // down a while: the agent backs off
			ready, err := agent.Get("/readyz")
			if err != nil || !strings.Contains(ready, "xds: disconnected") {
				t.Errorf("/readyz with the control plane down: %q %v", ready, err)
			}
			cp.start(t, cp.addr)
			waitMetric(t, agent, "weir_xds_connected", 1, 10*time.Second)
			time.Sleep(300 * time.Millisecond)
			ok, failed := stopLoad()
			if failed != 0 || ok < 20 {
				t.Fatalf("across the control plane restart: %d requests failed, %d succeeded", failed, ok)
			}
			t.Logf("%s: %d requests across the control plane restart, 0 failed", mode, ok)

			// And it follows pushes again.
			cp.push(t, "3", vip, epA)
			start = time.Now()
			for {
				body, err := get()
				if err == nil && body == "server-a" {
					break
				}
				if time.Since(start) > 2*time.Second {
					t.Fatalf("after reconnecting, a push is not followed: %q (%v)", body, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// steadyLoad sends requests with get one after another (every 10 ms, for
// at most 3 minutes) until the returned stop is called, which reports how
// many answered want and how many did not; the first failure is logged.
func steadyLoad(t *testing.T, get func() (string, error), want string) (stop func() (ok, failed int64)) {
	t.Helper()
	var okN, failedN atomic.Int64
	var firstErr sync.Once
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for deadline := time.Now().Add(3 * time.Minute); time.Now().Before(deadline); {
			select {
			case <-done:
				return
			default:
			}
			if body, err := get(); err != nil || body != want {
				failedN.Add(1)
				firstErr.Do(func() { t.Logf("failed request: %q %v", body, err) })
			} else {
				okN.Add(1)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	return func() (int64, int64) {
		close(done)
		wg.Wait()
		return okN.Load(), failedN.Load()
	}
}

func waitMetric(t *testing.T, a *testworld.Agent, series string, want float64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		got := a.Metric(t, series)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %v after %v, want %v", series, got, d, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pushMany publishes n services svc-NNNN, each a listener at onDemandVIP(i)
// sending TCP to its own cluster, whose one endpoint is eps[i%len(eps)].
func (cp *controlPlane) pushMany(t *testing.T, version string, n int, eps ...netip.AddrPort) {
	t.Helper()
	sock := func(a netip.AddrPort) *corev3.Address {
		return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: a.Addr().String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(a.Port())},
		}}}
	}
	res := map[resource.Type][]types.Resource{}
	for i := range n {
		name := fmt.Sprintf("svc-%04d", i)
		tp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: name}})
		if err != nil {
			t.Fatal(err)
		}
		res[resource.ClusterType] = append(res[resource.ClusterType], &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			}},
			ConnectTimeout: durationpb.New(2 * time.Second),
		})
		res[resource.EndpointType] = append(res[resource.EndpointType], &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock(eps[i%len(eps)])}},
			}}}},
		})
		res[resource.ListenerType] = append(res[resource.ListenerType], &listenerv3.Listener{
			Name:    "l-" + name,
			Address: sock(onDemandVIP(i)),
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
			}}}},
		})
	}
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatal(err)
	}
	if err := cp.cache.SetSnapshot(context.Background(), xdsNode, snap); err != nil {
		t.Fatal(err)
	}
}

func onDemandVIP(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(8 + i>>8), byte(i)}), 80)
}

// TestXDSOnDemandClusters: with xds.onDemand, the agent holds every
// listener of 10k services but no cluster; a pod's first request to a
// service succeeds (its connection held while the cluster and endpoints
// are fetched), the agent holds the clusters of the services used only,
// and drops them after xds.onDemandIdle without traffic.
func TestXDSOnDemandClusters(t *testing.T) {
	const n = 10000
	node := testworld.NewNode(t, world{"1.1.0", "redirect", "v4", ""}.nodeOptions())
	capture := map[string]any{"namespaces": []string{"demo"}}
	agent := node.StartAgent(t, map[string]any{"capture": capture})
	srvA := node.MustAddPod(t, "backend", "server-a")
	srvB := node.MustAddPod(t, "backend", "server-b")
	srvA.StartNginx(t, 8080, "server-a")
	srvB.StartNginx(t, 8080, "server-b")
	agent.Stop(t)

	epA := netip.AddrPortFrom(addr(srvA, "v4"), 8080)
	epB := netip.AddrPortFrom(addr(srvB, "v4"), 8080)
	cp := startControlPlane(t, node)
	cp.pushMany(t, "1", n, epA, epB)
	agent = node.StartAgent(t, map[string]any{
		"capture": capture,
		"xds": map[string]any{"address": cp.addr, "mode": "delta", "nodeId": xdsNode,
			"onDemand": true, "onDemandTimeout": "2s", "onDemandIdle": "3s"},
	})
	client := node.MustAddPod(t, "demo", "client")
	held := func(typ string) float64 { return agent.Metric(t, `weir_xds_resources{type="`+typ+`"}`) }
	waitHeld := func(typ string, want float64, d time.Duration) {
		t.Helper()
		deadline := time.Now().Add(d)
		for held(typ) != want {
			if time.Now().After(deadline) {
				t.Fatalf("%s resources held = %v after %v, want %v", typ, held(typ), d, want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitHeld("listener", n, 30*time.Second)
	if got := held("cluster"); got != 0 {
		t.Fatalf("clusters held before any traffic = %v, want 0", got)
	}
	for k, i := range []int{7, 8, 1501} {
		want := []string{"server-a", "server-b"}[i%2]
		start := time.Now()
		body, err := client.Get(url(onDemandVIP(i)))
		if err != nil || strings.TrimSpace(body) != want {
			t.Fatalf("first request to svc-%04d: %q, %v", i, body, err)
		}
		t.Logf("first request to svc-%04d answered in %v", i, time.Since(start).Round(time.Millisecond))
		waitHeld("cluster", float64(k+1), time.Second)
		waitHeld("endpoint", float64(k+1), time.Second)
	}
	if got := agent.Metric(t, "weir_xds_ondemand_waits_total"); got != 3 {
		t.Errorf("weir_xds_ondemand_waits_total = %v, want 3", got)
	}
	t.Logf("agent holds %v listeners, %v clusters, %v endpoint sets", held("listener"), held("cluster"), held("endpoint"))
	// Unused for the idle time: unsubscribed and forgotten.
	waitHeld("cluster", 0, 6*time.Second)
	waitHeld("endpoint", 0, time.Second)
	if body, err := client.Get(url(onDemandVIP(7))); err != nil || strings.TrimSpace(body) != "server-b" {
		t.Fatalf("request after the cluster went idle: %q, %v", body, err)
	}
	waitHeld("cluster", 1, time.Second)
}
