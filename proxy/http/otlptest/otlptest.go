// Package otlptest is an OTLP/gRPC trace receiver for tests: it serves
// the collector's TraceService (go.opentelemetry.io/proto/otlp) on a
// listener the test gives it and keeps every span it is sent, so a test
// checks what the agent really exported over the wire.
package otlptest

import (
	"context"
	"encoding/hex"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/grpc"
)

// Span is one received span, ids in lower-case hex.
type Span struct {
	TraceID, SpanID, ParentSpanID string
	Name                          string
	// Attrs holds the span's string and int attributes as text.
	Attrs map[string]string
	// Resource holds the resource's string attributes (service.name).
	Resource map[string]string
}

// Receiver collects spans.
type Receiver struct {
	coltracepb.UnimplementedTraceServiceServer
	srv   *grpc.Server
	mu    sync.Mutex
	spans []Span
}

// Serve starts a receiver on ln; Stop ends it.
func Serve(ln net.Listener) *Receiver {
	r := &Receiver{srv: grpc.NewServer()}
	coltracepb.RegisterTraceServiceServer(r.srv, r)
	go r.srv.Serve(ln)
	return r
}

// Listen serves a receiver on a loopback port for the test, stopped at
// cleanup, and returns it with its endpoint (host:port).
func Listen(t testing.TB) (*Receiver, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := Serve(ln)
	t.Cleanup(r.Stop)
	return r, ln.Addr().String()
}

// Trace returns the first span received of the trace; false if none.
func (r *Receiver) Trace(traceID string) (Span, bool) {
	for _, s := range r.Spans() {
		if s.TraceID == traceID {
			return s, true
		}
	}
	return Span{}, false
}

// Stop closes the server.
func (r *Receiver) Stop() { r.srv.Stop() }

// Export implements the TraceService.
func (r *Receiver) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		res := map[string]string{}
		for _, kv := range rs.GetResource().GetAttributes() {
			res[kv.GetKey()] = kv.GetValue().GetStringValue()
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{
					TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					ParentSpanID: hex.EncodeToString(s.GetParentSpanId()), Name: s.GetName(),
					Attrs: map[string]string{}, Resource: res,
				}
				for _, kv := range s.GetAttributes() {
					switch v := kv.GetValue().GetValue().(type) {
					case *commonpb.AnyValue_StringValue:
						sp.Attrs[kv.GetKey()] = v.StringValue
					case *commonpb.AnyValue_IntValue:
						sp.Attrs[kv.GetKey()] = strconv.FormatInt(v.IntValue, 10)
					}
				}
				r.spans = append(r.spans, sp)
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

// Spans returns a copy of what was received so far.
func (r *Receiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// WaitFor polls until ok holds for the spans received, or d passes; it
// returns the spans seen last.
func (r *Receiver) WaitFor(d time.Duration, ok func([]Span) bool) ([]Span, bool) {
	end := time.Now().Add(d)
	for {
		s := r.Spans()
		if ok(s) {
			return s, true
		}
		if time.Now().After(end) {
			return s, false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
