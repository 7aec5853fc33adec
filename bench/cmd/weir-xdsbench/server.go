package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"sync"
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
)

// benchNode is the node id the client presents and the snapshot is kept for.
const benchNode = "weir-xdsbench"

// runServer serves n services (listener, EDS cluster, endpoints) and
// obeys stdin: "reset" zeroes the count of resources sent, "push" changes
// one endpoint of the next cluster, "stats" prints the count; each answers
// one line. It exits when stdin closes.
func runServer(n int) error {
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	var mu sync.Mutex
	sent := 0
	count := func(k int) {
		mu.Lock()
		sent += k
		mu.Unlock()
	}
	cb := serverv3.CallbackFuncs{
		StreamResponseFunc: func(_ context.Context, _ int64, _ *discovery.DiscoveryRequest, r *discovery.DiscoveryResponse) {
			count(len(r.GetResources()))
		},
		StreamDeltaResponseFunc: func(_ int64, _ *discovery.DeltaDiscoveryRequest, r *discovery.DeltaDiscoveryResponse) {
			count(len(r.GetResources()))
		},
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	srv := grpc.NewServer(grpc.MaxSendMsgSize(256 << 20))
	discovery.RegisterAggregatedDiscoveryServiceServer(srv, serverv3.NewServer(context.Background(), cache, cb))
	go srv.Serve(ln)
	defer srv.Stop()

	res := map[resource.Type][]types.Resource{}
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		tp, err := anypb.New(&tcpv3.TcpProxy{StatPrefix: name, ClusterSpecifier: &tcpv3.TcpProxy_Cluster{Cluster: name}})
		if err != nil {
			return err
		}
		res[resource.ListenerType] = append(res[resource.ListenerType], &listenerv3.Listener{
			Name:    name,
			Address: sock(fmt.Sprintf("10.%d.%d.%d", 96+i>>16, (i>>8)&0xff, i&0xff), 80),
			FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
				Name: "envoy.filters.network.tcp_proxy", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: tp},
			}}}},
		})
		res[resource.ClusterType] = append(res[resource.ClusterType], &clusterv3.Cluster{
			Name:                 name,
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: &corev3.ConfigSource{
				ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
			}},
			ConnectTimeout: durationpb.New(time.Second),
		})
		res[resource.EndpointType] = append(res[resource.EndpointType], endpoints(name, i, 0))
	}
	// Versions per type, as a control plane that tracks them would keep:
	// a push of endpoints resends no listener or cluster over state of
	// the world (NewSnapshot's one version for all types would).
	var snap cachev3.Snapshot
	for typ, items := range res {
		snap.Resources[cachev3.GetResponseType(typ)] = cachev3.NewResources("1", items)
	}
	set := func() error {
		s := snap
		return cache.SetSnapshot(context.Background(), benchNode, &s)
	}
	if err := set(); err != nil {
		return err
	}
	fmt.Println(ln.Addr().String())
	in := bufio.NewScanner(os.Stdin)
	for push := 0; in.Scan(); {
		switch in.Text() {
		case "reset":
			mu.Lock()
			sent = 0
			mu.Unlock()
			fmt.Println("ok")
		case "push":
			// One endpoint of one cluster moves; the rest is unchanged.
			i := (push * 7919) % n
			push++
			eps := res[resource.EndpointType]
			eps = append(eps[:0:0], eps...)
			eps[i] = endpoints(fmt.Sprintf("svc-%05d", i), i, push)
			res[resource.EndpointType] = eps
			snap.Resources[cachev3.GetResponseType(resource.EndpointType)] = cachev3.NewResources(fmt.Sprint(push+1), eps)
			if err := set(); err != nil {
				return err
			}
			fmt.Println("ok")
		case "stats":
			mu.Lock()
			fmt.Println(sent)
			mu.Unlock()
		}
	}
	return nil
}

func sock(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// endpoints is cluster i's set: two endpoints, the second moved by gen.
func endpoints(name string, i, gen int) *endpointv3.ClusterLoadAssignment {
	ep := func(ip string, port uint32) *endpointv3.LbEndpoint {
		return &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: sock(ip, port)}}}
	}
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		Locality: &corev3.Locality{Zone: "z1"},
		LbEndpoints: []*endpointv3.LbEndpoint{
			ep(fmt.Sprintf("172.16.%d.%d", (i>>8)&0xff, i&0xff), 8080),
			ep(fmt.Sprintf("172.17.%d.%d", (i>>8)&0xff, i&0xff), uint32(8080+gen%50000)),
		},
	}}}
}
