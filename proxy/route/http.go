package route

import (
	"bytes"
	"errors"
	"fmt"
	"github.com/weir-mesh/weir/proxy/rpc"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// Protocol is what a service's port speaks, as declared in the config or
// in Kubernetes (appProtocol, port name prefix). Auto means sniff.
type Protocol string

// Declared protocols. The zero value is Auto.
const (
	Auto  Protocol = ""
	TCP   Protocol = "tcp"
	TLS   Protocol = "tls"
	HTTP  Protocol = "http"
	HTTP2 Protocol = "http2"
	GRPC  Protocol = "grpc"
	// Redis is balanced per command by key hash (proxy/rpc/redis). Only
	// when declared: a sniffed Redis connection stays L4, since spreading
	// the commands of a client over servers that do not share data is
	// only right for a service built for it (ring_hash or maglev shards).
	Redis Protocol = "redis"
	// Dubbo is the Dubbo 2 protocol (proxy/rpc/dubbo), balanced and routed
	// per request (rpcRoutes).
	Dubbo Protocol = "dubbo"
	// Bolt is SOFABolt (proxy/rpc/bolt), balanced and routed per request
	// (rpcRoutes).
	Bolt Protocol = "bolt"
	// RocketMQ is RocketMQ remoting (proxy/rpc/rocketmq), routed per
	// request by topic, group, request code and the broker a request
	// names (rpcRoutes); route replies are rewritten to the service
	// address.
	RocketMQ Protocol = "rocketmq"
)

// RPC reports the protocols whose requests rpcRoutes route.
func (p Protocol) RPC() bool { return p == Dubbo || p == Bolt || p == RocketMQ }

// ParseProtocol reads a declared protocol; "auto" and "" are Auto.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(s)); p {
	case "auto", Auto:
		return Auto, nil
	case TCP, TLS, HTTP, HTTP2, GRPC, Redis, Dubbo, Bolt, RocketMQ:
		return p, nil
	}
	return Auto, fmt.Errorf("protocol %q is not one of auto, tcp, tls, http, http2, grpc, redis, dubbo, bolt, rocketmq", s)
}

// checkUpstreamProtocol validates a service's upstreamProtocol against its
// protocol: only HTTP/2 can be asked for, and only of a service whose
// clients may speak HTTP.
func checkUpstreamProtocol(p, up Protocol) error {
	switch up {
	case Auto:
		return nil
	case HTTP2:
	default:
		return fmt.Errorf("upstreamProtocol %q is not one of auto, http2", string(up))
	}
	if p != Auto && !p.IsHTTP() {
		return fmt.Errorf("upstreamProtocol %s needs protocol auto, http, http2 or grpc, not %s", up, p)
	}
	return nil
}

// ParseUpstreamProtocol reads a service's upstreamProtocol; "auto" and ""
// are Auto.
func ParseUpstreamProtocol(s string) (Protocol, error) {
	switch p := Protocol(strings.ToLower(s)); p {
	case "auto", Auto:
		return Auto, nil
	case HTTP2:
		return p, nil
	}
	return Auto, fmt.Errorf("upstreamProtocol %q is not one of auto, http2", s)
}

// IsHTTP reports whether p is one of the HTTP family, so requests are
// routed and balanced one by one.
func (p Protocol) IsHTTP() bool { return p == HTTP || p == HTTP2 || p == GRPC }

// The L7 route model follows Gateway API's HTTPRoute (and GRPCRoute, which
// is an HTTPRoute over the path /service/method), so a later source can
// feed it from the API objects unchanged. Field names and semantics are
// those of gateway.networking.k8s.io/v1 where they exist.

// HTTPRoute is a set of rules for requests to one service.
type HTTPRoute struct {
	// Name identifies the route in errors and metrics.
	Name string `json:"name,omitempty"`
	// Hostnames restrict the route to requests whose host (authority,
	// without port) is one of these; "*.shop.test" matches any single
	// or multi-label prefix of shop.test. Empty matches every host.
	Hostnames []string `json:"hostnames,omitempty"`
	// Rules are tried in Gateway API precedence order (see Match).
	Rules []HTTPRouteRule `json:"rules,omitempty"`
}

