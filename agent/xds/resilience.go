package xds

import (
	"slices"
	"strings"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// envoyDefaultRouteTimeout is what Envoy applies when a route names no
// timeout; a route that sets 0 has none. Following it keeps a control
// plane's configuration meaning what it means for Envoy.
const envoyDefaultRouteTimeout = 15 * time.Second

// maxRetryAttempts is the most retries weir's route model takes.
const maxRetryAttempts = 10

// retryOnCodes are the retry_on conditions that are sets of HTTP statuses.
// Envoy's 5xx also covers resets and per-try timeouts, which weir retries
// under any policy.
var retryOnCodes = map[string][]int{
	"5xx":           span(500, 599),
	"gateway-error": {502, 503, 504},
}

// retryOnGRPC maps Envoy's gRPC retry_on conditions to status names.
var retryOnGRPC = map[string]string{
	"cancelled":          "CANCELLED",
	"deadline-exceeded":  "DEADLINE_EXCEEDED",
	"internal":           "INTERNAL",
	"resource-exhausted": "RESOURCE_EXHAUSTED",
	"unavailable":        "UNAVAILABLE",
}

// retryOnAlways are the conditions weir retries whenever a rule has a
// retry policy (and connect failures and refused streams even without
// one): the request never reached the application, or got no answer.
var retryOnAlways = []string{"reset", "reset-before-request", "connect-failure", "refused-stream", "http3-post-connect-failure"}

// vhRetry is a virtual host's retry policy and its path, for the routes
// of that host that have none.
type vhRetry struct {
	policy *routev3.RetryPolicy
	path   string
}

func span(lo, hi int) []int {
	out := make([]int, 0, hi-lo+1)
	for c := lo; c <= hi; c++ {
		out = append(out, c)
	}
	return out
}

// convertResilience maps a RouteAction's timeout and retry policy (the
// route's own, else the virtual host's) onto the rule's timeouts and
// retry. What weir cannot honour is named in a warning; nothing here fails
// the resource, since the route is still usable without it.
func convertResilience(n *notes, p string, a *routev3.RouteAction, vh vhRetry, rule *route.HTTPRouteRule) {
	var t route.HTTPRouteTimeouts
	switch {
	case a.GetTimeout() == nil:
		t.Request = cluster.Duration(envoyDefaultRouteTimeout)
	case a.GetTimeout().CheckValid() != nil || a.GetTimeout().AsDuration() < 0:
		n.warn("%stimeout %v is not a valid duration; Envoy's default %s applies", p, a.GetTimeout(), envoyDefaultRouteTimeout)
		t.Request = cluster.Duration(envoyDefaultRouteTimeout)
	default:
		t.Request = cluster.Duration(a.GetTimeout().AsDuration())
	}
	if a.GetIdleTimeout() != nil {
		n.warn("%sidle_timeout ignored: weir bounds a request's whole exchange and each attempt's response head only", p)
	}
	if msd := a.GetMaxStreamDuration(); msd != nil {
		// Istio sends zeros here: no cap on a client's grpc-timeout,
		// which is what weir does (it honours grpc-timeout as sent).
		if d := msd.GetMaxStreamDuration(); d != nil && d.AsDuration() != 0 {
			n.warn("%smax_stream_duration.max_stream_duration ignored (%s): use timeout", p, d.AsDuration())
		}
		if d := msd.GetGrpcTimeoutHeaderMax(); d != nil && d.AsDuration() != 0 {
			n.warn("%smax_stream_duration.grpc_timeout_header_max ignored (%s): a client's grpc-timeout is honoured as sent", p, d.AsDuration())
		}
		if msd.GetGrpcTimeoutHeaderOffset() != nil {
			n.warn("%smax_stream_duration.grpc_timeout_header_offset ignored", p)
		}
	}

	if rp := a.GetRetryPolicy(); rp != nil {
		rule.Retry = convertRetry(n, p+"retry_policy.", rp, &t)
	} else if vh.policy != nil {
		// Envoy applies the virtual host's policy to routes without one.
		rule.Retry = convertRetry(n, vh.path, vh.policy, &t)
	}
	if t.Request != 0 || t.BackendRequest != 0 {
		rule.Timeouts = &t
	}
}

// convertRetry maps an Envoy RetryPolicy; per_try_timeout lands in t.
func convertRetry(n *notes, p string, rp *routev3.RetryPolicy, t *route.HTTPRouteTimeouts) *route.HTTPRouteRetry {
	n.ignored(rp, p, "retry_on", "num_retries", "per_try_timeout", "retriable_status_codes", "retry_back_off",
		"retry_host_predicate", "host_selection_retry_max_attempts")
	r := &route.HTTPRouteRetry{}
	codes := map[int]bool{}
	statusCodes := false
	var resets []string
	for _, cond := range strings.Split(rp.GetRetryOn(), ",") {
		cond = strings.TrimSpace(cond)
		switch {
		case cond == "":
		case retryOnCodes[cond] != nil:
			for _, c := range retryOnCodes[cond] {
				codes[c] = true
			}
		case retryOnGRPC[cond] != "":
			if !slices.Contains(r.GRPCCodes, retryOnGRPC[cond]) {
				r.GRPCCodes = append(r.GRPCCodes, retryOnGRPC[cond])
			}
		case cond == "retriable-status-codes":
			statusCodes = true
		case slices.Contains(retryOnAlways, cond):
			resets = append(resets, cond)
		default:
			n.warn("%sretry_on %q ignored: weir retries on 5xx statuses, gateway errors, gRPC codes, resets and connect failures only", p, cond)
		}
	}
	if statusCodes {
		for _, c := range rp.GetRetriableStatusCodes() {
			if c < 500 || c > 599 {
				n.warn("%sretriable_status_codes %d ignored: weir retries on 5xx statuses only", p, c)
				continue
			}
			codes[int(c)] = true
		}
	} else if len(rp.GetRetriableStatusCodes()) > 0 {
		n.warn("%sretriable_status_codes ignored: retry_on does not list retriable-status-codes", p)
	}
	for c := range codes {
		r.Codes = append(r.Codes, c)
	}
	slices.Sort(r.Codes)
	if (len(r.Codes) > 0 || len(r.GRPCCodes) > 0) && !codes[500] && !slices.Contains(resets, "reset") {
		// Envoy's 5xx includes resets and per-try timeouts; weir retries
		// those under any policy.
		n.warn("%sretry_on: weir also retries an idempotent request whose upstream reset or timed out before answering, which is not listed", p)
	}
	attempts := 1 // Envoy's default when num_retries is unset
	if nr := rp.GetNumRetries(); nr != nil {
		attempts = int(nr.GetValue())
	}
	if attempts > maxRetryAttempts {
		n.warn("%snum_retries %d lowered to %d, the most weir takes", p, attempts, maxRetryAttempts)
		attempts = maxRetryAttempts
	}
	r.Attempts = &attempts

	if d := rp.GetPerTryTimeout(); d != nil {
		switch v := d.AsDuration(); {
		case d.CheckValid() != nil || v < 0:
			n.warn("%sper_try_timeout %v ignored: not a valid duration", p, d)
		case t.Request != 0 && cluster.Duration(v) > t.Request:
			n.warn("%sper_try_timeout %s lowered to the route timeout %s", p, v, t.Request)
			t.BackendRequest = t.Request
		default:
			t.BackendRequest = cluster.Duration(v)
		}
	}
	if rp.GetPerTryIdleTimeout() != nil {
		n.warn("%sper_try_idle_timeout ignored", p)
	}
	if bo := rp.GetRetryBackOff(); bo != nil {
		if base := bo.GetBaseInterval(); base != nil && base.CheckValid() == nil && base.AsDuration() > 0 {
			r.Backoff = cluster.Duration(base.AsDuration())
		}
		n.warn("%sretry_back_off: weir waits base_interval %s before every retry (no exponential growth, jitter or max_interval)", p, r.Backoff)
	}
	for i, hp := range rp.GetRetryHostPredicate() {
		// weir always sends a retry to another endpoint when there is one,
		// which is what previous_hosts asks for.
		if hp.GetName() != "envoy.retry_host_predicates.previous_hosts" {
			n.warn("%sretry_host_predicate[%d] %s ignored: weir always retries on another endpoint", p, i, hp.GetName())
		}
	}
	if attempts > 0 {
		n.warn("%s: weir retries idempotent requests whose body it held whole (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) and gRPC calls on listed codes only; Envoy retries any request", strings.TrimSuffix(p, "."))
	}
	if len(r.Codes) == 0 && len(r.GRPCCodes) == 0 && len(resets) == 0 {
		n.warn("%sretry_on %q lists nothing weir retries on", p, rp.GetRetryOn())
	}
	return r
}
