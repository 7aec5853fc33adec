package http

import (
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// Exchange is what the shared layer keeps of one request between Begin
// and End: enough to count it per route and close its span. The codecs
// hold one per request in place (no allocation).
type Exchange struct {
	// Proto is ProtoHTTP1, ProtoHTTP2 or ProtoGRPC.
	Proto int
	// Start is the arrival of the request's head.
	Start time.Time
	// Action and Cluster are the routing decision's (nil: none).
	Action  *route.Action
	Cluster *cluster.Cluster
	// Traceparent, when not "", replaces the client's traceparent
	// upstream: it carries the agent's span. "" when tracing is off (the
	// client's goes on as it came).
	Traceparent string

	span trace.Span
}

// Begin starts the record of a routed request: with tracing on, its
// span, child of the client's traceparent (or the root of a new trace),
// and the traceparent to send upstream. r is read before Begin returns.
func (u *Upstream) Begin(x *Exchange, proto int, start time.Time, d *Decision, r route.RequestView) {
	*x = Exchange{Proto: proto, Start: start, Action: d.Action, Cluster: d.Cluster}
	if u.Tracer != nil {
		u.Tracer.start(x, u.Route.Service, d.Action, r)
	}
}

// End records a finished request: the protocol series, its route's
// series (service, rule, cluster, status, gRPC status, duration) and its
// span. status 0 means no answer reached the client; grpc < 0 none. A
// request refused before routing needs only Proto and Start set.
func (u *Upstream) End(x *Exchange, status, grpc int) {
	secs := time.Since(x.Start).Seconds()
	u.Metrics.Request(x.Proto, status, secs)
	u.Metrics.route(u.Route.Service, x.Action, x.Cluster, status, grpc, secs)
	if x.span != nil {
		u.Tracer.end(x, status, grpc)
	}
}

// WithTraceparent returns a copy of a (nil: an empty action) whose
// request header modifier also sets traceparent to tp: the codecs that
// forward header fields as they came replace the client's value this
// way. It allocates; call it only with tracing on.
func WithTraceparent(a *route.Action, tp string) *route.Action {
	var c route.Action
	if a != nil {
		c = *a
	}
	m := &route.HeaderModifier{}
	if c.RequestHeaders != nil {
		*m = *c.RequestHeaders
		m.Set = append([]route.Header(nil), m.Set...)
		m.Remove = append([]string(nil), m.Remove...)
	}
	m.Set = append(m.Set, route.Header{Name: "traceparent", Value: tp})
	c.RequestHeaders = m
	return &c
}