// HTTPRouteRule sends requests that match one of Matches through Filters
// to one of Backends.
type HTTPRouteRule struct {
	// Matches are alternatives; none means every request.
	Matches []HTTPRouteMatch `json:"matches,omitempty"`
	// Filters change the request or answer it locally (redirect).
	Filters []HTTPRouteFilter `json:"filters,omitempty"`
	// Backends share the rule's requests by weight. None (and no redirect
	// filter) answers 500, as Gateway API says of a rule with no backends.
	Backends []BackendRef `json:"backendRefs,omitempty"`
	// Timeouts bound the rule's requests; nil: none beyond the codecs'
	// response header timeout.
	Timeouts *HTTPRouteTimeouts `json:"timeouts,omitempty"`
	// Retry retries the rule's requests that got a listed answer; nil:
	// only requests that never reached an upstream are sent again.
	Retry *HTTPRouteRetry `json:"retry,omitempty"`
	// RateLimit caps the rule's requests per second on this node; nil:
	// none.
	RateLimit *LocalRateLimit `json:"rateLimit,omitempty"`
	// Fault delays or aborts a share of the rule's requests; nil: none.
	Fault *HTTPFault `json:"fault,omitempty"`
}

// HTTPRouteTimeouts is Gateway API's HTTPRouteRule.timeouts. Zero means
// no timeout.
type HTTPRouteTimeouts struct {
	// Request bounds the whole exchange from the request's arrival: past
	// it the client gets 504 (gRPC: DEADLINE_EXCEEDED) if no answer
	// started, and the request is never retried.
	Request cluster.Duration `json:"request,omitempty"`
	// BackendRequest bounds each attempt (the per-try timeout), up to the
	// upstream's response head; at most Request.
	BackendRequest cluster.Duration `json:"backendRequest,omitempty"`
}

// HTTPRouteRetry is Gateway API's experimental HTTPRouteRetry, plus the
// gRPC codes weir also retries on. Only safe requests are retried: an
// idempotent method (GET, HEAD, OPTIONS, TRACE, PUT, DELETE) whose body,
// if any, was small and wholly received, or a gRPC call answered with one
// of GRPCCodes (trailers-only, so nothing reached the client). Every retry
// goes to another endpoint and must fit the cluster's retry budget and
// retry.maxRetries.
type HTTPRouteRetry struct {
	// Codes are the upstream HTTP statuses (500-599) to retry on; none:
	// only failures without an answer (reset, per-try timeout).
	Codes []int `json:"codes,omitempty"`
	// GRPCCodes are the gRPC statuses (names such as UNAVAILABLE, or
	// numbers) to retry gRPC calls on, whatever their method.
	GRPCCodes []string `json:"grpcCodes,omitempty"`
	// Attempts is the most retries of one request; nil: 1, 0: none.
	Attempts *int `json:"attempts,omitempty"`
	// Backoff is the pause before each retry; default none.
	Backoff cluster.Duration `json:"backoff,omitempty"`
}

// Path match types.
const (
	PathExact  = "Exact"
	PathPrefix = "PathPrefix"
	PathRegex  = "RegularExpression"
)

// Header and query match types.
const (
	MatchExact = "Exact"
	MatchRegex = "RegularExpression"
)

// HTTPRouteMatch is one alternative: every condition set must hold.
type HTTPRouteMatch struct {
	Path        *PathMatch        `json:"path,omitempty"`
	Method      string            `json:"method,omitempty"`
	Headers     []HeaderMatch     `json:"headers,omitempty"`
	QueryParams []QueryParamMatch `json:"queryParams,omitempty"`
}

// PathMatch matches the request path (without the query). A PathPrefix
// matches whole segments: /api matches /api and /api/x, not /apix.
type PathMatch struct {
	Type  string `json:"type,omitempty"` // default PathPrefix
	Value string `json:"value"`
}

// HeaderMatch matches a request header by name (case-insensitive).
type HeaderMatch struct {
	Type  string `json:"type,omitempty"` // default Exact
	Name  string `json:"name"`
	Value string `json:"value"`
}

// QueryParamMatch matches a query parameter by name (case-sensitive).
type QueryParamMatch struct {
	Type  string `json:"type,omitempty"` // default Exact
	Name  string `json:"name"`
	Value string `json:"value"`
}

// Filter types.
const (
	FilterRequestHeaderModifier  = "RequestHeaderModifier"
	FilterResponseHeaderModifier = "ResponseHeaderModifier"
	FilterURLRewrite             = "URLRewrite"
	FilterRequestRedirect        = "RequestRedirect"
	FilterRequestMirror          = "RequestMirror"
)

// HTTPRouteFilter is one filter; Type says which of the others is set.
type HTTPRouteFilter struct {
	Type                   string          `json:"type"`
	RequestHeaderModifier  *HeaderModifier `json:"requestHeaderModifier,omitempty"`
	ResponseHeaderModifier *HeaderModifier `json:"responseHeaderModifier,omitempty"`
	URLRewrite             *URLRewrite     `json:"urlRewrite,omitempty"`
	RequestRedirect        *Redirect       `json:"requestRedirect,omitempty"`
	RequestMirror          *RequestMirror  `json:"requestMirror,omitempty"`
}

