package http_test

import (
	"net/netip"
	"testing"
	"time"

	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/http/internal/accesslogtest"
	"github.com/weir-mesh/weir/proxy/route"
)

func TestAccessLogWrite(t *testing.T) {
	al, sink := accesslogtest.New(1)
	al.Write(&l7.Entry{
		Time: time.Now(), Pod: "client-1", Protocol: l7.ProtoGRPC, Method: "POST",
		Authority: "svc.test", Path: "/pkg.Svc/Call", Status: 200, GRPC: 5,
		Upstream: netip.MustParseAddrPort("10.0.0.7:8080"), BytesIn: 12, BytesOut: -1,
		Duration: 1500 * time.Microsecond, Retries: 1, Route: l7.RouteName(&route.Action{Route: "r", Rule: 2}),
		TraceID: l7.TraceID([]byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
	})
	lines := sink.Lines()
	if len(lines) != 1 {
		t.Fatalf("%d lines", len(lines))
	}
	if d := accesslogtest.Check(lines[0], map[string]any{
		"level": "INFO", "msg": "access", "pod": "client-1", "direction": "outbound", "protocol": "grpc",
		"method": "POST", "authority": "svc.test", "path": "/pkg.Svc/Call", "status": 200.0,
		"grpc_status": 5.0, "upstream": "10.0.0.7:8080", "bytes_in": 12.0, "retries": 1.0,
		"route": "r/2", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "bytes_out": nil,
	}); d != nil {
		t.Errorf("line %v: %v", lines[0], d)
	}
	if got := lines[0]["duration_ms"]; got != 1.5 {
		t.Errorf("duration_ms %v, want 1.5", got)
	}
}

func TestTraceID(t *testing.T) {
	for in, want := range map[string]string{
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01": "4bf92f3577b34da6a3ce929d0e0e4736",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01": "",
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01": "",
		"00-4bf92f3577b34da6a3ce929d0e0e4736":                     "",
		"":                                                        "",
	} {
		if got := l7.TraceID([]byte(in)); got != want {
			t.Errorf("TraceID(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestAccessLogSampling(t *testing.T) {
	never, _ := accesslogtest.New(0)
	always, _ := accesslogtest.New(1)
	half, _ := accesslogtest.New(0.5)
	n := 0
	for range 10000 {
		if never.Want(false) {
			t.Fatal("rate 0 sampled a request")
		}
		if !never.Want(true) || !always.Want(false) {
			t.Fatal("an error or rate 1 not logged")
		}
		if half.Want(false) {
			n++
		}
	}
	if n < 4000 || n > 6000 {
		t.Errorf("rate 0.5 sampled %d of 10000", n)
	}
	if a := testing.AllocsPerRun(1000, func() { half.Want(false) }); a != 0 {
		t.Errorf("Want allocates %v", a)
	}
}

func TestFailed(t *testing.T) {
	for _, c := range []struct {
		status, grpc int
		local, want  bool
	}{
		{200, -1, false, false}, {404, -1, false, false}, {404, -1, true, true}, {302, -1, true, false},
		{503, -1, false, true}, {0, -1, false, true}, {200, 0, false, false}, {200, 5, false, true},
	} {
		if got := l7.Failed(c.status, c.grpc, c.local); got != c.want {
			t.Errorf("Failed(%d, %d, %v) = %v", c.status, c.grpc, c.local, got)
		}
	}
}
