// Package gwroute translates Gateway API HTTPRoutes and GRPCRoutes whose
// parentRefs name a Service (the GAMMA pattern) into weir's L7 route model,
// and says what their status.parents entries must be. It is pure: the
// caller (agent/kube) reads the objects from its caches, attaches the
// result to its route.Services and writes the status.
package gwroute

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/route"
)

// ControllerName is how weir signs the route status.parents entries it
// writes; entries of other controllers are left as they are.
const ControllerName gwv1.GatewayController = "weir.dev/mesh"

// Route is one HTTPRoute or GRPCRoute, translated (FromHTTPRoute,
// FromGRPCRoute) and waiting to be resolved against the cluster's Services
// (Translate). Build one afresh for each Translate: it is modified, and
// its rules end up in a route.Config, which must stay immutable.
type Route struct {
	kind       string // "HTTPRoute" or "GRPCRoute"
	namespace  string
	name       string
	generation int64
	created    metav1.Time
	parents    []gwv1.ParentReference
	// rules are translated up front; unsupported is the first feature
	// weir refused (Accepted=False, UnsupportedValue) or "".
	rules       []route.HTTPRouteRule
	unsupported string
	// backends are the rules' backendRefs in rule order, matching the
	// route.BackendRef entries of rules, for resolution.
	backends []*route.BackendRef
	refs     []gwv1.BackendObjectReference
	// mirrorRefs are each rule's RequestMirror backendRefs, in filter
	// order; finish merges them into backends and refs.
	mirrorRefs [][]gwv1.BackendObjectReference
}

// Key names a route in Translation.Status: "HTTPRoute/namespace/name".
func (r *Route) Key() string { return Key(r.kind, r.namespace, r.name) }

// Key names the route of kind ("HTTPRoute" or "GRPCRoute") in
// Translation.Status.
func Key(kind, namespace, name string) string { return kind + "/" + namespace + "/" + name }

// ParentStatus is weir's entry for one parentRef of one route: the
// conditions Accepted and ResolvedRefs.
type ParentStatus struct {
	Ref        gwv1.ParentReference
	Conditions []metav1.Condition
}

// Translation is the result of translating every route: the HTTP routes
// to attach to each route.Service (by its name), and the status entries
// of each route (by Route.key).
type Translation struct {
	// Attach holds the routes of each route.Service, by its name.
	Attach map[string][]route.HTTPRoute
	// Status holds weir's entries for each route, by Key.
	Status map[string][]ParentStatus
}

// ServiceLookup finds a Service in the cache.
type ServiceLookup func(namespace, name string) *corev1.Service

// Translate resolves and attaches routes (sorted by creation time,
// then namespace/name, the order Gateway API breaks ties in) to the
// route.Services named in known. A route is attached only to Service
// parents in its own namespace ("producer" routes); refused routes and
// parents get their reason in the status and change no traffic.
func Translate(routes []*Route, svcOf ServiceLookup, known map[string]route.Protocol) Translation {
	out := Translation{Attach: map[string][]route.HTTPRoute{}, Status: map[string][]ParentStatus{}}
	slices.SortFunc(routes, func(a, b *Route) int {
		if !a.created.Equal(&b.created) {
			if a.created.Before(&b.created) {
				return -1
			}
			return 1
		}
		return strings.Compare(a.namespace+"/"+a.name, b.namespace+"/"+b.name)
	})
	for _, r := range routes {
		resolved := resolveBackends(r, svcOf, known)
		var entries []ParentStatus
		for _, p := range r.parents {
			if !isServiceParent(p) {
				continue // a Gateway's, or another mesh's: not ours to answer
			}
			accepted := acceptParent(r, p, svcOf, known)
			entries = append(entries, ParentStatus{Ref: p, Conditions: []metav1.Condition{accepted.condition(r.generation), resolved.condition(r.generation)}})
			if !accepted.ok {
				continue
			}
			rt := route.HTTPRoute{Name: strings.ToLower(r.kind) + "/" + r.namespace + "/" + r.name, Rules: r.rules}
			for _, svc := range accepted.services {
				out.Attach[svc] = append(out.Attach[svc], rt)
			}
		}
		if entries != nil {
			out.Status[r.Key()] = entries
		}
	}
	return out
}