// RequestMirror is Gateway API's HTTPRequestMirrorFilter: a copy of each
// request (or of a share of them) goes to another service, fire and
// forget. The copy's answer is read and dropped; it never delays, changes
// or fails the request itself. A rule may have several.
type RequestMirror struct {
	// BackendRef is the service the copies go to; its Weight is ignored.
	// An Unresolved one mirrors nothing.
	BackendRef BackendRef `json:"backendRef"`
	// Percent (0-100) of the rule's requests are copied; nil, with
	// Fraction nil too: all of them.
	Percent *int32 `json:"percent,omitempty"`
	// Fraction is the share as numerator/denominator (denominator
	// default 100); at most one of Percent and Fraction.
	Fraction *Fraction `json:"fraction,omitempty"`
}

// Fraction is a share: Numerator of every Denominator.
type Fraction struct {
	Numerator   int32  `json:"numerator"`
	Denominator *int32 `json:"denominator,omitempty"`
}

// Header is one name and value.
type Header struct {
	Name  string `json:"name"`
	Value string `json:"value"`
}

// HeaderModifier sets (replaces), adds (appends) and removes headers, in
// that order of precedence: a name removed is gone, set wins over the
// original value.
type HeaderModifier struct {
	Set    []Header `json:"set,omitempty"`
	Add    []Header `json:"add,omitempty"`
	Remove []string `json:"remove,omitempty"`
}

// Path modifier types.
const (
	ReplaceFullPath    = "ReplaceFullPath"
	ReplacePrefixMatch = "ReplacePrefixMatch"
)

// PathModifier replaces the whole path, or the prefix the rule's
// PathPrefix match matched.
type PathModifier struct {
	Type               string `json:"type"`
	ReplaceFullPath    string `json:"replaceFullPath,omitempty"`
	ReplacePrefixMatch string `json:"replacePrefixMatch,omitempty"`
}

// URLRewrite changes the host and path the upstream sees.
type URLRewrite struct {
	Hostname string        `json:"hostname,omitempty"`
	Path     *PathModifier `json:"path,omitempty"`
}

// Redirect answers the request locally with a redirect.
type Redirect struct {
	Scheme     string        `json:"scheme,omitempty"`
	Hostname   string        `json:"hostname,omitempty"`
	Path       *PathModifier `json:"path,omitempty"`
	Port       uint16        `json:"port,omitempty"`
	StatusCode int           `json:"statusCode,omitempty"` // 301 or 302 (default)
}

// BackendRef names a service whose cluster takes a share of a rule's
// requests.
type BackendRef struct {
	Service string `json:"service"`
	// Weight is the share relative to the rule's other backends; nil
	// means 1, 0 means none.
	Weight *uint32 `json:"weight,omitempty"`
	// Unresolved, when set, says why a source could not resolve this
	// backend (a Service that does not exist, a reference it may not
	// follow). Service is then not looked up, and the backend's share of
	// the rule's requests is answered 500, as Gateway API requires of an
	// invalid backendRef: one bad reference must not fail the snapshot
	// nor silently move its traffic to the other backends.
	Unresolved string `json:"unresolved,omitempty"`
}

// RequestView is what matching reads of a request. Implementations read
// their own buffers; matching keeps none of the slices.
type RequestView interface {
	Method() []byte
	// Host is the authority (Host header or :authority), port included if
	// the client sent one.
	Host() []byte
	// Path is the request path without the query.
	Path() []byte
	// Query is the raw query, without '?'.
	Query() []byte
	// Header returns the first value of the header (name in lower case).
	Header(lowerName string) ([]byte, bool)
}

// HTTPRouter is a service's compiled HTTP routes.
type HTTPRouter struct {
	// Like virtual hosts: the rules of routes naming the request's host
	// exactly, else of the longest wildcard suffix naming it, else of
	// routes with no hostnames; each list in precedence order.
	exact map[string][]*compiledMatch
	wild  []hostRules // longest suffix first
	any   []*compiledMatch
}

type hostRules struct {
	suffix string // ".example.com"
	rules  []*compiledMatch
}

