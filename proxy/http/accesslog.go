package http

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strconv"
	"time"

	"github.com/weir-mesh/weir/proxy/route"
)

// AccessLog writes one structured line per finished request: every
// error, and a sample of the rest. A nil *AccessLog logs nothing; the
// codecs test for nil before anything else, so a disabled access log
// costs one comparison per request.
type AccessLog struct {
	log *slog.Logger
	// threshold: a request is sampled when a random uint64 is below it;
	// all when every is set.
	threshold uint64
	every     bool
}

// NewAccessLog logs to l, a sampleRate (0..1) share of the requests that
// went well; errors are always logged.
func NewAccessLog(l *slog.Logger, sampleRate float64) *AccessLog {
	a := &AccessLog{log: l}
	switch {
	case sampleRate >= 1:
		a.every = true
	case sampleRate > 0:
		a.threshold = uint64(sampleRate * (1 << 63) * 2)
	}
	return a
}

// Want reports whether a request is logged: always when failed, else
// when sampled. It allocates nothing, so a caller decides before
// gathering the line's fields.
func (a *AccessLog) Want(failed bool) bool {
	if failed || a.every {
		return true
	}
	return a.threshold != 0 && rand.Uint64() < a.threshold
}

// Failed reports whether a request's outcome is an error, always logged:
// a 5xx or no status, a local reply other than a redirect, or a gRPC
// status other than OK (grpc < 0: none).
func Failed(status, grpc int, local bool) bool {
	return status == 0 || status >= 500 || (local && status/100 != 3) || grpc > 0
}

// Entry is one access log line. Strings are copies the caller owns: the
// line is written before Write returns.
type Entry struct {
	Time      time.Time // the request's start
	Pod       string
	Protocol  int // ProtoHTTP1, ProtoHTTP2, ProtoGRPC
	Method    string
	Authority string
	Path      string         // without the query
	Status    int            // 0: no answer reached the client
	GRPC      int            // grpc-status; < 0: none
	Upstream  netip.AddrPort // the endpoint tried last; zero: none
	Local     bool           // answered by the agent: no upstream
	Reason    string         // a local reply's reason
	BytesIn   int64          // request body bytes; < 0: unknown
	BytesOut  int64          // response body bytes; < 0: unknown
	Duration  time.Duration
	Retries   int
	Route     string // the rule, "name/2"; "" when none
	TraceID   string
}

// Write logs e at Info.
func (a *AccessLog) Write(e *Entry) {
	up := ""
	if e.Upstream.IsValid() {
		up = e.Upstream.String()
	}
	attrs := make([]slog.Attr, 0, 20)
	attrs = append(attrs,
		slog.Time("start", e.Time),
		slog.String("pod", e.Pod),
		slog.String("direction", "outbound"),
		slog.String("protocol", protoNames[e.Protocol]),
		slog.String("method", e.Method),
		slog.String("authority", e.Authority),
		slog.String("path", e.Path),
		slog.Int("status", e.Status),
	)
	if e.GRPC >= 0 {
		attrs = append(attrs, slog.Int("grpc_status", e.GRPC))
	}
	attrs = append(attrs, slog.String("upstream", up))
	if e.Reason != "" {
		attrs = append(attrs, slog.String("reason", e.Reason))
	}
	if e.BytesIn >= 0 {
		attrs = append(attrs, slog.Int64("bytes_in", e.BytesIn))
	}
	if e.BytesOut >= 0 {
		attrs = append(attrs, slog.Int64("bytes_out", e.BytesOut))
	}
	attrs = append(attrs,
		slog.Float64("duration_ms", float64(e.Duration.Microseconds())/1000),
		slog.Int("retries", e.Retries),
	)
	if e.Route != "" {
		attrs = append(attrs, slog.String("route", e.Route))
	}
	if e.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", e.TraceID))
	}
	a.log.LogAttrs(context.Background(), slog.LevelInfo, "access", attrs...)
}

// TraceID returns the trace-id of a W3C traceparent value
// ("00-<32 hex>-<16 hex>-<2 hex>"), or "" when it is malformed or all
// zeros.
func TraceID(traceparent []byte) string {
	if len(traceparent) < 55 || traceparent[2] != '-' || traceparent[35] != '-' {
		return ""
	}
	id := traceparent[3:35]
	zero := true
	for _, c := range id {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		default:
			return ""
		}
		if c != '0' {
			zero = false
		}
	}
	if zero {
		return ""
	}
	return string(id)
}

// RouteName names a matched rule for the access log: "route/rule"; ""
// for none.
func RouteName(a *route.Action) string {
	if a == nil || a.Route == "" {
		return ""
	}
	return a.Route + "/" + strconv.Itoa(a.Rule)
}