// verdict is one condition's outcome.
type verdict struct {
	ok       bool
	typ      gwv1.RouteConditionType
	reason   gwv1.RouteConditionReason
	message  string
	services []string // Accepted: the route.Service names to attach to
}

func (v verdict) condition(gen int64) metav1.Condition {
	st := metav1.ConditionFalse
	if v.ok {
		st = metav1.ConditionTrue
	}
	return metav1.Condition{Type: string(v.typ), Status: st, Reason: string(v.reason), Message: v.message, ObservedGeneration: gen}
}

func isServiceParent(p gwv1.ParentReference) bool {
	return p.Group != nil && *p.Group == "" && p.Kind != nil && *p.Kind == "Service"
}

// acceptParent decides the Accepted condition of one Service parent and
// the service ports the route attaches to.
func acceptParent(r *Route, p gwv1.ParentReference, svcOf ServiceLookup, known map[string]route.Protocol) verdict {
	no := func(reason gwv1.RouteConditionReason, format string, args ...any) verdict {
		return verdict{typ: gwv1.RouteConditionAccepted, reason: reason, message: fmt.Sprintf(format, args...)}
	}
	ns := r.namespace
	if p.Namespace != nil && *p.Namespace != "" {
		ns = string(*p.Namespace)
	}
	if ns != r.namespace {
		return no(gwv1.RouteReasonUnsupportedValue, "parent Service %s/%s is in another namespace: weir supports only routes in their Service's own namespace (producer routes), not consumer routes; move the route to namespace %s", ns, p.Name, ns)
	}
	if r.unsupported != "" {
		return no(gwv1.RouteReasonUnsupportedValue, "%s", r.unsupported)
	}
	svc := svcOf(ns, string(p.Name))
	if svc == nil {
		return no(gwv1.RouteReasonNoMatchingParent, "Service %s/%s does not exist", ns, p.Name)
	}
	var services, skipped []string
	for _, sp := range svc.Spec.Ports {
		if p.Port != nil && int32(*p.Port) != sp.Port {
			continue
		}
		if p.SectionName != nil && string(*p.SectionName) != sp.Name {
			continue
		}
		name := ns + "/" + svc.Name + ":" + strconv.Itoa(int(sp.Port))
		proto, ok := known[name]
		switch {
		case !ok:
			skipped = append(skipped, fmt.Sprintf("port %d is not balanced by weir (headless, ExternalName or not TCP)", sp.Port))
		case proto == route.TCP || proto == route.TLS || proto == route.Redis:
			skipped = append(skipped, fmt.Sprintf("port %d declares protocol %s", sp.Port, proto))
		default:
			services = append(services, name)
		}
	}
	if len(services) == 0 {
		msg := fmt.Sprintf("Service %s/%s has no port", ns, svc.Name)
		if p.Port != nil {
			msg += fmt.Sprintf(" %d", *p.Port)
		}
		if p.SectionName != nil {
			msg += fmt.Sprintf(" named %q", *p.SectionName)
		}
		msg += " that carries HTTP"
		if len(skipped) > 0 {
			msg += ": " + strings.Join(skipped, "; ")
		}
		return no(gwv1.RouteReasonNoMatchingParent, "%s", msg)
	}
	return verdict{ok: true, typ: gwv1.RouteConditionAccepted, reason: gwv1.RouteReasonAccepted,
		message: "attached to " + strings.Join(services, ", "), services: services}
}