// Action is what a matched rule does with a request. It is shared by every
// request the rule matches: do not modify it.
type Action struct {
	// Route and Rule name the match for logs and metrics ("name/2").
	Route string
	Rule  int
	// RequestHeaders and ResponseHeaders are the rule's header modifiers,
	// nil when none.
	RequestHeaders, ResponseHeaders *HeaderModifier
	// Rewrite changes host and path upstream; nil when none.
	Rewrite *URLRewrite
	// Redirect answers locally; nil when none.
	Redirect *Redirect
	// PrefixMatched is the PathPrefix value the match used, for
	// ReplacePrefixMatch.
	PrefixMatched string
	// Timeout bounds the whole request (504 past it), TryTimeout each
	// attempt; 0: none.
	Timeout, TryTimeout time.Duration
	// Retry is the rule's retry policy; nil: none.
	Retry *RetryPolicy
	// RateLimit is the rule's token bucket; nil: no limit. A rebuild
	// keeps it while the rule's name, index and limit stay the same.
	RateLimit *TokenBucket
	// Fault is the rule's fault injection; nil: none.
	Fault *FaultPolicy
	// Mirrors copy the rule's requests to other services; none: no copy.
	Mirrors []*Mirror
	// RPC is an rpcRoute's per-request timeout and retries (with the
	// service's defaults); nil: rpc.DefaultPolicy.
	RPC *rpc.Policy

	backends []weightedCluster
	total    uint64
}

// RetryPolicy is a compiled HTTPRouteRetry.
type RetryPolicy struct {
	// Attempts is the most retries of one request.
	Attempts int
	// Backoff is the pause before each retry.
	Backoff time.Duration
	codes   [100]bool // 500-599
	grpc    [17]bool  // gRPC status codes 0-16
}

// RetryStatus reports whether an upstream answer with this HTTP status
// may be retried; a nil policy retries none.
func (p *RetryPolicy) RetryStatus(status int) bool {
	return p != nil && status >= 500 && status < 600 && p.codes[status-500]
}

// RetryGRPC reports whether a gRPC answer with this status code may be
// retried; a nil policy retries none.
func (p *RetryPolicy) RetryGRPC(code int) bool {
	return p != nil && code >= 0 && code < len(p.grpc) && p.grpc[code]
}

// grpcCodeNames are the gRPC status codes by name, as in grpc-go's codes
// package.
var grpcCodeNames = [17]string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
	"ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// compileResilience checks a rule's timeouts and retry policy and puts
// them on a; errors name the field under rw.
func compileResilience(rule *HTTPRouteRule, a *Action, bad func(string, ...any), rw string) {
	if t := rule.Timeouts; t != nil {
		if t.Request < 0 {
			bad("%s.timeouts.request %s is negative", rw, t.Request)
		}
		if t.BackendRequest < 0 {
			bad("%s.timeouts.backendRequest %s is negative", rw, t.BackendRequest)
		}
		if t.Request > 0 && t.BackendRequest > t.Request {
			bad("%s.timeouts.backendRequest %s is longer than request %s", rw, t.BackendRequest, t.Request)
		}
		a.Timeout, a.TryTimeout = max(t.Request.D(), 0), max(t.BackendRequest.D(), 0)
	}
	r := rule.Retry
	if r == nil {
		return
	}
	p := &RetryPolicy{Attempts: 1, Backoff: r.Backoff.D()}
	if r.Attempts != nil {
		p.Attempts = *r.Attempts
		if p.Attempts < 0 || p.Attempts > 10 {
			bad("%s.retry.attempts %d is not in 0..10", rw, p.Attempts)
		}
	}
	if r.Backoff < 0 {
		bad("%s.retry.backoff %s is negative", rw, r.Backoff)
	}
	for i, c := range r.Codes {
		if c < 500 || c > 599 {
			bad("%s.retry.codes[%d] %d is not a 5xx status", rw, i, c)
			continue
		}
		p.codes[c-500] = true
	}
	for i, name := range r.GRPCCodes {
		c, ok := ParseGRPCCode(name)
		if !ok || c == 0 {
			bad("%s.retry.grpcCodes[%d] %q is not a gRPC error code (UNAVAILABLE, 14, ...)", rw, i, name)
			continue
		}
		p.grpc[c] = true
	}
	a.Retry = p
}

type weightedCluster struct {
	c      *cluster.Cluster
	weight uint64
}

