package route

import (
	"encoding/json"
	"fmt"
	"slices"
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

// FuzzWithEndpointsMatchesBuild: any sequence of endpoint changes applied
// with WithEndpoints, interleaved with full Builds, routes exactly as the
// whole changed config built afresh, and a refused change (an invalid
// endpoint) leaves the snapshot as it was. Each input byte pair is one
// change: the service (of 600, so changes cross route chunks and
// overrides fold) and an endpoint set (one of 16; set 15 holds an invalid
// endpoint); a pair whose first byte is 0xff is a full Build instead.
func FuzzWithEndpointsMatchesBuild(f *testing.F) {
	f.Add([]byte{1, 2, 3, 4})
	f.Add([]byte{0, 1, 0xff, 0, 0, 2, 200, 3, 7, 15})
	f.Add([]byte{5, 1, 5, 2, 0xff, 0, 5, 1})
	many := make([]byte, 0, 240)
	for i := range 120 {
		many = append(many, byte(i), byte(i%15))
	}
	f.Add(many) // enough services changed to fold the overrides
	const n = 600
	sets := make([][]cluster.Endpoint, 16)
	for i := range sets {
		for j := range i%3 + 1 {
			sets[i] = append(sets[i], cluster.Endpoint{Addr: ap(fmt.Sprintf("10.1.%d.%d:80", i, j+1))})
		}
	}
	sets[15] = []cluster.Endpoint{{}}
	base := Config{Seed: 3}
	for i := range n {
		s := svc(fmt.Sprintf("s%03d", i), []string{fmt.Sprintf("10.96.%d.%d:80", i/250, i%250+1)}, "10.0.0.1:80")
		if i%100 == 0 {
			// A service whose HTTP route leads to the next one.
			s.Protocol = HTTP
			s.HTTPRoutes = []HTTPRoute{{Name: "r", Rules: []HTTPRouteRule{{Backends: []BackendRef{{Service: fmt.Sprintf("s%03d", i+1)}}}}}}
		}
		base.Services = append(base.Services, s)
	}
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 240 {
			ops = ops[:240]
		}
		cfg := base
		cfg.Services = slices.Clone(base.Services)
		snap := mustBuild(t, cfg, nil)
		for k := 0; k+1 < len(ops); k += 2 {
			if ops[k] == 0xff {
				cfg.Services = slices.Clone(cfg.Services)
				snap = mustBuild(t, cfg, snap)
				continue
			}
			i := (int(ops[k])*7 + int(ops[k+1])) % n
			set := sets[ops[k+1]%16]
			next, err := snap.WithEndpoints(map[string][]cluster.Endpoint{cfg.Services[i].Name: set})
			if ops[k+1]%16 == 15 {
				if err == nil {
					t.Fatalf("invalid endpoint for %s accepted", cfg.Services[i].Name)
				}
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			cfg.Services = slices.Clone(cfg.Services)
			cfg.Services[i].Endpoints = set
			snap = next
		}
		got, _ := json.Marshal(snap.Dump())
		want, _ := json.Marshal(mustBuild(t, cfg, nil).Dump())
		if string(got) != string(want) {
			t.Fatalf("after %x: snapshot differs from a fresh build", ops)
		}
		for _, i := range []int{0, 100, 599} {
			a := snap.Lookup(cfg.Services[i].Addresses[0])
			if a.Cluster != snap.Cluster(cfg.Services[i].Name) {
				t.Fatalf("lookup of %s: cluster %p, want %p", cfg.Services[i].Name, a.Cluster, snap.Cluster(cfg.Services[i].Name))
			}
			if a.HTTP != nil {
				if be := a.HTTP.Match(req{method: "GET", host: "x", path: "/"}).Backend(); be != snap.Cluster(cfg.Services[i+1].Name) {
					t.Fatalf("HTTP route of %s leads to a stale cluster", cfg.Services[i].Name)
				}
			}
		}
	})
}
