package otlptest

import (
	"context"
	"testing"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	resourcepb "go.opentelemetry.io/proto/otlp/resource/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// FuzzExport feeds Export any bytes that decode as an export request (as
// gRPC would hand them over): it must not panic, and it keeps exactly one
// Span per span in the request, whatever the ids and attributes hold.
func FuzzExport(f *testing.F) {
	seed := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		Resource: &resourcepb.Resource{Attributes: []*commonpb.KeyValue{{Key: "service.name", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "weir-agent"}}}}},
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: []*tracepb.Span{{
			TraceId: make([]byte, 16), SpanId: make([]byte, 8), Name: "GET",
			Attributes: []*commonpb.KeyValue{
				{Key: "http.status", Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 200}}},
				{Key: "nil value"},
			},
		}}}},
	}}}
	b, err := proto.Marshal(seed)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0x02, 0x12, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req coltracepb.ExportTraceServiceRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		want := 0
		for _, rs := range req.GetResourceSpans() {
			for _, ss := range rs.GetScopeSpans() {
				want += len(ss.GetSpans())
			}
		}
		r := &Receiver{}
		if _, err := r.Export(context.Background(), &req); err != nil {
			t.Fatalf("export: %v", err)
		}
		if got := len(r.Spans()); got != want {
			t.Fatalf("kept %d spans, the request has %d", got, want)
		}
	})
}