// addBackends resolves refs to clusters and adds them to a's weighted
// choice, reporting each bad one through bad with where (the rule's path
// in the config) as its first argument.
func (a *Action) addBackends(refs []BackendRef, clusterOf func(string) *cluster.Cluster, where string, bad func(string, ...any)) {
	for bi, b := range refs {
		var c *cluster.Cluster // nil for an unresolved backend: its share is answered 500
		if b.Unresolved == "" {
			if c = clusterOf(b.Service); c == nil {
				bad("%s.backendRefs[%d].service %q is not a service", where, bi, b.Service)
				continue
			}
		}
		w := uint64(1)
		if b.Weight != nil {
			w = uint64(*b.Weight)
		}
		if w > 1_000_000 {
			bad("%s.backendRefs[%d].weight %d is over 1000000", where, bi, w)
			continue
		}
		if w > 0 {
			a.backends = append(a.backends, weightedCluster{c: c, weight: w})
			a.total += w
		}
	}
}

// Backend picks the cluster for one request by weight; nil when the rule
// has no backend with weight or the pick fell on an unresolved backend
// (answer 500), or when it redirects.
func (a *Action) Backend() *cluster.Cluster {
	switch {
	case a.total == 0:
		return nil
	case len(a.backends) == 1:
		return a.backends[0].c
	}
	n := rand.Uint64N(a.total)
	for _, b := range a.backends {
		if n < b.weight {
			return b.c
		}
		n -= b.weight
	}
	return a.backends[len(a.backends)-1].c
}

type compiledMatch struct {
	hosts   []string // exact (lower case) or "*.suffix"; none: any
	m       HTTPRouteMatch
	method  []byte
	path    []byte
	re      *regexp.Regexp
	headers []compiledKV
	query   []compiledKV
	action  *Action
	order   int // position in the config, the last tie-breaker
}

type compiledKV struct {
	name  string // lower case for headers
	value []byte
	re    *regexp.Regexp
}

// Match returns the action of the first rule matching r. Rules are
// chosen as Gateway API says: first by hostname, the most specific one
// naming the request's host (an exact hostname, then the longest
// "*.suffix", then routes with no hostnames; only that group's rules are
// tried, as with Envoy's virtual hosts); then in precedence order: an
// Exact path first, then RegularExpression paths (whose order Gateway API
// leaves to implementations: before prefixes, so a catch-all "/" does not
// hide them), then PathPrefix, longer first; at equal paths a match with a
// method, then the one with more header matches, then more query matches;
// remaining ties go to the earlier route and rule in the config. A match
// with no path is a PathPrefix "/". nil means no rule matched (404).
func (h *HTTPRouter) Match(r RequestView) *Action {
	if h == nil {
		return nil
	}
	for _, m := range h.group(stripPort(r.Host())) {
		if m.matches(r) {
			return m.action
		}
	}
	return nil
}

// group returns the rules of the most specific hostname group for host.
func (h *HTTPRouter) group(host []byte) []*compiledMatch {
	if len(h.exact) == 0 && len(h.wild) == 0 {
		return h.any
	}
	var buf [256]byte
	if len(host) <= len(buf) {
		n := copy(buf[:], host)
		lower := buf[:n]
		for i, c := range lower {
			if 'A' <= c && c <= 'Z' {
				lower[i] = c + 'a' - 'A'
			}
		}
		if rules, ok := h.exact[string(lower)]; ok {
			return rules
		}
		for _, w := range h.wild {
			if len(lower) > len(w.suffix) && string(lower[len(lower)-len(w.suffix):]) == w.suffix {
				return w.rules
			}
		}
	}
	return h.any
}

func (m *compiledMatch) matches(r RequestView) bool {
	if m.method != nil && !bytes.Equal(r.Method(), m.method) {
		return false
	}
	{
		p := r.Path()
		switch m.m.Path.Type {
		case PathExact:
			if !bytes.Equal(p, m.path) {
				return false
			}
		case PathRegex:
			if !m.re.Match(p) {
				return false
			}
		default:
			if !prefixMatches(p, m.path) {
				return false
			}
		}
	}
	for i := range m.headers {
		kv := &m.headers[i]
		v, ok := r.Header(kv.name)
		if !ok || !kv.matches(v) {
			return false
		}
	}
	if len(m.query) > 0 {
		q := r.Query()
		for i := range m.query {
			kv := &m.query[i]
			v, ok := queryValue(q, kv.name)
			if !ok || !kv.matches(v) {
				return false
			}
		}
	}
	return true
}

func (kv *compiledKV) matches(v []byte) bool {
	if kv.re != nil {
		return kv.re.Match(v)
	}
	return bytes.Equal(v, kv.value)
}

// prefixMatches matches whole path segments; "/" matches everything.
func prefixMatches(p, prefix []byte) bool {
	if len(prefix) > 0 && prefix[len(prefix)-1] == '/' {
		prefix = prefix[:len(prefix)-1]
	}
	if !bytes.HasPrefix(p, prefix) {
		return false
	}
	return len(p) == len(prefix) || p[len(prefix)] == '/'
}

