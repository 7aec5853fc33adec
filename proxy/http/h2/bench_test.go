package h2

import (
	"context"
	"io"
	"net/http"
	"net/netip"
	"testing"

	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/weir-mesh/weir/proxy/route"
)

// The benchmarks run client, proxy and server in this process over
// loopback, so ns/op and allocs/op count all three: the proxy's cost is
// the difference between /proxy-<engine> and /direct. "seq" measures one request
// at a time (latency), "par" keeps GOMAXPROCS×4 in flight on the one
// client connection (throughput).

func BenchmarkGRPCUnary(b *testing.B) {
	_, addr := startGRPC(b, "a")
	snap := mustBuild(b, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(addr)},
	}})
	pf := newTestProxy(b, snap, Options{Engine: EngineFrames})
	px := newTestProxy(b, snap, Options{Engine: EngineXNet})
	req := &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("hello")}}
	for _, target := range []struct{ name, addr string }{{"direct", addr.String()}, {"proxy-frames", pf.addr}, {"proxy-xnet", px.addr}} {
		client := testpb.NewTestServiceClient(grpcClient(b, target.addr))
		ctx := context.Background()
		if _, err := client.UnaryCall(ctx, req); err != nil {
			b.Fatal(err)
		}
		b.Run(target.name+"/seq", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := client.UnaryCall(ctx, req); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(target.name+"/par", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := client.UnaryCall(ctx, req); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

func BenchmarkH2C(b *testing.B) {
	addr := startH2C(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "hello")
	}))
	snap := mustBuild(b, route.Config{Services: []route.Service{
		{Name: "svc", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(addr)},
	}})
	pf := newTestProxy(b, snap, Options{Engine: EngineFrames})
	px := newTestProxy(b, snap, Options{Engine: EngineXNet})
	for _, target := range []struct{ name, addr string }{{"direct", addr.String()}, {"proxy-frames", pf.addr}, {"proxy-xnet", px.addr}} {
		client, _ := h2cClient(b, target.addr)
		get := func() error {
			res, err := client.Get("http://svc.test/x")
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, res.Body)
			res.Body.Close()
			return err
		}
		if err := get(); err != nil {
			b.Fatal(err)
		}
		b.Run(target.name+"/seq", func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if err := get(); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(target.name+"/par", func(b *testing.B) {
			b.ReportAllocs()
			b.SetParallelism(4)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := get(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}