// resolveBackends resolves every backendRef of r in place (setting
// route.BackendRef.Service or Unresolved) and returns the ResolvedRefs
// condition, naming each backend that did not resolve.
func resolveBackends(r *Route, svcOf ServiceLookup, known map[string]route.Protocol) verdict {
	var reason gwv1.RouteConditionReason
	var problems []string
	for i, ref := range r.refs {
		b := r.backends[i]
		why, msg := resolveBackend(r.namespace, ref, svcOf, known)
		if why == "" {
			b.Service, b.Unresolved = msg, ""
			continue
		}
		b.Service, b.Unresolved = "", string(why)
		if reason == "" {
			reason = why
		}
		problems = append(problems, msg)
	}
	if reason != "" {
		return verdict{typ: gwv1.RouteConditionResolvedRefs, reason: reason,
			message: strings.Join(problems, "; ") + "; requests sent to these backends are answered 500"}
	}
	return verdict{ok: true, typ: gwv1.RouteConditionResolvedRefs, reason: gwv1.RouteReasonResolvedRefs, message: "all backendRefs resolved"}
}

// resolveBackend returns ("", service name) or (reason, message).
func resolveBackend(ns string, ref gwv1.BackendObjectReference, svcOf ServiceLookup, known map[string]route.Protocol) (gwv1.RouteConditionReason, string) {
	group, kind := "", "Service"
	if ref.Group != nil {
		group = string(*ref.Group)
	}
	if ref.Kind != nil {
		kind = string(*ref.Kind)
	}
	if group != "" || kind != "Service" {
		return gwv1.RouteReasonInvalidKind, fmt.Sprintf("backendRef %s is a %s of group %q: weir routes to core Services only", ref.Name, kind, group)
	}
	bns := ns
	if ref.Namespace != nil && *ref.Namespace != "" {
		bns = string(*ref.Namespace)
	}
	if bns != ns {
		return gwv1.RouteReasonRefNotPermitted, fmt.Sprintf("backendRef Service %s/%s is in another namespace; weir does not read ReferenceGrants, so only backends in the route's namespace are permitted", bns, ref.Name)
	}
	if ref.Port == nil {
		return gwv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s/%s names no port (required for a Service)", bns, ref.Name)
	}
	if svcOf(bns, string(ref.Name)) == nil {
		return gwv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s/%s does not exist", bns, ref.Name)
	}
	name := bns + "/" + string(ref.Name) + ":" + strconv.Itoa(int(*ref.Port))
	if _, ok := known[name]; !ok {
		return gwv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s/%s has no TCP port %d with a cluster IP", bns, ref.Name, *ref.Port)
	}
	return "", name
}

// FromHTTPRoute translates an HTTPRoute's rules into the route model.
func FromHTTPRoute(hr *gwv1.HTTPRoute) *Route {
	r := newRoute("HTTPRoute", hr.ObjectMeta, hr.Spec.ParentRefs)
	refuse := r.refuse
	for ri, rule := range hr.Spec.Rules {
		where := fmt.Sprintf("spec.rules[%d]", ri)
		out := route.HTTPRouteRule{}
		for _, m := range rule.Matches {
			out.Matches = append(out.Matches, httpMatch(m))
		}
		var mirrors []gwv1.BackendObjectReference
		for fi, f := range rule.Filters {
			mf, err := httpFilter(f)
			if err != "" {
				refuse("%s.filters[%d]: %s", where, fi, err)
				continue
			}
			if mf.RequestMirror != nil {
				mirrors = append(mirrors, f.RequestMirror.BackendRef)
			}
			out.Filters = append(out.Filters, mf)
		}
		r.mirrorRefs = append(r.mirrorRefs, mirrors)
		if t := rule.Timeouts; t != nil {
			out.Timeouts = &route.HTTPRouteTimeouts{}
			var err error
			if out.Timeouts.Request, err = gwDuration(t.Request); err != nil {
				refuse("%s.timeouts.request: %v", where, err)
			}
			if out.Timeouts.BackendRequest, err = gwDuration(t.BackendRequest); err != nil {
				refuse("%s.timeouts.backendRequest: %v", where, err)
			}
		}
		if rt := rule.Retry; rt != nil {
			out.Retry = &route.HTTPRouteRetry{Attempts: rt.Attempts}
			for _, c := range rt.Codes {
				out.Retry.Codes = append(out.Retry.Codes, int(c))
			}
			var err error
			if rt.Backoff != nil {
				if out.Retry.Backoff, err = gwDuration(rt.Backoff); err != nil {
					refuse("%s.retry.backoff: %v", where, err)
				}
			}
		}
		refs := make([]backendRef, len(rule.BackendRefs))
		for bi, b := range rule.BackendRefs {
			refs[bi] = backendRef{b.BackendRef, len(b.Filters) > 0}
		}
		r.addRule(out, where, rule.SessionPersistence != nil, refs, refuse)
	}
	r.finish()
	return r
}