// stripPort removes ":port" from a host, keeping IPv6 brackets' content
// as it is.
func stripPort(h []byte) []byte {
	if len(h) > 0 && h[0] == '[' {
		if i := bytes.IndexByte(h, ']'); i > 0 {
			return h[:i+1]
		}
		return h
	}
	if i := bytes.LastIndexByte(h, ':'); i >= 0 {
		return h[:i]
	}
	return h
}

// queryValue finds the first value of name in a raw query. Values are
// compared as sent (percent-encoding is not decoded).
func queryValue(q []byte, name string) ([]byte, bool) {
	for len(q) > 0 {
		var kv []byte
		if i := bytes.IndexByte(q, '&'); i >= 0 {
			kv, q = q[:i], q[i+1:]
		} else {
			kv, q = q, nil
		}
		k, v := kv, []byte(nil)
		if i := bytes.IndexByte(kv, '='); i >= 0 {
			k, v = kv[:i], kv[i+1:]
		}
		if string(k) == name {
			return v, true
		}
	}
	return nil, false
}

// compileHTTP builds a service's router. clusterOf resolves a backend
// service name. where prefixes errors.
func compileHTTP(routes []HTTPRoute, clusterOf func(string) *cluster.Cluster, lim *limits, where string) (*HTTPRouter, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(where+format, args...)) }
	h := &HTTPRouter{}
	var all []*compiledMatch
	order := 0
	for ri, rt := range routes {
		var hosts []string
		for hi, hn := range rt.Hostnames {
			hn = strings.ToLower(hn)
			if hn == "" || strings.Contains(hn[1:], "*") || (hn[0] == '*' && !strings.HasPrefix(hn, "*.")) || strings.ContainsAny(hn, ":/ ") {
				bad(".routes[%d].hostnames[%d] %q is not a hostname or *.suffix", ri, hi, hn)
				continue
			}
			hosts = append(hosts, hn)
		}
		name := rt.Name
		if name == "" {
			name = fmt.Sprintf("route%d", ri)
		}
		for ji, rule := range rt.Rules {
			rw := fmt.Sprintf(".routes[%d].rules[%d]", ri, ji)
			a := &Action{Route: name, Rule: ji}
			compileResilience(&rule, a, bad, rw)
			compilePolicy(&rule, a, lim, bad, rw)
			for fi, f := range rule.Filters {
				fw := fmt.Sprintf("%s.filters[%d]", rw, fi)
				switch f.Type {
				case FilterRequestHeaderModifier:
					if f.RequestHeaderModifier == nil {
						bad("%s.requestHeaderModifier is missing", fw)
					}
					for _, err := range checkHeaderModifier(f.RequestHeaderModifier) {
						bad("%s.requestHeaderModifier: %v", fw, err)
					}
					a.RequestHeaders = f.RequestHeaderModifier
				case FilterResponseHeaderModifier:
					if f.ResponseHeaderModifier == nil {
						bad("%s.responseHeaderModifier is missing", fw)
					}
					for _, err := range checkHeaderModifier(f.ResponseHeaderModifier) {
						bad("%s.responseHeaderModifier: %v", fw, err)
					}
					a.ResponseHeaders = f.ResponseHeaderModifier
				case FilterURLRewrite:
					if f.URLRewrite == nil {
						bad("%s.urlRewrite is missing", fw)
						continue
					}
					if err := checkPathModifier(f.URLRewrite.Path, rule.Matches); err != nil {
						bad("%s.urlRewrite.path: %v", fw, err)
					}
					a.Rewrite = f.URLRewrite
				case FilterRequestRedirect:
					rd := f.RequestRedirect
					if rd == nil {
						bad("%s.requestRedirect is missing", fw)
						continue
					}
					if rd.StatusCode != 0 && rd.StatusCode != 301 && rd.StatusCode != 302 {
						bad("%s.requestRedirect.statusCode %d is not 301 or 302", fw, rd.StatusCode)
					}
					if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
						bad("%s.requestRedirect.scheme %q is not http or https", fw, rd.Scheme)
					}
					if err := checkPathModifier(rd.Path, rule.Matches); err != nil {
						bad("%s.requestRedirect.path: %v", fw, err)
					}
					a.Redirect = rd
				case FilterRequestMirror:
					if m := compileMirror(f.RequestMirror, clusterOf, fw, bad); m != nil {
						a.Mirrors = append(a.Mirrors, m)
					}
				default:
					bad("%s.type %q is not one of RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror", fw, f.Type)
				}
			}
			if a.Redirect != nil && len(rule.Backends) > 0 {
				bad("%s has both a requestRedirect filter and backendRefs", rw)
			}
			a.addBackends(rule.Backends, clusterOf, rw, bad)
			matches := rule.Matches
			if len(matches) == 0 {
				matches = []HTTPRouteMatch{{}}
			}
			for mi, m := range matches {
				mw := fmt.Sprintf("%s.matches[%d]", rw, mi)
				cm := &compiledMatch{hosts: hosts, m: m, action: a, order: order}
				order++
				if m.Method != "" {
					cm.method = []byte(strings.ToUpper(m.Method))
				}
				p := m.Path
				if p == nil {
					// No path condition is a PathPrefix "/" in precedence.
					p = &PathMatch{Type: PathPrefix, Value: "/"}
				}
				{
					switch p.Type {
					case "", PathPrefix:
						cm.m.Path = &PathMatch{Type: PathPrefix, Value: p.Value}
						if !strings.HasPrefix(p.Value, "/") {
							bad("%s.path.value %q must start with /", mw, p.Value)
						}
						ma := *a
						ma.PrefixMatched = p.Value
						cm.action = &ma
					case PathExact:
						if !strings.HasPrefix(p.Value, "/") {
							bad("%s.path.value %q must start with /", mw, p.Value)
						}
					case PathRegex:
						re, err := regexp.Compile("^(?:" + p.Value + ")$")
						if err != nil {
							bad("%s.path.value: %v", mw, err)
						}
						cm.re = re
					default:
						bad("%s.path.type %q is not one of Exact, PathPrefix, RegularExpression", mw, p.Type)
					}
					cm.path = []byte(cm.m.Path.Value)
				}
				for i, hm := range m.Headers {
					kv, err := compileKV(hm.Type, strings.ToLower(hm.Name), hm.Value)
					if err != nil {
						bad("%s.headers[%d]: %v", mw, i, err)
					}
					cm.headers = append(cm.headers, kv)
				}
				for i, qm := range m.QueryParams {
					kv, err := compileKV(qm.Type, qm.Name, qm.Value)
					if err != nil {
						bad("%s.queryParams[%d]: %v", mw, i, err)
					}
					cm.query = append(cm.query, kv)
				}
				all = append(all, cm)
			}
		}
	}
	h.index(all)
	return h, errors.Join(errs...)
}

