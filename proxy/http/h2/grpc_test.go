package h2

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/proxy/route"
)

// grpcServer is one endpoint of the test service: it names itself in
// every answer and counts its calls.
type grpcServer struct {
	testpb.UnimplementedTestServiceServer
	name  string
	calls atomic.Int32
	gate  chan struct{} // StreamingOutputCall waits on it between messages
}

func (s *grpcServer) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	s.calls.Add(1)
	if md, ok := metadata.FromIncomingContext(ctx); ok && len(md["x-echo"]) > 0 {
		grpc.SetHeader(ctx, metadata.Pairs("x-echo-header", md["x-echo"][0]))
		grpc.SetTrailer(ctx, metadata.Pairs("x-echo-trailer", md["x-echo"][0]))
	}
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return nil, status.Error(codes.Code(st.Code), st.Message)
	}
	return &testpb.SimpleResponse{ServerId: s.name, Payload: req.GetPayload()}, nil
}

func (s *grpcServer) FullDuplexCall(stream testpb.TestService_FullDuplexCallServer) error {
	s.calls.Add(1)
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: req.GetPayload()}); err != nil {
			return err
		}
	}
}

func (s *grpcServer) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	s.calls.Add(1)
	for i := range req.GetResponseParameters() {
		if i > 0 && s.gate != nil {
			select {
			case <-s.gate:
			case <-stream.Context().Done():
				return stream.Context().Err()
			}
		}
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte(fmt.Sprint(i))}}); err != nil {
			return err
		}
	}
	if st := req.GetResponseStatus(); st != nil && st.Code != 0 {
		return status.Error(codes.Code(st.Code), st.Message)
	}
	return nil
}

func (s *grpcServer) StreamingInputCall(stream testpb.TestService_StreamingInputCallServer) error {
	s.calls.Add(1)
	total := 0
	for {
		req, err := stream.Recv()
		if err == io.EOF {
			return stream.SendAndClose(&testpb.StreamingInputCallResponse{AggregatedPayloadSize: int32(total)})
		}
		if err != nil {
			return err
		}
		total += len(req.GetPayload().GetBody())
	}
}

func startGRPC(t testing.TB, name string) (*grpcServer, netip.AddrPort) {
	t.Helper()
	gs := &grpcServer{name: name}
	_, addr := startGRPCServer(t, func(reg func(testpb.TestServiceServer)) { reg(gs) })
	return gs, addr
}

// startGRPCServer serves the test service implementations register hands
// to reg on a loopback port.
func startGRPCServer(t testing.TB, register func(reg func(testpb.TestServiceServer))) (*grpc.Server, netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(func(impl testpb.TestServiceServer) { testpb.RegisterTestServiceServer(s, impl) })
	go s.Serve(ln)
	t.Cleanup(s.Stop)
	return s, netip.MustParseAddrPort(ln.Addr().String())
}

