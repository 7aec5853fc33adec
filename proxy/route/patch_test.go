package route

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/proxy/cluster"
)

func endpointAddrs(c *cluster.Cluster) string {
	var out []string
	for _, e := range c.Stats().Endpoints {
		out = append(out, e.Addr.String())
	}
	return strings.Join(out, ",")
}

// WithEndpoints changes only the named services, keeps s as it was, and
// routes exactly as a full Build of the changed config would.
func TestWithEndpoints(t *testing.T) {
	cfg := l7Config([]HTTPRoute{{Name: "r", Rules: []HTTPRouteRule{{Backends: []BackendRef{{Service: "a"}}}}}})
	cfg.Seed = 7
	s0 := mustBuild(t, cfg, nil)
	newA := []cluster.Endpoint{{Addr: ap("10.0.0.9:80")}, {Addr: ap("10.0.0.2:80")}}
	s1, err := s0.WithEndpoints(map[string][]cluster.Endpoint{"a": newA, "b": cfg.Services[2].Endpoints})
	if err != nil {
		t.Fatal(err)
	}
	if got := endpointAddrs(s1.Cluster("a")); got != "10.0.0.9:80,10.0.0.2:80" {
		t.Fatalf("a after WithEndpoints: %s", got)
	}
	if got := endpointAddrs(s0.Cluster("a")); got != "10.0.0.2:80" {
		t.Fatalf("a in the previous snapshot changed: %s", got)
	}
	for _, name := range []string{"front", "b", "c"} {
		if s1.Cluster(name) != s0.Cluster(name) {
			t.Errorf("cluster %s rebuilt though its endpoints did not change", name)
		}
	}
	if s1.Cluster("a") == s0.Cluster("a") {
		t.Fatal("cluster a not rebuilt")
	}
	// The front service's HTTP route now leads to the new cluster a.
	r := s1.Lookup(ap("10.96.0.1:80"))
	if got := r.HTTP.Match(req{method: "GET", host: "x", path: "/"}).Backend(); got != s1.Cluster("a") {
		t.Fatalf("HTTP route's backend is %p, want the new cluster a %p", got, s1.Cluster("a"))
	}

	// Same as a full Build of the changed config.
	changed := cfg
	changed.Services = append([]Service(nil), cfg.Services...)
	changed.Services[1].Endpoints = newA
	full := mustBuild(t, changed, nil)
	a, _ := json.Marshal(s1.Dump())
	b, _ := json.Marshal(full.Dump())
	if string(a) != string(b) {
		t.Fatalf("WithEndpoints:\n%s\nfull Build:\n%s", a, b)
	}

	// A full Build back to the first config after WithEndpoints must see
	// that a's endpoints changed again (the override, not the stale
	// config, is what s1 holds).
	s2 := mustBuild(t, cfg, s1)
	if got := endpointAddrs(s2.Cluster("a")); got != "10.0.0.2:80" {
		t.Fatalf("a after building the first config again: %s", got)
	}

	// Nothing changed: the same snapshot.
	if s3, err := s2.WithEndpoints(map[string][]cluster.Endpoint{"a": cfg.Services[1].Endpoints}); err != nil || s3 != s2 {
		t.Fatalf("no change: %v, same snapshot %v", err, s3 == s2)
	}
	// Bad input changes nothing.
	if _, err := s2.WithEndpoints(map[string][]cluster.Endpoint{"nope": newA}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown service: %v", err)
	}
	if _, err := s2.WithEndpoints(map[string][]cluster.Endpoint{"a": {{}}}); err == nil || !strings.Contains(err.Error(), "(a)") {
		t.Fatalf("invalid endpoint: %v", err)
	}
	if got := endpointAddrs(s2.Cluster("a")); got != "10.0.0.2:80" {
		t.Fatalf("a after refused changes: %s", got)
	}
}

// Many overrides are folded into the services; routing is unchanged by it.
func TestWithEndpointsFolds(t *testing.T) {
	var cfg Config
	for i := range 200 {
		cfg.Services = append(cfg.Services, svc(string(rune('A'+i%26))+strings.Repeat("x", i/26), nil, "10.0.0.1:80"))
	}
	s := mustBuild(t, cfg, nil)
	for i := range cfg.Services {
		var err error
		eps := []cluster.Endpoint{{Addr: ap("10.0.1.1:80")}}
		if s, err = s.WithEndpoints(map[string][]cluster.Endpoint{cfg.Services[i].Name: eps}); err != nil {
			t.Fatal(err)
		}
		if len(s.eps) > 64 {
			t.Fatalf("%d overrides held after %d changes", len(s.eps), i+1)
		}
	}
	for _, c := range s.Clusters() {
		if got := endpointAddrs(c); got != "10.0.1.1:80" {
			t.Fatalf("%s: %s", c.Name(), got)
		}
	}
}
