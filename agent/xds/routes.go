package xds

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"

	"github.com/weir-mesh/weir/proxy/route"
)

// routeEntry is an RDS resource (or an inline route_config) as weir's
// HTTP routes. Backend service names are xDS cluster names here; compose
// translates them and drops those naming no known cluster.
type routeEntry struct {
	routes []route.HTTPRoute
}

// convertRouteConfig maps virtual hosts to HTTP routes (domains become
// hostnames) and each route to a rule.
func convertRouteConfig(rc *routev3.RouteConfiguration) (*routeEntry, notes) {
	var n notes
	n.ignored(rc, "", "name", "virtual_hosts", "request_headers_to_add", "request_headers_to_remove",
		"response_headers_to_add", "response_headers_to_remove",
		// Envoy-side validation knobs with no effect on routing.
		"validate_clusters", "max_direct_response_body_size_bytes", "ignore_port_in_host_matching")
	top := headerMods(&n, "", rc.GetRequestHeadersToAdd(), rc.GetRequestHeadersToRemove(), rc.GetResponseHeadersToAdd(), rc.GetResponseHeadersToRemove())
	e := &routeEntry{}
	var catchAlls []route.HTTPRoute
	for vi, vh := range rc.GetVirtualHosts() {
		vp := fmt.Sprintf("virtual_hosts[%d].", vi)
		n.ignored(vh, vp, "name", "domains", "routes", "request_headers_to_add", "request_headers_to_remove",
			"response_headers_to_add", "response_headers_to_remove", "retry_policy")
		vhr := vhRetry{policy: vh.GetRetryPolicy(), path: vp + "retry_policy."}
		hr := route.HTTPRoute{Name: vh.GetName()}
		catchAll := false
		for di, d := range vh.GetDomains() {
			h, ok := hostnameOf(d)
			switch {
			case d == "*":
				catchAll = true
			case !ok:
				n.warn("%sdomains[%d] %q ignored: only exact names and *.suffix wildcards are supported", vp, di, d)
			case !containsStr(hr.Hostnames, h):
				hr.Hostnames = append(hr.Hostnames, h)
			}
		}
		if catchAll {
			hr.Hostnames = nil
		} else if len(hr.Hostnames) == 0 {
			n.warn("%s ignored: no domain weir supports", strings.TrimSuffix(vp, "."))
			continue
		}
		vhMods := headerMods(&n, vp, vh.GetRequestHeadersToAdd(), vh.GetRequestHeadersToRemove(), vh.GetResponseHeadersToAdd(), vh.GetResponseHeadersToRemove())
		var prevKey *precedenceKey
		reordered := false
		for ri, r := range vh.GetRoutes() {
			rule, key, ok := convertRoute(&n, fmt.Sprintf("%sroutes[%d].", vp, ri), r, vhr, vhMods, top)
			if !ok {
				continue
			}
			if prevKey != nil && key.before(*prevKey) {
				reordered = true
			}
			prevKey = &key
			hr.Rules = append(hr.Rules, rule)
		}
		if reordered {
			n.warn("%sroutes: weir orders matches by Gateway API precedence (exact path, regular expression, longest prefix, method, headers, query), not first match as listed", vp)
		}
		if catchAll {
			catchAlls = append(catchAlls, hr)
			continue
		}
		e.routes = append(e.routes, hr)
	}
	if len(catchAlls) > 0 && len(e.routes) > 0 {
		n.warn("virtual host %q matches every domain: its routes compete with other virtual hosts' by path precedence (ties go to the named hosts)", catchAlls[0].Name)
	}
	// Catch-all virtual hosts last, so ties go to the named hosts.
	e.routes = append(e.routes, catchAlls...)
	if len(n.errs) == 0 {
		if err := compiles(e.routes); err != nil {
			n.fail("%v", err)
		}
	}
	return e, n
}

