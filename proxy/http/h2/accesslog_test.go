package h2

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/weir-mesh/weir/proxy/http/internal/accesslogtest"
)

const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

func TestAccessLogH2C(t *testing.T) {
	w := newH2CWorld(t)
	al, sink := accesslogtest.New(1)
	w.p.accessLog.Store(al)
	req := get(t, "http://shop.test/api/items?token=secret")
	req.Header.Set("Traceparent", traceparent)
	res, _ := w.do(t, req)
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	res, _ = w.do(t, get(t, "http://shop.test/nobackend"))
	if res.StatusCode != 500 {
		t.Fatalf("status %d", res.StatusCode)
	}
	waitFor(t, "two lines", func() bool { return len(sink.Lines()) == 2 })
	lines := sink.Lines()
	up, _ := lines[0]["upstream"].(string)
	if up == "" {
		t.Errorf("no upstream in %v", lines[0])
	}
	want := map[string]any{
		"level": "INFO", "msg": "access", "pod": "client-1", "direction": "outbound", "protocol": "http2",
		"method": "GET", "authority": "shop.test", "path": "/api/items", "status": 200.0,
		"upstream": up, "bytes_in": 0.0, "retries": 0.0, "route": "route0/0",
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "grpc_status": nil,
	}
	if n := lines[0]["bytes_out"]; n != nil {
		want["bytes_out"] = n // the echo server's declared length, when it declares one
	}
	if d := accesslogtest.Check(lines[0], want); d != nil {
		t.Errorf("line %v: %v", lines[0], d)
	}
	if d := accesslogtest.Check(lines[1], map[string]any{
		"level": "INFO", "msg": "access", "pod": "client-1", "direction": "outbound", "protocol": "http2",
		"method": "GET", "authority": "shop.test", "path": "/nobackend", "status": 500.0,
		"upstream": "", "reason": "no_backend", "bytes_in": 0.0, "retries": 0.0, "route": "route0/4",
	}); d != nil {
		t.Errorf("line %v: %v", lines[1], d)
	}
}

func TestAccessLogGRPC(t *testing.T) {
	_, _, p, _ := grpcWorld(t)
	al, sink := accesslogtest.New(0) // errors only
	p.accessLog.Store(al)
	client := testpb.NewTestServiceClient(grpcClient(t, p.addr))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := client.UnaryCall(ctx, &testpb.SimpleRequest{}); err != nil {
		t.Fatal(err)
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent)
	_, err := client.UnaryCall(ctx, &testpb.SimpleRequest{ResponseStatus: &testpb.EchoStatus{Code: int32(codes.PermissionDenied), Message: "no"}})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err %v", err)
	}
	waitFor(t, "the error line", func() bool { return len(sink.Lines()) >= 1 })
	time.Sleep(50 * time.Millisecond)
	lines := sink.Lines()
	if len(lines) != 1 {
		t.Fatalf("%d lines, want the failed call's only: %v", len(lines), lines)
	}
	up, _ := lines[0]["upstream"].(string)
	want := map[string]any{
		"level": "INFO", "msg": "access", "pod": "client-1", "direction": "outbound", "protocol": "grpc",
		"method": "POST", "authority": lines[0]["authority"], "path": "/grpc.testing.TestService/UnaryCall",
		"status": 200.0, "grpc_status": 7.0, "upstream": up, "retries": 0.0, "route": "route0/1",
		"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
	}
	for _, k := range []string{"bytes_in", "bytes_out"} {
		if n, ok := lines[0][k]; ok {
			want[k] = n
		}
	}
	if up == "" || lines[0]["authority"] == "" {
		t.Errorf("no upstream or authority in %v", lines[0])
	}
	if d := accesslogtest.Check(lines[0], want); d != nil {
		t.Errorf("line %v: %v", lines[0], d)
	}
}
