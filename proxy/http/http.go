// Package http holds what weir's HTTP/1.1 (proxy/http/h1) and HTTP/2 and
// gRPC (proxy/http/h2) halves share: the per-connection Upstream the engine
// hands them, the routing decision for one request, local replies and
// request metrics. The codecs live in the subpackages; each serves one
// downstream connection and balances every request on its own over the
// clusters of the engine's route snapshot.
package http

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// Upstream is what the engine knows of one captured connection that a
// codec needs to forward its requests. The engine fills it once per
// connection; a codec must not modify it.
type Upstream struct {
	// Route is the route of the connection's original destination: its
	// Cluster (nil for passthrough: requests go to Dst) and HTTP router
	// (nil: every request goes to Cluster).
	Route route.Route
	// Dst is the original destination the client dialled.
	Dst netip.AddrPort
	// Dial makes an upstream connection from the pod's network namespace
	// with the bypass mark (never captured again).
	Dial cluster.Dialer
	// Key is the client's affinity hash for the hash balancers.
	Key uint64
	// Draining is closed when the agent drains (SIGTERM or a takeover):
	// HTTP/1 answers its next response with Connection: close, HTTP/2
	// sends GOAWAY, so no request is lost and none is cut mid-way.
	Draining <-chan struct{}
	// Metrics counts requests; nil counts nothing.
	Metrics *Metrics
	// Log receives one line per notable event; never nil.
	Log *slog.Logger
	// AccessLog receives one line per finished request (errors, and a
	// sample of the rest); nil logs nothing.
	AccessLog *AccessLog
	// Pod names the client workload in access log lines.
	Pod string
	// Tracer, when set, propagates W3C trace context with a span of its
	// own per request and exports the sampled spans; nil: tracing is off
	// and traceparent goes upstream as the client sent it.
	Tracer *Tracer
	// HandOff, when set, is offered a client connection that is idle
	// between requests, with nothing read of the next one, while the agent
	// drains for a successor: true means the successor now holds the
	// socket (an agent takeover's connection hand-over), and the codec must
	// end without writing to it or shutting it down (closing its own
	// descriptor is all). False: the codec closes the idle connection as
	// it would without a successor. Closing an idle keep-alive connection
	// races with a request the client is sending at that moment, which a
	// client that does not retry loses; handing it over does not.
	HandOff func(down net.Conn, up *Upstream) bool
}

// Decision is where one request goes.
type Decision struct {
	// Action is the matched rule's filters (header modifiers, rewrite,
	// redirect); nil when the service has no HTTP routes.
	Action *route.Action
	// Cluster takes the request; nil with Status 0 means passthrough to
	// the original destination.
	Cluster *cluster.Cluster
	// Status, when not 0, means answer locally: 404 no rule matched, 500
	// the rule has no backend, 301/302 redirect (see Action.Redirect),
	// 429 the rule's rate limit, or the status of an injected abort.
	Status int
	// Reason is a local reply's reason (ReasonNoRoute, ...).
	Reason string
	// GRPC is the gRPC code a gRPC client gets for the local reply; 0:
	// the one Status maps to.
	GRPC int
	// RetryAfter is the retry-after of a 429, in whole seconds (>= 1).
	RetryAfter int
	// Delay is an injected fault delay: the codec waits this long before
	// it answers or forwards (Pause).
	Delay time.Duration
}

