package route

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// TLSRoute sends TLS connections whose ClientHello names one of Hostnames
// (SNI) to Backends, bytes untouched: weir does not terminate TLS here.
// Shaped after Gateway API's TLSRoute.
type TLSRoute struct {
	Name string `json:"name,omitempty"`
	// Hostnames are exact names or "*.suffix"; empty matches every SNI,
	// and a ClientHello without SNI.
	Hostnames []string     `json:"hostnames,omitempty"`
	Backends  []BackendRef `json:"backendRefs,omitempty"`
}

// TLSRouter is a service's compiled TLS routes.
type TLSRouter struct {
	entries []tlsEntry // exact names first, then wildcards longest first, then catch-alls
}

type tlsEntry struct {
	host   string // "" matches all
	action *Action
	order  int
}

// Match returns the action for a ClientHello's SNI: an exact hostname
// first, then the longest wildcard, then a route with no hostnames. nil
// means no route: the connection goes to its original destination.
func (t *TLSRouter) Match(sni string) *Action {
	if t == nil {
		return nil
	}
	for i := range t.entries {
		e := &t.entries[i]
		switch {
		case e.host == "":
			return e.action
		case e.host[0] == '*':
			if len(sni) > len(e.host)-1 && strings.EqualFold(sni[len(sni)-(len(e.host)-1):], e.host[1:]) {
				return e.action
			}
		case strings.EqualFold(sni, e.host):
			return e.action
		}
	}
	return nil
}

func compileTLS(routes []TLSRoute, clusterOf func(string) *cluster.Cluster, where string) (*TLSRouter, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(where+format, args...)) }
	t := &TLSRouter{}
	for ri, rt := range routes {
		name := rt.Name
		if name == "" {
			name = fmt.Sprintf("tlsRoute%d", ri)
		}
		a := &Action{Route: name}
		a.addBackends(rt.Backends, clusterOf, fmt.Sprintf("%s.tlsRoutes[%d]", where, ri), func(format string, args ...any) {
			errs = append(errs, fmt.Errorf(format, args...))
		})
		if len(rt.Hostnames) == 0 {
			t.entries = append(t.entries, tlsEntry{action: a, order: len(t.entries)})
		}
		for hi, hn := range rt.Hostnames {
			hn = strings.ToLower(hn)
			if hn == "" || strings.Contains(hn[1:], "*") || (hn[0] == '*' && !strings.HasPrefix(hn, "*.")) || strings.ContainsAny(hn, ":/ ") {
				bad(".tlsRoutes[%d].hostnames[%d] %q is not a hostname or *.suffix", ri, hi, hn)
				continue
			}
			t.entries = append(t.entries, tlsEntry{host: hn, action: a, order: len(t.entries)})
		}
	}
	rank := func(e tlsEntry) int {
		switch {
		case e.host == "":
			return 0
		case e.host[0] == '*':
			return 1
		}
		return 2
	}
	slices.SortStableFunc(t.entries, func(a, b tlsEntry) int {
		if ra, rb := rank(a), rank(b); ra != rb {
			return rb - ra
		}
		if len(a.host) != len(b.host) {
			return len(b.host) - len(a.host)
		}
		return a.order - b.order
	})
	return t, errors.Join(errs...)
}