// CheckHTTPRoutes reports every problem Build would find in routes,
// each naming its field, without resolving backends: a source of routes
// written by users (Gateway API objects) checks each one alone and
// refuses the bad one, so it never fails the whole snapshot.
func CheckHTTPRoutes(routes []HTTPRoute) error {
	stub := &cluster.Cluster{}
	_, err := compileHTTP(routes, func(string) *cluster.Cluster { return stub }, &limits{next: map[bucketKey]*TokenBucket{}}, "")
	return err
}

func compileKV(typ, name, value string) (compiledKV, error) {
	kv := compiledKV{name: name, value: []byte(value)}
	if name == "" {
		return kv, errors.New("name is missing")
	}
	switch typ {
	case "", MatchExact:
	case MatchRegex:
		re, err := regexp.Compile("^(?:" + value + ")$")
		if err != nil {
			return kv, err
		}
		kv.re = re
	default:
		return kv, fmt.Errorf("type %q is not one of Exact, RegularExpression", typ)
	}
	return kv, nil
}

func checkPathModifier(p *PathModifier, matches []HTTPRouteMatch) error {
	if p == nil {
		return nil
	}
	switch p.Type {
	case ReplaceFullPath:
		if !strings.HasPrefix(p.ReplaceFullPath, "/") {
			return fmt.Errorf("replaceFullPath %q must start with /", p.ReplaceFullPath)
		}
	case ReplacePrefixMatch:
		ok := len(matches) > 0
		for _, m := range matches {
			if m.Path == nil || (m.Path.Type != "" && m.Path.Type != PathPrefix) {
				ok = false
			}
		}
		if !ok {
			return errors.New("ReplacePrefixMatch needs every match of the rule to be a PathPrefix")
		}
	default:
		return fmt.Errorf("type %q is not one of ReplaceFullPath, ReplacePrefixMatch", p.Type)
	}
	return nil
}