// FromGRPCRoute translates a GRPCRoute: a method match is a path match on
// /service/method, as gRPC maps calls to HTTP/2 requests.
func FromGRPCRoute(gr *gwv1.GRPCRoute) *Route {
	r := newRoute("GRPCRoute", gr.ObjectMeta, gr.Spec.ParentRefs)
	refuse := r.refuse
	for ri, rule := range gr.Spec.Rules {
		where := fmt.Sprintf("spec.rules[%d]", ri)
		out := route.HTTPRouteRule{}
		for _, m := range rule.Matches {
			out.Matches = append(out.Matches, grpcMatch(m))
		}
		var mirrors []gwv1.BackendObjectReference
		for fi, f := range rule.Filters {
			var mf route.HTTPRouteFilter
			var err string
			switch f.Type {
			case gwv1.GRPCRouteFilterRequestMirror:
				mf, err = httpFilter(gwv1.HTTPRouteFilter{Type: gwv1.HTTPRouteFilterRequestMirror, RequestMirror: f.RequestMirror})
				if err == "" {
					mirrors = append(mirrors, f.RequestMirror.BackendRef)
				}
			case gwv1.GRPCRouteFilterRequestHeaderModifier:
				mf, err = httpFilter(gwv1.HTTPRouteFilter{Type: gwv1.HTTPRouteFilterRequestHeaderModifier, RequestHeaderModifier: f.RequestHeaderModifier})
			case gwv1.GRPCRouteFilterResponseHeaderModifier:
				mf, err = httpFilter(gwv1.HTTPRouteFilter{Type: gwv1.HTTPRouteFilterResponseHeaderModifier, ResponseHeaderModifier: f.ResponseHeaderModifier})
			default:
				err = unsupportedFilter(string(f.Type))
			}
			if err != "" {
				refuse("%s.filters[%d]: %s", where, fi, err)
				continue
			}
			out.Filters = append(out.Filters, mf)
		}
		r.mirrorRefs = append(r.mirrorRefs, mirrors)
		refs := make([]backendRef, len(rule.BackendRefs))
		for bi, b := range rule.BackendRefs {
			refs[bi] = backendRef{b.BackendRef, len(b.Filters) > 0}
		}
		r.addRule(out, where, rule.SessionPersistence != nil, refs, refuse)
	}
	r.finish()
	return r
}

func newRoute(kind string, om metav1.ObjectMeta, parents []gwv1.ParentReference) *Route {
	return &Route{kind: kind, namespace: om.Namespace, name: om.Name, generation: om.Generation,
		created: om.CreationTimestamp, parents: parents}
}

// refuse records the first thing weir cannot do with the route.
func (r *Route) refuse(format string, args ...any) {
	if r.unsupported == "" {
		r.unsupported = fmt.Sprintf(format, args...)
	}
}

// backendRef is an HTTP or gRPC backendRef, and whether it carries
// per-backend filters (which weir refuses).
type backendRef struct {
	gwv1.BackendRef
	filtered bool
}

// addRule appends a translated rule with its backends (weights set,
// references kept for resolution), refusing what weir cannot do.
func (r *Route) addRule(out route.HTTPRouteRule, where string, sessionPersistence bool, refs []backendRef, refuse func(string, ...any)) {
	if sessionPersistence {
		refuse("%s.sessionPersistence is not supported by weir; remove it", where)
	}
	out.Backends = make([]route.BackendRef, len(refs))
	for bi, b := range refs {
		if b.filtered {
			refuse("%s.backendRefs[%d].filters: per-backend filters are not supported by weir; move them to the rule", where, bi)
		}
		out.Backends[bi].Weight = gwWeight(b.Weight)
		r.refs = append(r.refs, b.BackendObjectReference)
	}
	r.rules = append(r.rules, out)
}

