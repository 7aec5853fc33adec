package route

import (
	"math"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// LocalRateLimit caps the requests a rule admits on this node with a
// token bucket: RequestsPerSecond tokens are added each second, up to
// Burst; each request takes one, and a request that finds none is answered
// 429 Too Many Requests (gRPC: RESOURCE_EXHAUSTED) with a retry-after, and
// never reaches an upstream. The bucket is per agent (node-local), like
// Envoy's local rate limit: N nodes admit up to N times the rate.
type LocalRateLimit struct {
	// RequestsPerSecond is the sustained rate; required, > 0.
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	// Burst is how many requests may arrive at once after a quiet spell;
	// 0 means max(1, RequestsPerSecond rounded up).
	Burst int `json:"burst,omitempty"`
}

// HTTPFault injects failures into a rule's requests, for users' chaos
// tests, the way Istio's VirtualService fault does: a delay before the
// request goes on, an abort answered by the agent instead of an upstream,
// each for a percentage of requests, decided independently (a request may
// be delayed and then aborted).
type HTTPFault struct {
	Delay *FaultDelay `json:"delay,omitempty"`
	Abort *FaultAbort `json:"abort,omitempty"`
}

// FaultDelay holds Percentage % of requests for FixedDelay first.
type FaultDelay struct {
	FixedDelay cluster.Duration `json:"fixedDelay"`
	// Percentage of requests delayed, 0-100 (fractions allowed); default
	// 100.
	Percentage *float64 `json:"percentage,omitempty"`
}

// FaultAbort answers Percentage % of requests locally with HTTPStatus,
// or, to a gRPC client, with GRPCStatus as a trailers-only gRPC error.
type FaultAbort struct {
	// HTTPStatus is the status an HTTP client gets, 200-599; default: the
	// one GRPCStatus maps to (UNAVAILABLE 503, ...), else required.
	HTTPStatus int `json:"httpStatus,omitempty"`
	// GRPCStatus is the gRPC code a gRPC client gets (a name such as
	// UNAVAILABLE, or a number 1-16); default: the one HTTPStatus maps
	// to (503 UNAVAILABLE, 429 RESOURCE_EXHAUSTED, ...).
	GRPCStatus string `json:"grpcStatus,omitempty"`
	// Percentage of requests aborted, 0-100; default 100.
	Percentage *float64 `json:"percentage,omitempty"`
}

// FaultPolicy is a compiled HTTPFault.
type FaultPolicy struct {
	// Delay is the pause of a delayed request.
	Delay time.Duration
	// AbortStatus and AbortGRPC answer an aborted request; AbortGRPC 0
	// means the code AbortStatus maps to.
	AbortStatus, AbortGRPC int

	delayAt, abortAt threshold
}

// threshold picks a share of requests: one random draw below it.
type threshold struct {
	all bool
	n   uint64
}

func newThreshold(percent float64) threshold {
	switch {
	case percent >= 100:
		return threshold{all: true}
	case percent <= 0:
		return threshold{}
	}
	return threshold{n: uint64(percent / 100 * math.MaxUint64)}
}

func (t threshold) pick() bool { return t.all || (t.n != 0 && rand.Uint64() < t.n) }

// Delayed reports whether this request is to be delayed; a nil policy
// delays none.
func (f *FaultPolicy) Delayed() bool { return f != nil && f.Delay > 0 && f.delayAt.pick() }

// Aborted reports whether this request is to be aborted; a nil policy
// aborts none.
func (f *FaultPolicy) Aborted() bool { return f != nil && f.AbortStatus != 0 && f.abortAt.pick() }

// TokenBucket is a lock-free token bucket (the generic cell rate
// algorithm): it keeps only the time at which the bucket will be full
// again, so admitting a request is one compare-and-swap and no lock.
type TokenBucket struct {
	interval int64 // nanoseconds per token
	window   int64 // burst × interval: how far ahead of now tat may run
	base     time.Time
	tat      atomic.Int64 // theoretical arrival time, ns since base
}

// NewTokenBucket admits rps requests per second on average and burst at
// once.
func NewTokenBucket(rps float64, burst int) *TokenBucket {
	iv := max(int64(float64(time.Second)/rps), 1)
	return &TokenBucket{interval: iv, window: iv * int64(burst), base: time.Now()}
}

// Allow takes a token. When there is none it returns false and how long
// until one is there.
func (b *TokenBucket) Allow() (bool, time.Duration) {
	now := int64(time.Since(b.base))
	for {
		tat := b.tat.Load()
		next := max(tat, now) + b.interval
		if wait := next - now - b.window; wait > 0 {
			return false, time.Duration(wait)
		}
		if b.tat.CompareAndSwap(tat, next) {
			return true, 0
		}
	}
}

// compilePolicy checks a rule's rate limit and fault and puts them on a;
// errors name the field under rw.
func compilePolicy(rule *HTTPRouteRule, a *Action, lim *limits, bad func(string, ...any), rw string) {
	if rule.RateLimit != nil {
		a.RateLimit = lim.bucket(bucketKey{route: a.Route, rule: a.Rule, rl: *rule.RateLimit}, bad, rw+".rateLimit")
	}
	f := rule.Fault
	if f == nil {
		return
	}
	if f.Delay == nil && f.Abort == nil {
		bad("%s.fault has neither delay nor abort", rw)
		return
	}
	p := &FaultPolicy{}
	pct := func(where string, v *float64) float64 {
		if v == nil {
			return 100
		}
		if !(*v >= 0 && *v <= 100) {
			bad("%s.fault.%s.percentage %v is not in 0..100", rw, where, *v)
		}
		return *v
	}
	if d := f.Delay; d != nil {
		if d.FixedDelay <= 0 || d.FixedDelay.D() > time.Hour {
			bad("%s.fault.delay.fixedDelay %s is not in (0, 1h]", rw, d.FixedDelay)
		}
		p.Delay = d.FixedDelay.D()
		p.delayAt = newThreshold(pct("delay", d.Percentage))
	}
	if ab := f.Abort; ab != nil {
		if ab.GRPCStatus != "" {
			c, ok := ParseGRPCCode(ab.GRPCStatus)
			if !ok || c == 0 {
				bad("%s.fault.abort.grpcStatus %q is not a gRPC error code (UNAVAILABLE, 14, ...)", rw, ab.GRPCStatus)
			}
			p.AbortGRPC = c
		}
		p.AbortStatus = ab.HTTPStatus
		switch {
		case ab.HTTPStatus == 0 && ab.GRPCStatus == "":
			bad("%s.fault.abort needs httpStatus or grpcStatus", rw)
		case ab.HTTPStatus == 0:
			p.AbortStatus = HTTPStatusOfGRPC(p.AbortGRPC)
		case ab.HTTPStatus < 200 || ab.HTTPStatus > 599:
			bad("%s.fault.abort.httpStatus %d is not in 200..599", rw, ab.HTTPStatus)
		}
		p.abortAt = newThreshold(pct("abort", ab.Percentage))
	}
	a.Fault = p
}

// bucketKey names a token bucket across builds: the same limit on the
// same rule of the same service.
type bucketKey struct {
	service, route string
	rule           int // -1: the service's own limit
	rl             LocalRateLimit
}

// limits hands out the token buckets of one build, carrying over the
// previous snapshot's: a rebuild (an endpoint change, a reload) keeps the
// tokens of every limit it did not change, so churn cannot reset a limit.
type limits struct {
	service    string
	prev, next map[bucketKey]*TokenBucket
}

// bucket returns k's bucket: the previous build's, else a new one (nil
// when k's limit is invalid, with the error named under where).
func (l *limits) bucket(k bucketKey, bad func(string, ...any), where string) *TokenBucket {
	k.service = l.service
	b, ok := l.prev[k]
	if !ok {
		if b = compileRateLimit(&k.rl, bad, where); b == nil {
			return nil
		}
	}
	l.next[k] = b
	return b
}

// compileRateLimit checks rl and makes its bucket; nil after an error
// (named under where).
func compileRateLimit(rl *LocalRateLimit, bad func(string, ...any), where string) *TokenBucket {
	ok := true
	if !(rl.RequestsPerSecond > 0 && rl.RequestsPerSecond <= 1e9) {
		bad("%s.requestsPerSecond %v is not in (0, 1e9]", where, rl.RequestsPerSecond)
		ok = false
	}
	if rl.Burst < 0 || rl.Burst > 1e9 {
		bad("%s.burst %d is not in 0..1e9", where, rl.Burst)
		ok = false
	}
	if !ok {
		return nil
	}
	burst := rl.Burst
	if burst == 0 {
		burst = max(1, int(math.Ceil(rl.RequestsPerSecond)))
	}
	return NewTokenBucket(rl.RequestsPerSecond, burst)
}

// ParseGRPCCode reads a gRPC status code by name (UNAVAILABLE, any case)
// or number (0-16).
func ParseGRPCCode(s string) (int, bool) {
	if c := slices.Index(grpcCodeNames[:], strings.ToUpper(s)); c >= 0 {
		return c, true
	}
	if n, err := strconv.Atoi(s); err == nil && n >= 0 && n < len(grpcCodeNames) {
		return n, true
	}
	return 0, false
}

// HTTPStatusOfGRPC is the HTTP status that stands for a gRPC code, as
// gRPC-HTTP gateways map them; 500 for codes with no closer one.
func HTTPStatusOfGRPC(code int) int {
	switch code {
	case 0:
		return 200
	case 1:
		return 499
	case 3, 9, 11:
		return 400
	case 4:
		return 504
	case 5:
		return 404
	case 6, 10:
		return 409
	case 7:
		return 403
	case 8:
		return 429
	case 12:
		return 501
	case 14:
		return 503
	case 16:
		return 401
	}
	return 500
}