// compiles checks that routes build in weir's router, so a configuration
// that is ACKed never fails the snapshot of the whole response later (an
// exact path without a leading slash, a header value with a line break);
// such a configuration is NACKed naming the route instead.
func compiles(routes []route.HTTPRoute) error {
	const front = "\x00front"
	svcs := []route.Service{{Name: front, Addresses: []netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), 1)}, HTTPRoutes: routes}}
	seen := map[string]bool{front: true}
	for _, r := range routes {
		for _, rule := range r.Rules {
			for _, b := range rule.Backends {
				if !seen[b.Service] {
					seen[b.Service] = true
					svcs = append(svcs, route.Service{Name: b.Service})
				}
			}
		}
	}
	if _, err := route.Build(route.Config{Services: svcs}, nil); err != nil {
		return fmt.Errorf("does not compile in weir's router: %s", strings.ReplaceAll(err.Error(), "services[0] ("+front+").", ""))
	}
	return nil
}

// hostnameOf turns an Envoy domain into a weir hostname: a port is
// dropped (weir matches the host without it); prefix wildcards and IPv6
// literals are not supported.
func hostnameOf(d string) (string, bool) {
	if strings.HasPrefix(d, "[") {
		return "", false
	}
	if i := strings.LastIndexByte(d, ':'); i >= 0 {
		d = d[:i]
	}
	d = strings.ToLower(d)
	if d == "" || strings.Contains(d[1:], "*") || (d[0] == '*' && !strings.HasPrefix(d, "*.")) || strings.ContainsAny(d, ":/ ") {
		return "", false
	}
	return d, true
}