// finish points backends at the rules' BackendRef entries, each rule's
// backendRefs then its mirrors' (refs reordered to match), and checks
// the result.
func (r *Route) finish() {
	refs := make([]gwv1.BackendObjectReference, 0, len(r.refs))
	next := 0
	for ri := range r.rules {
		rule := &r.rules[ri]
		for bi := range rule.Backends {
			r.backends = append(r.backends, &rule.Backends[bi])
			refs = append(refs, r.refs[next])
			next++
		}
		mi := 0
		for fi := range rule.Filters {
			if m := rule.Filters[fi].RequestMirror; m != nil {
				r.backends = append(r.backends, &m.BackendRef)
				refs = append(refs, r.mirrorRefs[ri][mi])
				mi++
			}
		}
	}
	r.refs = refs
	r.check()
}

// check runs the route model's own validation (header names weir may not
// touch, regular expressions RE2 cannot compile, redirect codes…) on the
// translated rules, so a route the engine would refuse is refused here,
// alone, with the engine's words.
func (r *Route) check() {
	if r.unsupported != "" {
		return
	}
	if err := route.CheckHTTPRoutes([]route.HTTPRoute{{Rules: r.rules}}); err != nil {
		r.unsupported = "spec" + strings.TrimPrefix(strings.ReplaceAll(err.Error(), "\n", "; "), ".routes[0]")
	}
}

func gwWeight(w *int32) *uint32 {
	if w == nil {
		return nil
	}
	v := uint32(max(*w, 0))
	return &v
}

// gwDuration reads a Gateway API duration ("1h2m3s4ms"; "0s" is none).
func gwDuration(d *gwv1.Duration) (cluster.Duration, error) {
	if d == nil {
		return 0, nil
	}
	v, err := time.ParseDuration(string(*d))
	if err != nil || v < 0 {
		return 0, fmt.Errorf("%q is not a duration", *d)
	}
	return cluster.Duration(v), nil
}

func httpMatch(m gwv1.HTTPRouteMatch) route.HTTPRouteMatch {
	var out route.HTTPRouteMatch
	if p := m.Path; p != nil {
		pm := &route.PathMatch{Type: route.PathPrefix, Value: "/"}
		if p.Type != nil {
			pm.Type = string(*p.Type)
		}
		if p.Value != nil {
			pm.Value = *p.Value
		}
		out.Path = pm
	}
	if m.Method != nil {
		out.Method = string(*m.Method)
	}
	for _, h := range m.Headers {
		hm := route.HeaderMatch{Name: string(h.Name), Value: h.Value}
		if h.Type != nil {
			hm.Type = string(*h.Type)
		}
		out.Headers = append(out.Headers, hm)
	}
	for _, q := range m.QueryParams {
		qm := route.QueryParamMatch{Name: string(q.Name), Value: q.Value}
		if q.Type != nil {
			qm.Type = string(*q.Type)
		}
		out.QueryParams = append(out.QueryParams, qm)
	}
	return out
}

// grpcMatch maps a gRPC method match to a path match: both parts exact is
// the exact path /service/method, a service alone its path prefix, and
// anything else a regular expression over the two path segments.
func grpcMatch(m gwv1.GRPCRouteMatch) route.HTTPRouteMatch {
	var out route.HTTPRouteMatch
	for _, h := range m.Headers {
		hm := route.HeaderMatch{Name: string(h.Name), Value: h.Value}
		if h.Type != nil {
			hm.Type = string(*h.Type)
		}
		out.Headers = append(out.Headers, hm)
	}
	mm := m.Method
	if mm == nil || (mm.Service == nil && mm.Method == nil) {
		return out
	}
	svc, method := "", ""
	if mm.Service != nil {
		svc = *mm.Service
	}
	if mm.Method != nil {
		method = *mm.Method
	}
	regex := mm.Type != nil && *mm.Type == gwv1.GRPCMethodMatchRegularExpression
	switch {
	case !regex && svc != "" && method != "":
		out.Path = &route.PathMatch{Type: route.PathExact, Value: "/" + svc + "/" + method}
	case !regex && method == "":
		out.Path = &route.PathMatch{Type: route.PathPrefix, Value: "/" + svc}
	default:
		if !regex {
			svc, method = regexp.QuoteMeta(svc), regexp.QuoteMeta(method)
		}
		if svc == "" {
			svc = "[^/]+"
		}
		if method == "" {
			method = "[^/]+"
		}
		out.Path = &route.PathMatch{Type: route.PathRegex, Value: "/(?:" + svc + ")/(?:" + method + ")"}
	}
	return out
}