// precedence orders matches as Gateway API says (see Match).
func precedence(a, b *compiledMatch) int {
	ka, kb := pathRank(a), pathRank(b)
	if ka != kb {
		return kb - ka
	}
	if a.m.Path != nil && b.m.Path != nil && len(a.m.Path.Value) != len(b.m.Path.Value) && a.m.Path.Type == PathPrefix {
		return len(b.m.Path.Value) - len(a.m.Path.Value)
	}
	if (a.method != nil) != (b.method != nil) {
		if a.method != nil {
			return -1
		}
		return 1
	}
	if len(a.headers) != len(b.headers) {
		return len(b.headers) - len(a.headers)
	}
	if len(a.query) != len(b.query) {
		return len(b.query) - len(a.query)
	}
	return a.order - b.order
}

func pathRank(m *compiledMatch) int {
	switch m.m.Path.Type {
	case PathExact:
		return 4
	case PathRegex:
		return 3
	}
	return 2
}

// RewritePath applies a rewrite or redirect path modifier to path (no
// query); prefix is the PathPrefix the request matched.
func RewritePath(p *PathModifier, path, prefix string) string {
	if p == nil {
		return path
	}
	if p.Type == ReplaceFullPath {
		return p.ReplaceFullPath
	}
	prefix = strings.TrimSuffix(prefix, "/")
	rest := strings.TrimPrefix(path, prefix)
	repl := strings.TrimSuffix(p.ReplacePrefixMatch, "/")
	out := repl + rest
	if out == "" {
		return "/"
	}
	if out[0] != '/' {
		out = "/" + out
	}
	return out
}

// index groups compiled matches by hostname, each group in precedence
// order.
func (h *HTTPRouter) index(all []*compiledMatch) {
	wild := map[string][]*compiledMatch{}
	for _, m := range all {
		if len(m.hosts) == 0 {
			h.any = append(h.any, m)
		}
		for _, hn := range m.hosts {
			if hn[0] == '*' {
				wild[hn[1:]] = append(wild[hn[1:]], m)
				continue
			}
			if h.exact == nil {
				h.exact = map[string][]*compiledMatch{}
			}
			h.exact[hn] = append(h.exact[hn], m)
		}
	}
	for k, v := range h.exact {
		slices.SortStableFunc(v, precedence)
		h.exact[k] = v
	}
	for suffix, rules := range wild {
		slices.SortStableFunc(rules, precedence)
		h.wild = append(h.wild, hostRules{suffix: suffix, rules: rules})
	}
	slices.SortFunc(h.wild, func(a, b hostRules) int {
		if len(a.suffix) != len(b.suffix) {
			return len(b.suffix) - len(a.suffix)
		}
		return strings.Compare(a.suffix, b.suffix)
	})
	slices.SortStableFunc(h.any, precedence)
}

// protectedHeaders may not be set, added or removed by a filter: they
// frame the message or belong to one hop (RFC 9110 §7.6.1), and the codecs
// own them. Host is changed with URLRewrite's hostname instead.
var protectedHeaders = map[string]bool{
	"host": true, "content-length": true, "transfer-encoding": true, "connection": true,
	"keep-alive": true, "proxy-connection": true, "te": true, "trailer": true, "upgrade": true,
}

// checkHeaderModifier refuses names that are not RFC 9110 tokens or are
// protected, and values with CR, LF or NUL (header injection).
func checkHeaderModifier(m *HeaderModifier) []error {
	if m == nil {
		return nil
	}
	var errs []error
	name := func(where, n string) {
		switch {
		case n == "" || strings.IndexFunc(n, func(r rune) bool { return r > 0x7e || !isTokenChar(byte(r)) }) >= 0:
			errs = append(errs, fmt.Errorf("%s name %q is not a header name", where, n))
		case protectedHeaders[strings.ToLower(n)]:
			errs = append(errs, fmt.Errorf("%s name %q frames the message or belongs to one hop; it cannot be changed", where, n))
		}
	}
	value := func(where, v string) {
		if strings.ContainsAny(v, "\r\n\x00") {
			errs = append(errs, fmt.Errorf("%s value holds CR, LF or NUL", where))
		}
	}
	for i, h := range m.Set {
		name(fmt.Sprintf("set[%d]", i), h.Name)
		value(fmt.Sprintf("set[%d]", i), h.Value)
	}
	for i, h := range m.Add {
		name(fmt.Sprintf("add[%d]", i), h.Name)
		value(fmt.Sprintf("add[%d]", i), h.Value)
	}
	for i, n := range m.Remove {
		name(fmt.Sprintf("remove[%d]", i), n)
	}
	return errs
}

// isTokenChar reports whether c may appear in an RFC 9110 token.
func isTokenChar(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
