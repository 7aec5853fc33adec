package route

import (
	"errors"
	"fmt"
	"slices"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
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
	// RPCPolicy (timeout, retry) bounds and retries the route's
	// requests; a field left out takes the service's (services[].rpc).
	RPCPolicy
}

// RPCPolicy is the per-request timeout and retry policy of RPC requests,
// on a service (services[].rpc) or an rpcRoute.
type RPCPolicy struct {
	// Timeout bounds each request from its arrival to its answer: past it
	// the client gets the protocol's timeout error, the late answer is
	// dropped, and the upstream connection and its other requests go on.
	// 0: none (the agent still closes an upstream connection that
	// answers nothing for a minute or more).
	Timeout cluster.Duration `json:"timeout,omitempty"`
	// Retry says which failed requests go to another endpoint; nil: only
	// requests never sent (connect failures).
	Retry *RPCRetry `json:"retry,omitempty"`
}

// RPCRetry retries failed RPC requests on another endpoint (cluster.Pick,
// within the cluster's retry.maxRetries and retry budget). One-way
// requests, Redis commands with a key and RocketMQ requests naming their
// broker are never retried.
type RPCRetry struct {
	// Attempts is the most retries of one request after it was sent
	// (reset, busy); nil: 1, 0: none. Connect failures are bounded by the
	// cluster's retry.maxRetries only.
	Attempts *int `json:"attempts,omitempty"`
	// On lists the failures retried: connect-failure (never sent),
	// reset (the connection broke before an answer: the call may have
	// run, so only for idempotent services), busy (the server refused
	// the call as too busy); none: connect-failure and busy.
	On []string `json:"on,omitempty"`
}

// compileRPCPolicy checks p and returns it over def (a field p leaves
// out takes def's); errors name fields under where.
func compileRPCPolicy(p *RPCPolicy, def *rpc.Policy, bad func(string, ...any), where string) *rpc.Policy {
	if def == nil {
		def = rpc.DefaultPolicy
	}
	out := *def
	if p.Timeout < 0 {
		bad("%s.timeout %s is negative", where, p.Timeout)
	} else if p.Timeout > 0 {
		out.Timeout = p.Timeout.D()
	}
	if r := p.Retry; r != nil {
		out.Attempts = 1
		if r.Attempts != nil {
			out.Attempts = *r.Attempts
			if out.Attempts < 0 || out.Attempts > 10 {
				bad("%s.retry.attempts %d is not in 0..10", where, out.Attempts)
			}
		}
		out.On = rpc.RetryConnect | rpc.RetryBusy
		if len(r.On) > 0 {
			out.On = 0
			for i, name := range r.On {
				on, err := rpc.ParseRetryOn(name)
				if err != nil {
					bad("%s.retry.on[%d]: %v", where, i, err)
				}
				out.On |= on
			}
		}
	}
	return &out
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

func compileRPC(routes []RPCRoute, def *rpc.Policy, clusterOf func(string) *cluster.Cluster, where string) (*RPCRouter, error) {
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
		a := &Action{Route: name, RPC: def}
		if rt.Timeout != 0 || rt.Retry != nil {
			a.RPC = compileRPCPolicy(&rt.RPCPolicy, def, bad, rw)
		}
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