// httpFilter translates one filter, or says why weir refuses it.
func httpFilter(f gwv1.HTTPRouteFilter) (route.HTTPRouteFilter, string) {
	out := route.HTTPRouteFilter{Type: string(f.Type)}
	switch f.Type {
	case gwv1.HTTPRouteFilterRequestHeaderModifier:
		out.RequestHeaderModifier = headerModifier(f.RequestHeaderModifier)
	case gwv1.HTTPRouteFilterResponseHeaderModifier:
		out.ResponseHeaderModifier = headerModifier(f.ResponseHeaderModifier)
	case gwv1.HTTPRouteFilterURLRewrite:
		if f.URLRewrite == nil {
			return out, "urlRewrite is missing"
		}
		rw := &route.URLRewrite{Path: pathModifier(f.URLRewrite.Path)}
		if f.URLRewrite.Hostname != nil {
			rw.Hostname = string(*f.URLRewrite.Hostname)
		}
		out.URLRewrite = rw
	case gwv1.HTTPRouteFilterRequestMirror:
		m := f.RequestMirror
		if m == nil {
			return out, "requestMirror is missing"
		}
		out.RequestMirror = &route.RequestMirror{Percent: m.Percent}
		if fr := m.Fraction; fr != nil {
			out.RequestMirror.Fraction = &route.Fraction{Numerator: fr.Numerator, Denominator: fr.Denominator}
		}
	case gwv1.HTTPRouteFilterRequestRedirect:
		rd := f.RequestRedirect
		if rd == nil {
			return out, "requestRedirect is missing"
		}
		mr := &route.Redirect{Path: pathModifier(rd.Path)}
		if rd.Scheme != nil {
			mr.Scheme = *rd.Scheme
		}
		if rd.Hostname != nil {
			mr.Hostname = string(*rd.Hostname)
		}
		if rd.Port != nil {
			mr.Port = uint16(*rd.Port)
		}
		if rd.StatusCode != nil {
			mr.StatusCode = *rd.StatusCode
		}
		out.RequestRedirect = mr
	default:
		return out, unsupportedFilter(string(f.Type))
	}
	return out, ""
}

func unsupportedFilter(typ string) string {
	return fmt.Sprintf("filter %s is not supported by weir (supported: RequestHeaderModifier, ResponseHeaderModifier, URLRewrite, RequestRedirect, RequestMirror)", typ)
}

func headerModifier(h *gwv1.HTTPHeaderFilter) *route.HeaderModifier {
	if h == nil {
		return nil
	}
	out := &route.HeaderModifier{Remove: slices.Clone(h.Remove)}
	for _, s := range h.Set {
		out.Set = append(out.Set, route.Header{Name: string(s.Name), Value: s.Value})
	}
	for _, a := range h.Add {
		out.Add = append(out.Add, route.Header{Name: string(a.Name), Value: a.Value})
	}
	return out
}

func pathModifier(p *gwv1.HTTPPathModifier) *route.PathModifier {
	if p == nil {
		return nil
	}
	out := &route.PathModifier{Type: string(p.Type)}
	if p.ReplaceFullPath != nil {
		out.ReplaceFullPath = *p.ReplaceFullPath
	}
	if p.ReplacePrefixMatch != nil {
		out.ReplacePrefixMatch = *p.ReplacePrefixMatch
	}
	return out
}