func grpcClient(t testing.TB, addr string) *grpc.ClientConn {
	t.Helper()
	cc, err := grpc.NewClient("passthrough:///"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// grpcWorld: two test-service endpoints behind the service at svcAddr,
// whose routes send EmptyCall to a cluster with no endpoint and match no
// other gRPC service.
func grpcWorld(t *testing.T) (a, b *grpcServer, p *testProxy, snap *route.Snapshot) {
	a, aAddr := startGRPC(t, "a")
	b, bAddr := startGRPC(t, "b")
	snap = mustBuild(t, route.Config{Services: []route.Service{
		{
			Name: "front", Addresses: []netip.AddrPort{svcAddr}, Protocol: route.GRPC,
			HTTPRoutes: []route.HTTPRoute{{Rules: []route.HTTPRouteRule{
				{
					Matches:  []route.HTTPRouteMatch{{Path: &route.PathMatch{Type: route.PathExact, Value: "/grpc.testing.TestService/EmptyCall"}}},
					Backends: []route.BackendRef{{Service: "empty"}},
				},
				{
					Matches:  []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/grpc.testing.TestService"}}},
					Backends: []route.BackendRef{{Service: "grpc"}},
				},
			}}},
		},
		{Name: "grpc", Endpoints: eps(aAddr, bAddr)},
		{Name: "empty"},
	}})
	return a, b, newTestProxy(t, snap, Options{}), snap
}

func TestGRPC(t *testing.T) {
	a, b, p, snap := grpcWorld(t)
	cc := grpcClient(t, p.addr)
	client := testpb.NewTestServiceClient(cc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("unary balanced per call over one connection", func(t *testing.T) {
		seen := map[string]int{}
		for i := range 20 {
			body := []byte(fmt.Sprintf("call %d", i))
			res, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}})
			if err != nil {
				t.Fatalf("call %d: %v", i, err)
			}
			if string(res.GetPayload().GetBody()) != string(body) {
				t.Fatalf("call %d: payload %q", i, res.GetPayload().GetBody())
			}
			seen[res.GetServerId()]++
		}
		if seen["a"] == 0 || seen["b"] == 0 || seen["a"]+seen["b"] != 20 {
			t.Errorf("20 calls landed %v, want both endpoints", seen)
		}
		if n := p.accepted.Load(); n != 1 {
			t.Errorf("client made %d connections to the proxy, want 1", n)
		}
	})

	t.Run("metadata and trailers", func(t *testing.T) {
		var hdr, trl metadata.MD
		ctx := metadata.AppendToOutgoingContext(ctx, "x-echo", "hello")
		if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr), grpc.Trailer(&trl)); err != nil {
			t.Fatal(err)
		}
		if got := hdr.Get("x-echo-header"); len(got) != 1 || got[0] != "hello" {
			t.Errorf("header metadata %v", hdr)
		}
		if got := trl.Get("x-echo-trailer"); len(got) != 1 || got[0] != "hello" {
			t.Errorf("trailer metadata %v", trl)
		}
	})

	t.Run("status error forwarded", func(t *testing.T) {
		var trl metadata.MD
		_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.PermissionDenied), Message: "not you, ü 100%"}}, grpc.Trailer(&trl))
		st := status.Convert(err)
		if st.Code() != codes.PermissionDenied || st.Message() != "not you, ü 100%" {
			t.Errorf("got %v, want PermissionDenied with the server's message", err)
		}
	})

	t.Run("bidirectional streaming is real time", func(t *testing.T) {
		stream, err := client.FullDuplexCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// Each message waits for the previous echo: a proxy that buffered
		// either direction would stall here.
		for i := range 5 {
			msg := []byte(fmt.Sprintf("ping %d", i))
			if err := stream.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: msg}}); err != nil {
				t.Fatal(err)
			}
			res, err := stream.Recv()
			if err != nil {
				t.Fatal(err)
			}
			if string(res.GetPayload().GetBody()) != string(msg) {
				t.Fatalf("echo %q, want %q", res.GetPayload().GetBody(), msg)
			}
		}
		if err := stream.CloseSend(); err != nil {
			t.Fatal(err)
		}
		if _, err := stream.Recv(); err != io.EOF {
			t.Fatalf("end of stream: %v", err)
		}
	})

	t.Run("server streaming is real time, then a status", func(t *testing.T) {
		gate := make(chan struct{})
		a.gate, b.gate = gate, gate
		defer func() { a.gate, b.gate = nil, nil }()
		stream, err := client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{
			ResponseParameters: make([]*testpb.ResponseParameters, 3),
			ResponseStatus:     &testpb.EchoStatus{Code: int32(codes.ResourceExhausted), Message: "enough"},
		})
		if err != nil {
			t.Fatal(err)
		}
		// The server sends the second message only once the first has
		// reached the client.
		for i := range 3 {
			res, err := stream.Recv()
			if err != nil {
				t.Fatalf("message %d: %v", i, err)
			}
			if string(res.GetPayload().GetBody()) != fmt.Sprint(i) {
				t.Fatalf("message %d: %q", i, res.GetPayload().GetBody())
			}
			if i == 0 {
				close(gate)
			}
		}
		_, err = stream.Recv()
		if st := status.Convert(err); st.Code() != codes.ResourceExhausted || st.Message() != "enough" {
			t.Fatalf("end of stream: %v, want ResourceExhausted enough", err)
		}
	})

	t.Run("client streaming", func(t *testing.T) {
		stream, err := client.StreamingInputCall(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for range 10 {
			if err := stream.Send(&testpb.StreamingInputCallRequest{Payload: &testpb.Payload{Body: make([]byte, 10000)}}); err != nil {
				t.Fatal(err)
			}
		}
		res, err := stream.CloseAndRecv()
		if err != nil {
			t.Fatal(err)
		}
		if res.GetAggregatedPayloadSize() != 100000 {
			t.Errorf("server saw %d bytes, want 100000", res.GetAggregatedPayloadSize())
		}
	})

	t.Run("no endpoint is UNAVAILABLE", func(t *testing.T) {
		_, err := client.EmptyCall(ctx, &testpb.Empty{})
		if st := status.Convert(err); st.Code() != codes.Unavailable || st.Message() != "no_endpoint" {
			t.Errorf("got %v, want Unavailable no_endpoint", err)
		}
	})

	t.Run("no route is UNIMPLEMENTED", func(t *testing.T) {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		if st := status.Convert(err); st.Code() != codes.Unimplemented || st.Message() != "no_route" {
			t.Errorf("got %v, want Unimplemented no_route", err)
		}
	})

	t.Run("large messages both ways", func(t *testing.T) {
		body := []byte(strings.Repeat("x", 3<<20))
		res, err := client.UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: body}}, grpc.MaxCallRecvMsgSize(8<<20))
		if err != nil {
			t.Fatal(err)
		}
		if len(res.GetPayload().GetBody()) != len(body) {
			t.Errorf("echo of %d bytes came back with %d", len(body), len(res.GetPayload().GetBody()))
		}
	})

	if n := p.accepted.Load(); n != 1 {
		t.Errorf("client made %d connections to the proxy, want 1", n)
	}
	for _, tc := range []struct {
		code string
		min  float64
	}{
		{"2xx", 20},
		{"5xx", 1}, // no endpoint
		{"4xx", 1}, // no route
	} {
		if got := counterValue(t, p, "weir_http_requests_total", "protocol", "grpc", "code", tc.code); got < tc.min {
			t.Errorf("weir_http_requests_total{protocol=grpc,code=%s} = %v, want >= %v", tc.code, got, tc.min)
		}
	}
	if got := counterValue(t, p, "weir_http_local_replies_total", "code", "503", "reason", "no_endpoint"); got != 1 {
		t.Errorf("weir_http_local_replies_total{code=503,reason=no_endpoint} = %v, want 1", got)
	}
	leasesReleased(t, snap)
}
