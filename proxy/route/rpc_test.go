package route

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
	"github.com/weir-mesh/weir/proxy/rpc"
)

// attrs is a request's attributes by name.
type attrs map[string]string

func (a attrs) Attr(name string) []byte {
	if v, ok := a[name]; ok {
		return []byte(v)
	}
	return nil
}

func TestRPCRouteHierarchy(t *testing.T) {
	cfg := l7Config(nil)
	cfg.Services[0].Protocol = Dubbo
	cfg.Services[0].RPCRoutes = []RPCRoute{
		{Name: "gold", Matches: []RPCMatch{{Service: "org.weir.Greeter", Group: "gold", Version: "1.0"}}, Backends: []BackendRef{{Service: "a"}}},
		{Name: "canary-header", Matches: []RPCMatch{{Service: "org.weir.Greeter", Attributes: map[string]string{"x-canary": "yes"}}}, Backends: []BackendRef{{Service: "c"}}},
		{Name: "greeter", Matches: []RPCMatch{{Service: "org.weir.Greeter"}}, Backends: []BackendRef{{Service: "b"}}},
		{Name: "any-bye", Matches: []RPCMatch{{Method: "Bye"}}, Backends: []BackendRef{{Service: "c"}}},
	}
	snap := mustBuild(t, cfg, nil)
	rt := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80")).RPC
	for _, tc := range []struct {
		req  attrs
		want string
	}{
		{attrs{"service": "org.weir.Greeter", "group": "gold", "version": "1.0", "method": "Hello"}, "a"},
		{attrs{"service": "org.weir.Greeter", "group": "gold", "version": "2.0", "method": "Hello"}, "b"},
		{attrs{"service": "org.weir.Greeter", "method": "Hello", "x-canary": "yes"}, "c"},
		{attrs{"service": "org.weir.Greeter", "method": "Bye"}, "b"}, // the exact service wins over any service
		{attrs{"service": "org.weir.Other", "method": "Bye"}, "c"},
		{attrs{"service": "org.weir.Other", "method": "Hello"}, ""},
	} {
		got := ""
		if a := rt.Match(tc.req); a != nil {
			got = a.Backend().Name()
		}
		if got != tc.want {
			t.Errorf("%v went to %q, want %q", tc.req, got, tc.want)
		}
	}
}

func TestRPCRouteErrors(t *testing.T) {
	cfg := l7Config(nil)
	cfg.Services[0].Protocol = HTTP
	cfg.Services[0].RPCRoutes = []RPCRoute{
		{Matches: []RPCMatch{{Attributes: map[string]string{"group": "x"}}}, Backends: []BackendRef{{Service: "nope"}}},
		{},
	}
	_, err := Build(cfg, nil)
	for _, want := range []string{"rpcRoutes but protocol \"http\"", "rpcRoutes[0].backendRefs[0].service \"nope\"", "use the match's own field", "rpcRoutes[1] has no backendRefs"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}

// TestRPCPolicy: a service's rpc policy is the default of its rpcRoutes,
// whose own fields override it field by field.
func TestRPCPolicy(t *testing.T) {
	two := 2
	cfg := l7Config(nil)
	cfg.Services[0].Protocol = Dubbo
	cfg.Services[0].RPC = &RPCPolicy{Timeout: cluster.Duration(3 * time.Second)}
	cfg.Services[0].RPCRoutes = []RPCRoute{
		{Name: "slow", Matches: []RPCMatch{{Method: "Slow"}}, Backends: []BackendRef{{Service: "a"}},
			RPCPolicy: RPCPolicy{Retry: &RPCRetry{Attempts: &two, On: []string{"reset"}}}},
		{Name: "fast", Matches: []RPCMatch{{Method: "Fast"}}, Backends: []BackendRef{{Service: "a"}},
			RPCPolicy: RPCPolicy{Timeout: cluster.Duration(100 * time.Millisecond), Retry: &RPCRetry{}}},
		{Name: "plain", Matches: []RPCMatch{{Method: "Plain"}}, Backends: []BackendRef{{Service: "a"}}},
	}
	snap := mustBuild(t, cfg, nil)
	r := snap.Lookup(netip.MustParseAddrPort("10.96.0.1:80"))
	if p := r.RPCPolicy; p == nil || *p != (rpc.Policy{Timeout: 3 * time.Second, On: rpc.RetryConnect}) {
		t.Fatalf("service policy %+v", p)
	}
	for _, tc := range []struct {
		method string
		want   rpc.Policy
	}{
		{"Slow", rpc.Policy{Timeout: 3 * time.Second, Attempts: 2, On: rpc.RetryReset}},
		{"Fast", rpc.Policy{Timeout: 100 * time.Millisecond, Attempts: 1, On: rpc.RetryConnect | rpc.RetryBusy}},
		{"Plain", rpc.Policy{Timeout: 3 * time.Second, On: rpc.RetryConnect}},
	} {
		a := r.RPC.Match(attrs{"method": tc.method})
		if a == nil || a.RPC == nil || *a.RPC != tc.want {
			t.Errorf("%s: policy %+v, want %+v", tc.method, a.RPC, tc.want)
		}
	}
}

func TestRPCPolicyErrors(t *testing.T) {
	eleven := 11
	cfg := l7Config(nil)
	cfg.Services[0].Protocol = TCP
	cfg.Services[0].RPC = &RPCPolicy{Timeout: cluster.Duration(-time.Second), Retry: &RPCRetry{Attempts: &eleven, On: []string{"timeout"}}}
	_, err := Build(cfg, nil)
	for _, want := range []string{`has rpc but protocol "tcp"`, "rpc.timeout -1s is negative", "rpc.retry.attempts 11 is not in 0..10", `rpc.retry.on[0]: "timeout" is not one of`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}