func containsStr(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// precedenceKey approximates the order weir's HTTP router applies, to
// warn when the listed (first match) order differs.
type precedenceKey struct {
	rank, prefixLen, method, headers, query int
}

func (a precedenceKey) before(b precedenceKey) bool {
	for _, d := range [...]int{a.rank - b.rank, a.prefixLen - b.prefixLen, a.method - b.method, a.headers - b.headers, a.query - b.query} {
		if d != 0 {
			return d > 0
		}
	}
	return false
}

func convertRoute(n *notes, p string, r *routev3.Route, vhr vhRetry, mods ...[]route.HTTPRouteFilter) (route.HTTPRouteRule, precedenceKey, bool) {
	var rn notes
	n.ignored(r, p, "name", "match", "route", "redirect", "direct_response", "request_headers_to_add",
		"request_headers_to_remove", "response_headers_to_add", "response_headers_to_remove", "metadata", "decorator")
	var rule route.HTTPRouteRule
	m, key := convertMatch(&rn, p+"match.", r.GetMatch())
	rule.Matches = []route.HTTPRouteMatch{m}
	switch a := r.GetAction().(type) {
	case *routev3.Route_Route:
		convertRouteAction(&rn, p+"route.", a.Route, &rule)
		convertResilience(&rn, p+"route.", a.Route, vhr, &rule)
	case *routev3.Route_Redirect:
		convertRedirect(&rn, p+"redirect.", a.Redirect, &rule)
	case *routev3.Route_DirectResponse:
		rn.warn("%sdirect_response answered with 500 (weir has no direct responses)", p)
	default:
		rn.fail("%s needs route, redirect or direct_response", strings.TrimSuffix(p, "."))
	}
	own := headerMods(&rn, p, r.GetRequestHeadersToAdd(), r.GetRequestHeadersToRemove(), r.GetResponseHeadersToAdd(), r.GetResponseHeadersToRemove())
	rule.Filters = mergeMods(append([][]route.HTTPRouteFilter{own}, mods...), rule.Filters)
	n.warnings = append(n.warnings, rn.warnings...)
	n.errs = append(n.errs, rn.errs...)
	return rule, key, len(rn.errs) == 0
}

func convertMatch(n *notes, p string, m *routev3.RouteMatch) (route.HTTPRouteMatch, precedenceKey) {
	n.unsupported(m, p, "prefix", "path", "safe_regex", "path_separated_prefix", "case_sensitive", "headers", "query_parameters")
	var out route.HTTPRouteMatch
	var key precedenceKey
	fold := m.GetCaseSensitive() != nil && !m.GetCaseSensitive().GetValue()
	switch ps := m.GetPathSpecifier().(type) {
	case *routev3.RouteMatch_Prefix:
		switch {
		case ps.Prefix == "" || ps.Prefix == "/":
			out.Path = &route.PathMatch{Type: route.PathPrefix, Value: "/"}
			key.rank, key.prefixLen = 2, 1
		default:
			// Envoy's prefix is a string prefix (/api matches /apix); weir's
			// PathPrefix matches segments, so a regular expression keeps
			// the meaning exactly.
			out.Path = &route.PathMatch{Type: route.PathRegex, Value: foldRe(fold) + regexp.QuoteMeta(ps.Prefix) + ".*"}
			key.rank = 3
		}
	case *routev3.RouteMatch_PathSeparatedPrefix:
		out.Path = &route.PathMatch{Type: route.PathPrefix, Value: ps.PathSeparatedPrefix}
		key.rank, key.prefixLen = 2, len(ps.PathSeparatedPrefix)
		if fold {
			n.fail("%scase_sensitive false with path_separated_prefix is not supported", p)
		}
	case *routev3.RouteMatch_Path:
		if fold {
			out.Path = &route.PathMatch{Type: route.PathRegex, Value: "(?i)" + regexp.QuoteMeta(ps.Path)}
			key.rank = 3
		} else {
			out.Path = &route.PathMatch{Type: route.PathExact, Value: ps.Path}
			key.rank = 4
		}
	case *routev3.RouteMatch_SafeRegex:
		out.Path = &route.PathMatch{Type: route.PathRegex, Value: foldRe(fold) + ps.SafeRegex.GetRegex()}
		key.rank = 3
		checkRegex(n, p+"safe_regex", out.Path.Value)
	default:
		n.fail("%s needs prefix, path, safe_regex or path_separated_prefix", strings.TrimSuffix(p, "."))
	}
	for i, h := range m.GetHeaders() {
		hp := fmt.Sprintf("%sheaders[%d]", p, i)
		if h.GetName() == ":method" {
			if sm := h.GetStringMatch(); sm != nil && sm.GetExact() != "" && !sm.GetIgnoreCase() && !h.GetInvertMatch() {
				out.Method = sm.GetExact()
				key.method = 1
				continue
			}
			if v := h.GetExactMatch(); v != "" && !h.GetInvertMatch() {
				out.Method = v
				key.method = 1
				continue
			}
		}
		if strings.HasPrefix(h.GetName(), ":") {
			n.fail("%s: pseudo-header %s is not supported (only an exact :method)", hp, h.GetName())
			continue
		}
		if h.GetInvertMatch() || h.GetTreatMissingHeaderAsEmpty() {
			n.fail("%s: invert_match and treat_missing_header_as_empty are not supported", hp)
			continue
		}
		var typ, val string
		var ok bool
		switch s := h.GetHeaderMatchSpecifier().(type) {
		case *routev3.HeaderMatcher_StringMatch:
			typ, val, ok = stringMatch(s.StringMatch)
		case *routev3.HeaderMatcher_ExactMatch:
			typ, val, ok = route.MatchExact, s.ExactMatch, true
		case *routev3.HeaderMatcher_SafeRegexMatch:
			typ, val, ok = route.MatchRegex, s.SafeRegexMatch.GetRegex(), true
		case *routev3.HeaderMatcher_PrefixMatch:
			typ, val, ok = route.MatchRegex, regexp.QuoteMeta(s.PrefixMatch)+".*", true
		case *routev3.HeaderMatcher_SuffixMatch:
			typ, val, ok = route.MatchRegex, ".*"+regexp.QuoteMeta(s.SuffixMatch), true
		case *routev3.HeaderMatcher_ContainsMatch:
			typ, val, ok = route.MatchRegex, ".*"+regexp.QuoteMeta(s.ContainsMatch)+".*", true
		case *routev3.HeaderMatcher_PresentMatch:
			typ, val, ok = route.MatchRegex, "(?s).*", s.PresentMatch
		}
		if !ok {
			n.fail("%s: only string, exact, regex, prefix, suffix, contains and present (true) matches are supported", hp)
			continue
		}
		if typ == route.MatchRegex {
			checkRegex(n, hp, val)
		}
		out.Headers = append(out.Headers, route.HeaderMatch{Type: typ, Name: h.GetName(), Value: val})
		key.headers++
	}
	for i, q := range m.GetQueryParameters() {
		qp := fmt.Sprintf("%squery_parameters[%d]", p, i)
		var typ, val string
		var ok bool
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routev3.QueryParameterMatcher_StringMatch:
			typ, val, ok = stringMatch(s.StringMatch)
		case *routev3.QueryParameterMatcher_PresentMatch:
			typ, val, ok = route.MatchRegex, "(?s).*", s.PresentMatch
		}
		if !ok {
			n.fail("%s: only string and present (true) matches are supported", qp)
			continue
		}
		out.QueryParams = append(out.QueryParams, route.QueryParamMatch{Type: typ, Name: q.GetName(), Value: val})
		key.query++
	}
	return out, key
}

