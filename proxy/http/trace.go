package http

import (
	"context"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/weir-mesh/weir/proxy/route"
)

// TracerConfig says where spans go and how many.
type TracerConfig struct {
	// Endpoint is the OTLP/gRPC collector, host:port, spoken to in
	// plaintext (an in-cluster or node-local collector).
	Endpoint string
	// SampleRatio is the share (0..1) of new traces sampled. A request
	// whose traceparent already decides (the sampled flag) follows it, so
	// a trace is kept or dropped whole.
	SampleRatio float64
	// BatchTimeout is the longest a finished span waits before export;
	// zero means 5s.
	BatchTimeout time.Duration
	// ServiceName is the resource's service.name; empty means weir-agent.
	ServiceName string
}

// Tracer gives each request that passes through the agent a span of its
// own: a child of the client's W3C traceparent, or the root of a new
// trace when the client sent none (or a malformed one). The span's id
// goes upstream in traceparent, so the server's span is the agent's
// child; tracestate goes on unchanged. Sampled spans are exported over
// OTLP/gRPC by the OpenTelemetry SDK's batch processor, off the request
// path.
type Tracer struct {
	provider *sdktrace.TracerProvider
	tracer   trace.Tracer
}

// NewTracer connects (lazily) to the collector. Shutdown flushes.
func NewTracer(ctx context.Context, c TracerConfig) (*Tracer, error) {
	if c.Endpoint == "" {
		return nil, fmt.Errorf("tracing endpoint is empty")
	}
	if !(c.SampleRatio >= 0 && c.SampleRatio <= 1) {
		return nil, fmt.Errorf("tracing sample ratio %v is not in 0..1", c.SampleRatio)
	}
	exp, err := otlptracegrpc.New(ctx, otlptracegrpc.WithEndpoint(c.Endpoint), otlptracegrpc.WithInsecure())
	if err != nil {
		return nil, fmt.Errorf("otlp exporter to %s: %w", c.Endpoint, err)
	}
	name := c.ServiceName
	if name == "" {
		name = "weir-agent"
	}
	var bo []sdktrace.BatchSpanProcessorOption
	if c.BatchTimeout > 0 {
		bo = append(bo, sdktrace.WithBatchTimeout(c.BatchTimeout))
	}
	p := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, bo...),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(c.SampleRatio))),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
	)
	return &Tracer{provider: p, tracer: p.Tracer("github.com/weir-mesh/weir/proxy/http")}, nil
}

// Shutdown exports what is buffered and stops; bounded by ctx.
func (t *Tracer) Shutdown(ctx context.Context) error {
	if t == nil {
		return nil
	}
	return t.provider.Shutdown(ctx)
}

// viewCarrier reads the trace context fields of a request for the W3C
// propagator.
type viewCarrier struct{ r route.RequestView }

func (c viewCarrier) Get(key string) string {
	v, _ := c.r.Header(key)
	return string(v)
}
func (viewCarrier) Set(string, string) {}
func (viewCarrier) Keys() []string     { return []string{"traceparent", "tracestate"} }

// headerCarrier catches what the propagator writes.
type headerCarrier struct{ traceparent string }

func (c *headerCarrier) Get(string) string { return "" }
func (c *headerCarrier) Set(k, v string) {
	if k == "traceparent" {
		c.traceparent = v
	}
}
func (*headerCarrier) Keys() []string { return nil }

var traceContext = propagation.TraceContext{}

// start opens x's span; x.Traceparent is what goes upstream.
func (t *Tracer) start(x *Exchange, service string, a *route.Action, r route.RequestView) {
	ctx := traceContext.Extract(context.Background(), viewCarrier{r})
	method, host, path := string(r.Method()), string(r.Host()), string(r.Path())
	attrs := []attribute.KeyValue{
		attribute.String("http.request.method", method),
		attribute.String("server.address", host),
		attribute.String("url.path", path),
		attribute.String("network.protocol.name", protoNames[x.Proto]),
	}
	if service != "" {
		attrs = append(attrs, attribute.String("weir.service", service))
	}
	if rn := RouteName(a); rn != "" {
		attrs = append(attrs, attribute.String("weir.route", rn))
	}
	_, span := t.tracer.Start(ctx, method+" "+host, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithTimestamp(x.Start), trace.WithAttributes(attrs...))
	var hc headerCarrier
	traceContext.Inject(trace.ContextWithSpan(context.Background(), span), &hc)
	x.span, x.Traceparent = span, hc.traceparent
}

// end closes x's span with the request's outcome.
func (t *Tracer) end(x *Exchange, status, grpc int) {
	s := x.span
	if s.IsRecording() {
		s.SetAttributes(attribute.Int("http.response.status_code", status))
		if grpc >= 0 {
			s.SetAttributes(attribute.Int("rpc.grpc.status_code", grpc))
		}
		if Failed(status, grpc, false) {
			s.SetStatus(codes.Error, "")
		}
	}
	s.End()
	x.span = nil
}