// Resolve routes one request and applies the matched rule's rate limit
// and fault injection, in that order: a request the limit refuses is
// neither delayed nor aborted. It allocates nothing.
func (u *Upstream) Resolve(r route.RequestView) Decision {
	if b := u.Route.RateLimit; b != nil {
		if d, ok := u.limit(b, nil); !ok {
			return d
		}
	}
	if u.Route.HTTP == nil {
		return Decision{Cluster: u.Route.Cluster}
	}
	a := u.Route.HTTP.Match(r)
	if a == nil {
		return Decision{Status: 404, Reason: ReasonNoRoute}
	}
	if a.RateLimit != nil {
		if d, ok := u.limit(a.RateLimit, a); !ok {
			return d
		}
	}
	var d Decision
	if f := a.Fault; f != nil {
		if f.Delayed() {
			d.Delay = f.Delay
			u.Metrics.policy(u.Route.Service, a, policyDelay)
		}
		if f.Aborted() {
			u.Metrics.policy(u.Route.Service, a, policyAbort)
			d.Action, d.Status, d.GRPC, d.Reason = a, f.AbortStatus, f.AbortGRPC, ReasonFaultAbort
			return d
		}
	}
	d.Action = a
	switch {
	case a.Redirect != nil:
		d.Status, d.Reason = a.Redirect.StatusCode, ReasonRedirect
		if d.Status == 0 {
			d.Status = 302
		}
	default:
		if d.Cluster = a.Backend(); d.Cluster == nil {
			d.Status, d.Reason = 500, ReasonNoBackend
		}
	}
	return d
}

// limit takes a token from b (the service's, a nil, or rule a's); when
// there is none, the decision is 429 and ok is false.
func (u *Upstream) limit(b *route.TokenBucket, a *route.Action) (d Decision, ok bool) {
	ok, wait := b.Allow()
	if ok {
		return d, true
	}
	u.Metrics.policy(u.Route.Service, a, policyRateLimited)
	return Decision{Action: a, Status: 429, Reason: ReasonRateLimited, GRPC: grpcResourceExhausted,
		RetryAfter: int(max((wait+time.Second-1)/time.Second, 1))}, false
}

// grpcResourceExhausted is the gRPC code of a rate-limited call.
const grpcResourceExhausted = 8

// Pause waits out a fault delay; false when ctx ended first (the client
// went away or the agent stops).
func Pause(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// RedirectLocation builds the Location of a redirect answer from the
// request's scheme ("http" unless the caller knows better), host and path.
func RedirectLocation(rd *route.Redirect, prefix, scheme, host, path, query string) string {
	if rd.Scheme != "" {
		scheme = rd.Scheme
	}
	h, port := host, ""
	if ap, err := netip.ParseAddrPort(host); err == nil {
		h, port = ap.Addr().String(), strconv.Itoa(int(ap.Port()))
	} else if i := lastColon(host); i >= 0 {
		h, port = host[:i], host[i+1:]
	}
	if rd.Hostname != "" {
		h = rd.Hostname
	}
	if rd.Port != 0 {
		port = strconv.Itoa(int(rd.Port))
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") || (rd.Scheme != "" && rd.Port == 0) {
		port = ""
	}
	loc := scheme + "://" + h
	if port != "" {
		loc += ":" + port
	}
	loc += route.RewritePath(rd.Path, path, prefix)
	if query != "" {
		loc += "?" + query
	}
	return loc
}

func lastColon(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		switch s[i] {
		case ':':
			return i
		case ']':
			return -1
		}
	}
	return -1
}

// Local reply reasons, the "reason" label of weir_http_local_replies_total
// and the text of the reply's body.
const (
	ReasonNoRoute      = "no_route"         // 404: no rule matched
	ReasonNoBackend    = "no_backend"       // 500: the rule has no backend
	ReasonNoEndpoint   = "no_endpoint"      // 503: no endpoint available, or circuit open
	ReasonTimeout      = "upstream_timeout" // 504
	ReasonUpstreamFail = "upstream_error"   // 502: connect failed or the upstream broke the protocol
	ReasonBadRequest   = "bad_request"      // 400, 413, 414, 431, 501, 505: the client broke the protocol or asked for what is not supported
	ReasonRedirect     = "redirect"         // 301, 302
	ReasonRateLimited  = "rate_limited"     // 429: the rule's rate limit
	ReasonFaultAbort   = "fault_abort"      // the rule's fault injection aborted the request
)

// Metrics counts requests by protocol and status class, and local replies
// by reason. Series are resolved once: the hot path does no label lookup.
type Metrics struct {
	requests [3][6]prometheus.Counter // protocol × status class (0: no status)
	local    *prometheus.CounterVec
	duration [3]prometheus.Observer
	retries  [3]prometheus.Counter
	routes   routeMetrics
}