func foldRe(fold bool) string {
	if fold {
		return "(?i)"
	}
	return ""
}

func checkRegex(n *notes, p, re string) {
	if _, err := regexp.Compile(re); err != nil {
		n.fail("%s: %v", p, err)
	}
}

// stringMatch maps an Envoy StringMatcher onto an exact or regular
// expression match.
func stringMatch(s *matcherv3.StringMatcher) (typ, value string, ok bool) {
	fold := foldRe(s.GetIgnoreCase())
	switch m := s.GetMatchPattern().(type) {
	case *matcherv3.StringMatcher_Exact:
		if fold == "" {
			return route.MatchExact, m.Exact, true
		}
		return route.MatchRegex, fold + regexp.QuoteMeta(m.Exact), true
	case *matcherv3.StringMatcher_Prefix:
		return route.MatchRegex, fold + regexp.QuoteMeta(m.Prefix) + "(?s).*", true
	case *matcherv3.StringMatcher_Suffix:
		return route.MatchRegex, fold + "(?s).*" + regexp.QuoteMeta(m.Suffix), true
	case *matcherv3.StringMatcher_Contains:
		return route.MatchRegex, fold + "(?s).*" + regexp.QuoteMeta(m.Contains) + ".*", true
	case *matcherv3.StringMatcher_SafeRegex:
		return route.MatchRegex, fold + m.SafeRegex.GetRegex(), true
	}
	return "", "", false
}

func convertRouteAction(n *notes, p string, a *routev3.RouteAction, rule *route.HTTPRouteRule) {
	n.ignored(a, p, "cluster", "weighted_clusters", "prefix_rewrite", "regex_rewrite", "host_rewrite_literal",
		"cluster_header", "cluster_specifier_plugin", "inline_cluster_specifier_plugin",
		// convertResilience:
		"timeout", "idle_timeout", "max_stream_duration", "retry_policy")
	switch cs := a.GetClusterSpecifier().(type) {
	case *routev3.RouteAction_Cluster:
		rule.Backends = []route.BackendRef{{Service: cs.Cluster}}
	case *routev3.RouteAction_WeightedClusters:
		n.ignored(cs.WeightedClusters, p+"weighted_clusters.", "clusters", "total_weight")
		for i, c := range cs.WeightedClusters.GetClusters() {
			n.ignored(c, fmt.Sprintf("%sweighted_clusters.clusters[%d].", p, i), "name", "weight")
			if c.GetName() == "" {
				n.fail("%sweighted_clusters.clusters[%d]: only named clusters are supported", p, i)
				continue
			}
			w := uint32(0)
			if c.GetWeight() != nil {
				w = c.GetWeight().GetValue()
			}
			rule.Backends = append(rule.Backends, route.BackendRef{Service: c.GetName(), Weight: &w})
		}
	default:
		n.fail("%s: only cluster and weighted_clusters are supported", strings.TrimSuffix(p, "."))
	}
	var rw route.URLRewrite
	if h := a.GetHostRewriteLiteral(); h != "" {
		rw.Hostname = h
	}
	if pr := a.GetPrefixRewrite(); pr != "" {
		if !usesPrefix(rule) {
			n.fail("%sprefix_rewrite needs a prefix or path_separated_prefix match", p)
		} else {
			toSegmentPrefix(n, p, rule)
			rw.Path = &route.PathModifier{Type: route.ReplacePrefixMatch, ReplacePrefixMatch: pr}
		}
	}
	if rr := a.GetRegexRewrite(); rr != nil {
		if path, ok := fullRewrite(rr, rule); ok {
			rw.Path = &route.PathModifier{Type: route.ReplaceFullPath, ReplaceFullPath: path}
		} else {
			n.fail("%sregex_rewrite is supported only as a fixed substitution for an exact path match", p)
		}
	}
	if rw.Hostname != "" || rw.Path != nil {
		rule.Filters = append(rule.Filters, route.HTTPRouteFilter{Type: route.FilterURLRewrite, URLRewrite: &rw})
	}
}

