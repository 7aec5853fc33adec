package route

import (
	"errors"
	"fmt"
	"slices"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// RPCRoute sends the requests of an RPC service (protocol dubbo or bolt)
// whose attributes match to weighted backends. The attributes are the
// ones codecs expose (proxy/rpc/dubbo, proxy/rpc/bolt): the service or
// interface, the method, Dubbo's group and version, and any attachment or
// header by name.
type RPCRoute struct {
	Name string `json:"name,omitempty"`
	// Matches: a request matching any of them takes this route; none
	// matches every request.
	Matches  []RPCMatch   `json:"matches,omitempty"`
	Backends []BackendRef `json:"backendRefs,omitempty"`
}

// RPCMatch matches a request's attributes exactly; an empty field
// matches anything.
type RPCMatch struct {
	// Service is the service path or interface name (Dubbo's path, a
	// SOFABolt request's service header).
	Service string `json:"service,omitempty"`
	// Group and Version are Dubbo's group attachment and service version.
	Group   string `json:"group,omitempty"`
	Version string `json:"version,omitempty"`
	Method  string `json:"method,omitempty"`
	// Attributes are other attachments or headers, by name, all of which
	// must be equal.
	Attributes map[string]string `json:"attributes,omitempty"`
}

// Attributes is what RPC matching reads of a request: a codec's frame.
// The slices may alias the request's bytes; matching keeps none.
type Attributes interface {
	Attr(name string) []byte
}

// Attribute names of the hierarchy levels, as codecs name them.
const (
	AttrService = "service"
	AttrGroup   = "group"
	AttrVersion = "version"
	AttrMethod  = "method"
)

// RPCRouter is a service's compiled RPC routes: a tree with one level per
// attribute, service → group → version → method, each level a map with
// the exact value and "" (any) as keys. Match descends exact first and
// falls back to "any" only when nothing below the exact value matches, so
// finding a route costs at most 2 map probes per level (16 leaves), never
// a scan of all routes; at a leaf, routes with more attribute matches come
// first, then config order.
type RPCRouter struct {
	root rpcLevel
}

// rpcLevel is one level of the tree: children by attribute value, or at
// the last level, the leaf entries.
type rpcLevel struct {
	next    map[string]*rpcLevel
	entries []rpcEntry
}

type rpcEntry struct {
	attrs  [][2]string // sorted by name
	action *Action
	order  int
}

var rpcLevels = [...]string{AttrService, AttrGroup, AttrVersion, AttrMethod}

// Match returns the action for a request, or nil when no route matches
// (the request goes to the service's own cluster).
func (t *RPCRouter) Match(req Attributes) *Action {
	if t == nil {
		return nil
	}
	var vals [len(rpcLevels)][]byte
	for i, name := range rpcLevels {
		vals[i] = req.Attr(name)
	}
	return t.root.match(req, vals[:])
}

func (l *rpcLevel) match(req Attributes, vals [][]byte) *Action {
	if len(vals) == 0 {
		for i := range l.entries {
			e := &l.entries[i]
			if e.matches(req) {
				return e.action
			}
		}
		return nil
	}
	if len(vals[0]) > 0 {
		if c, ok := l.next[string(vals[0])]; ok {
			if a := c.match(req, vals[1:]); a != nil {
				return a
			}
		}
	}
	if c, ok := l.next[""]; ok {
		return c.match(req, vals[1:])
	}
	return nil
}

func (e *rpcEntry) matches(req Attributes) bool {
	for _, kv := range e.attrs {
		if string(req.Attr(kv[0])) != kv[1] {
			return false
		}
	}
	return true
}

// insert places an entry under the path of level values.
func (l *rpcLevel) insert(path []string, e rpcEntry) {
	for _, v := range path {
		if l.next == nil {
			l.next = map[string]*rpcLevel{}
		}
		c, ok := l.next[v]
		if !ok {
			c = &rpcLevel{}
			l.next[v] = c
		}
		l = c
	}
	l.entries = append(l.entries, e)
}

// sortLeaves orders every leaf: more attribute matches first, then
// config order.
func (l *rpcLevel) sortLeaves() {
	slices.SortStableFunc(l.entries, func(a, b rpcEntry) int {
		if len(a.attrs) != len(b.attrs) {
			return len(b.attrs) - len(a.attrs)
		}
		return a.order - b.order
	})
	for _, c := range l.next {
		c.sortLeaves()
	}
}

func compileRPC(routes []RPCRoute, clusterOf func(string) *cluster.Cluster, where string) (*RPCRouter, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	t := &RPCRouter{}
	order := 0
	for ri, rt := range routes {
		rw := fmt.Sprintf("%s.rpcRoutes[%d]", where, ri)
		name := rt.Name
		if name == "" {
			name = fmt.Sprintf("rpcRoute%d", ri)
		}
		a := &Action{Route: name}
		if len(rt.Backends) == 0 {
			bad("%s has no backendRefs", rw)
		}
		a.addBackends(rt.Backends, clusterOf, rw, bad)
		matches := rt.Matches
		if len(matches) == 0 {
			matches = []RPCMatch{{}}
		}
		for mi, m := range matches {
			e := rpcEntry{action: a, order: order}
			order++
			for k, v := range m.Attributes {
				if k == "" || slices.Contains(rpcLevels[:], k) {
					bad("%s.matches[%d].attributes names %q: use the match's own field", rw, mi, k)
					continue
				}
				e.attrs = append(e.attrs, [2]string{k, v})
			}
			slices.SortFunc(e.attrs, func(x, y [2]string) int {
				if x[0] < y[0] {
					return -1
				}
				if x[0] > y[0] {
					return 1
				}
				return 0
			})
			t.root.insert([]string{m.Service, m.Group, m.Version, m.Method}, e)
		}
	}
	t.root.sortLeaves()
	return t, errors.Join(errs...)
}