// Protocols of the request metrics.
const (
	ProtoHTTP1 = iota
	ProtoHTTP2
	ProtoGRPC
)

var protoNames = [3]string{"http1", "http2", "grpc"}

// NewMetrics registers the request series on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	req := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_http_requests_total", Help: "HTTP requests proxied or answered by the agent, by protocol and status class.",
	}, []string{"protocol", "code"})
	dur := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "weir_http_request_duration_seconds", Help: "Time from a request's head to the end of its response, by protocol.",
		Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"protocol"})
	m := &Metrics{local: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_http_local_replies_total", Help: "HTTP answers the agent made itself instead of an upstream, by status and reason.",
	}, []string{"code", "reason"})}
	retries := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_http_retries_total", Help: "HTTP and gRPC requests sent again to another endpoint, by protocol (each also counts in weir_cluster_retries_total).",
	}, []string{"protocol"})
	reg.MustRegister(req, dur, m.local, retries)
	m.routes.register(reg)
	classes := [6]string{"none", "1xx", "2xx", "3xx", "4xx", "5xx"}
	for p := range protoNames {
		for c := range classes {
			m.requests[p][c] = req.WithLabelValues(protoNames[p], classes[c])
		}
		m.duration[p] = dur.WithLabelValues(protoNames[p])
		m.retries[p] = retries.WithLabelValues(protoNames[p])
	}
	return m
}

// Request counts one finished request; status 0 means the exchange broke
// before a status was known. seconds is its duration.
func (m *Metrics) Request(proto, status int, seconds float64) {
	if m == nil {
		return
	}
	c := status / 100
	if c < 1 || c > 5 {
		c = 0
	}
	m.requests[proto][c].Inc()
	m.duration[proto].Observe(seconds)
}

// Retry counts one request sent again.
func (m *Metrics) Retry(proto int) {
	if m == nil {
		return
	}
	m.retries[proto].Inc()
}

// Local counts one local reply.
func (m *Metrics) Local(status int, reason string) {
	if m == nil {
		return
	}
	m.local.WithLabelValues(strconv.Itoa(status), reason).Inc()
}

// ErrorStatus maps an error from picking or reaching an upstream to the
// status and reason of the local reply: 503 when no endpoint could be
// picked or the circuit is open, 504 when the deadline passed, 502
// otherwise.
func ErrorStatus(err error) (int, string) {
	switch {
	case isErr(err, cluster.ErrNoEndpoint), isErr(err, cluster.ErrCircuitOpen):
		return 503, ReasonNoEndpoint
	case isErr(err, context.DeadlineExceeded):
		return 504, ReasonTimeout
	}
	return 502, ReasonUpstreamFail
}

func isErr(err, target error) bool { return errors.Is(err, target) }

// Answers that count against an endpoint in outlier ejection, though the
// exchange itself went well: Lease.Done gets them as its error.
var (
	ErrStatus5xx       = errors.New("upstream answered 5xx")
	ErrGRPCUnavailable = errors.New("upstream answered grpc-status UNAVAILABLE")
)

// Verdict is what an upstream's answer tells outlier ejection about its
// endpoint: upErr if the exchange broke, else ErrStatus5xx for a 5xx and
// ErrGRPCUnavailable for gRPC status 14 (grpc < 0: none), else nil. Only
// answers the upstream sent come here: the agent's own replies (503 no
// endpoint, 504 timeout) never do.
func Verdict(status, grpc int, upErr error) error {
	switch {
	case upErr != nil:
		return upErr
	case status >= 500 && status < 600:
		return ErrStatus5xx
	case grpc == 14:
		return ErrGRPCUnavailable
	}
	return nil
}

// Idempotent reports whether a request with this method may be sent
// twice (RFC 9110 §9.2.2).
func Idempotent(method string) bool {
	switch method {
	case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE":
		return true
	}
	return false
}