// usesPrefix reports whether the rule's match came from an Envoy prefix.
func usesPrefix(rule *route.HTTPRouteRule) bool {
	pm := rule.Matches[0].Path
	return pm != nil && (pm.Type == route.PathPrefix || (pm.Type == route.PathRegex && strings.HasSuffix(pm.Value, ".*")))
}

// toSegmentPrefix turns a prefix match written as a regular expression
// back into a PathPrefix, which ReplacePrefixMatch needs; it then matches
// whole segments only, which is said in a warning.
func toSegmentPrefix(n *notes, p string, rule *route.HTTPRouteRule) {
	pm := rule.Matches[0].Path
	if pm.Type == route.PathPrefix {
		return
	}
	v := strings.TrimSuffix(pm.Value, ".*")
	if strings.HasPrefix(v, "(?i)") {
		n.fail("%sprefix_rewrite with case_sensitive false is not supported", p)
		return
	}
	prefix := unquoteMeta(v)
	rule.Matches[0].Path = &route.PathMatch{Type: route.PathPrefix, Value: prefix}
	if prefix != "/" {
		n.warn("%sprefix %q with prefix_rewrite matches whole path segments only (not %sx)", p, prefix, strings.TrimSuffix(prefix, "/"))
	}
}

func unquoteMeta(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// fullRewrite reports the new path when a regex_rewrite replaces an exact
// path with a fixed string.
func fullRewrite(rr *matcherv3.RegexMatchAndSubstitute, rule *route.HTTPRouteRule) (string, bool) {
	pm := rule.Matches[0].Path
	sub := rr.GetSubstitution()
	if pm == nil || pm.Type != route.PathExact || strings.Contains(sub, `\`) || !strings.HasPrefix(sub, "/") {
		return "", false
	}
	re, err := regexp.Compile(rr.GetPattern().GetRegex())
	if err != nil {
		return "", false
	}
	loc := re.FindStringIndex(pm.Value)
	if loc == nil || loc[0] != 0 || loc[1] != len(pm.Value) {
		return "", false
	}
	return sub, true
}

func convertRedirect(n *notes, p string, r *routev3.RedirectAction, rule *route.HTTPRouteRule) {
	n.ignored(r, p, "https_redirect", "scheme_redirect", "host_redirect", "port_redirect", "path_redirect", "prefix_rewrite", "response_code", "regex_rewrite")
	rd := &route.Redirect{Hostname: r.GetHostRedirect(), Scheme: r.GetSchemeRedirect()}
	if r.GetHttpsRedirect() {
		rd.Scheme = "https"
	}
	if pv := r.GetPortRedirect(); pv > 0 {
		if pv > 65535 {
			n.fail("%sport_redirect %d is not a port", p, pv)
		}
		rd.Port = uint16(pv)
	}
	if pr := r.GetPathRedirect(); pr != "" {
		rd.Path = &route.PathModifier{Type: route.ReplaceFullPath, ReplaceFullPath: pr}
	}
	if pr := r.GetPrefixRewrite(); pr != "" {
		if !usesPrefix(rule) {
			n.fail("%sprefix_rewrite needs a prefix or path_separated_prefix match", p)
		} else {
			toSegmentPrefix(n, p, rule)
			rd.Path = &route.PathModifier{Type: route.ReplacePrefixMatch, ReplacePrefixMatch: pr}
		}
	}
	if r.GetRegexRewrite() != nil {
		n.fail("%sregex_rewrite is not supported in redirects", p)
	}
	switch r.GetResponseCode() {
	case routev3.RedirectAction_MOVED_PERMANENTLY:
		rd.StatusCode = 301
	case routev3.RedirectAction_FOUND:
		rd.StatusCode = 302
	case routev3.RedirectAction_SEE_OTHER, routev3.RedirectAction_TEMPORARY_REDIRECT:
		rd.StatusCode = 302
		n.warn("%sresponse_code %s answered as 302", p, r.GetResponseCode())
	case routev3.RedirectAction_PERMANENT_REDIRECT:
		rd.StatusCode = 301
		n.warn("%sresponse_code %s answered as 301", p, r.GetResponseCode())
	}
	if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
		n.fail("%sscheme_redirect %q is not http or https", p, rd.Scheme)
	}
	rule.Filters = append(rule.Filters, route.HTTPRouteFilter{Type: route.FilterRequestRedirect, RequestRedirect: rd})
}

// headerMods maps header additions and removals at one level (route
// configuration, virtual host, route) onto modifier filters.
func headerMods(n *notes, p string, reqAdd []*corev3.HeaderValueOption, reqRemove []string, respAdd []*corev3.HeaderValueOption, respRemove []string) []route.HTTPRouteFilter {
	var out []route.HTTPRouteFilter
	if m := headerModifier(n, p+"request_headers_to_add", reqAdd, reqRemove); m != nil {
		out = append(out, route.HTTPRouteFilter{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: m})
	}
	if m := headerModifier(n, p+"response_headers_to_add", respAdd, respRemove); m != nil {
		out = append(out, route.HTTPRouteFilter{Type: route.FilterResponseHeaderModifier, ResponseHeaderModifier: m})
	}
	return out
}

func headerModifier(n *notes, p string, add []*corev3.HeaderValueOption, remove []string) *route.HeaderModifier {
	if len(add) == 0 && len(remove) == 0 {
		return nil
	}
	m := &route.HeaderModifier{Remove: remove}
	for i, o := range add {
		h := route.Header{Name: o.GetHeader().GetKey(), Value: o.GetHeader().GetValue()}
		if h.Value == "" && len(o.GetHeader().GetRawValue()) > 0 {
			h.Value = string(o.GetHeader().GetRawValue())
		}
		if strings.Contains(h.Value, "%") {
			n.warn("%s[%d] %s: the value is sent as written (Envoy's %%COMMAND%% substitutions are not supported)", p, i, h.Name)
		}
		set := false
		switch o.GetAppendAction() {
		case corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD:
			set = o.GetAppend() != nil && !o.GetAppend().GetValue()
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD:
			set = true
		case corev3.HeaderValueOption_ADD_IF_ABSENT:
			n.warn("%s[%d] %s: ADD_IF_ABSENT is applied as an append", p, i, h.Name)
		case corev3.HeaderValueOption_OVERWRITE_IF_EXISTS:
			set = true
			n.warn("%s[%d] %s: OVERWRITE_IF_EXISTS is applied as a set (adds the header when absent)", p, i, h.Name)
		}
		if set {
			m.Set = append(m.Set, h)
		} else {
			m.Add = append(m.Add, h)
		}
	}
	return m
}

// mergeMods folds header modifiers of several levels (most specific
// first) into at most one request and one response modifier, after the
// rule's other filters. A set at a more specific level wins.
func mergeMods(levels [][]route.HTTPRouteFilter, filters []route.HTTPRouteFilter) []route.HTTPRouteFilter {
	var req, resp *route.HeaderModifier
	merge := func(dst **route.HeaderModifier, m *route.HeaderModifier) {
		if m == nil {
			return
		}
		if *dst == nil {
			*dst = &route.HeaderModifier{}
		}
		d := *dst
		for _, s := range m.Set {
			if !hasHeader(d.Set, s.Name) {
				d.Set = append(d.Set, s)
			}
		}
		d.Add = append(d.Add, m.Add...)
		d.Remove = append(d.Remove, m.Remove...)
	}
	for _, lv := range levels {
		for _, f := range lv {
			merge(&req, f.RequestHeaderModifier)
			merge(&resp, f.ResponseHeaderModifier)
		}
	}
	if req != nil {
		filters = append(filters, route.HTTPRouteFilter{Type: route.FilterRequestHeaderModifier, RequestHeaderModifier: req})
	}
	if resp != nil {
		filters = append(filters, route.HTTPRouteFilter{Type: route.FilterResponseHeaderModifier, ResponseHeaderModifier: resp})
	}
	return filters
}

func hasHeader(hs []route.Header, name string) bool {
	for _, h := range hs {
		if strings.EqualFold(h.Name, name) {
			return true
		}
	}
	return false
}
