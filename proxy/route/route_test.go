package route

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/proxy/cluster"
)

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func svc(name string, addrs []string, eps ...string) Service {
	s := Service{Name: name}
	for _, a := range addrs {
		s.Addresses = append(s.Addresses, ap(a))
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, cluster.Endpoint{Addr: ap(e)})
	}
	return s
}

func mustBuild(t *testing.T, cfg Config, prev *Snapshot) *Snapshot {
	t.Helper()
	s, err := Build(cfg, prev)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return s
}

func testConfig() Config {
	return Config{
		Services: []Service{
			svc("web", []string{"10.96.0.10:80", "[fd00::10]:80"}, "10.1.0.1:8080", "10.1.0.2:8080"),
			svc("dns", []string{"10.96.0.53:53"}, "10.1.0.3:53"),
			svc("db", nil, "10.2.0.1:5432"),
			svc("pg-any", nil, "10.2.0.2:5432"),
		},
		CIDRs: []CIDRRoute{
			{Prefix: netip.MustParsePrefix("10.20.0.0/16"), Port: 5432, Service: "db"},
			{Prefix: netip.MustParsePrefix("10.20.0.0/16"), Service: "pg-any"},
			{Prefix: netip.MustParsePrefix("10.20.30.0/24"), Action: Refuse},
			{Prefix: netip.MustParsePrefix("10.0.0.0/8"), Action: Refuse},
			{Prefix: netip.MustParsePrefix("fd00:aa::/32"), Service: "db"},
		},
	}
}

func TestLookup(t *testing.T) {
	s := mustBuild(t, testConfig(), nil)
	type want struct {
		cluster     string
		passthrough bool
	}
	cases := []struct {
		dst  string
		want want
	}{
		{"10.96.0.10:80", want{cluster: "web"}},
		{"[fd00::10]:80", want{cluster: "web"}},
		{"[::ffff:10.96.0.10]:80", want{cluster: "web"}}, // v4-mapped
		{"10.96.0.10:81", want{}},                        // 10/8 refuses
		{"10.96.0.53:53", want{cluster: "dns"}},
		{"10.20.1.1:5432", want{cluster: "db"}},     // port-specific wins
		{"10.20.1.1:6000", want{cluster: "pg-any"}}, // any port
		{"10.20.30.4:5432", want{}},                 // longer prefix wins over the port route
		{"10.99.0.1:443", want{}},                   // 10/8 refuse
		{"[fd00:aa::1]:9", want{cluster: "db"}},
		{"192.168.1.1:443", want{passthrough: true}}, // unknown: default passthrough
		{"[2001:db8::1]:443", want{passthrough: true}},
	}
	for _, tc := range cases {
		r := s.Lookup(ap(tc.dst))
		got := want{passthrough: r.Passthrough}
		if r.Cluster != nil {
			got.cluster = r.Cluster.Name()
		}
		if got != tc.want {
			t.Errorf("Lookup(%s) = %+v, want %+v", tc.dst, got, tc.want)
		}
	}

	cfg := testConfig()
	cfg.Unknown = Refuse
	s = mustBuild(t, cfg, nil)
	if r := s.Lookup(ap("192.168.1.1:443")); !r.Refused() {
		t.Errorf("unknown=refuse: got %+v", r)
	}
	var nilSnap *Snapshot
	if r := nilSnap.Lookup(ap("192.168.1.1:443")); !r.Passthrough {
		t.Errorf("nil snapshot: got %+v, want passthrough", r)
	}
}

func TestBuildErrorsNameFields(t *testing.T) {
	base := testConfig
	cases := []struct {
		mut  func(*Config)
		want string
	}{
		{func(c *Config) { c.Unknown = "drop" }, `unknown "drop"`},
		{func(c *Config) { c.Services[1].Name = "web" }, "services[1] (web).name repeats services[0]"},
		{func(c *Config) { c.Services[1].Name = "" }, "services[1].name is missing"},
		{func(c *Config) { c.Services[1].Addresses = []netip.AddrPort{ap("10.96.0.10:80")} }, "already an address of service web"},
		{func(c *Config) { c.Services[0].Cluster.Outlier.ConsecutiveFailures = -1 }, "services[0] (web).cluster: outlier.consecutiveFailures must be > 0"},
		{func(c *Config) { c.Services[0].Endpoints[1].Addr = ap("10.1.0.1:8080") }, "services[0] (web).cluster: endpoints[1].addr 10.1.0.1:8080 repeats endpoints[0]"},
		{func(c *Config) { c.CIDRs[0].Prefix = netip.MustParsePrefix("10.20.0.1/16") }, "cidrs[0].prefix 10.20.0.1/16 has host bits set"},
		{func(c *Config) { c.CIDRs[0].Service = "nope" }, `cidrs[0].service "nope" is not a service`},
		{func(c *Config) { c.CIDRs[2].Action = "drop" }, `cidrs[2].action "drop"`},
		{func(c *Config) { c.CIDRs = append(c.CIDRs, c.CIDRs[0]) }, "cidrs[5] repeats prefix 10.20.0.0/16 port 5432"},
		{func(c *Config) { c.Services[0].Cluster.Name = "other" }, "cluster.name"},
	}
	prev := mustBuild(t, base(), nil)
	for _, tc := range cases {
		cfg := base()
		tc.mut(&cfg)
		s, err := Build(cfg, prev)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Build: err = %v, want it to contain %q", err, tc.want)
		}
		if s != nil {
			t.Errorf("Build returned a snapshot with an error")
		}
	}
	// prev is untouched: still routes as before.
	if r := prev.Lookup(ap("10.96.0.10:80")); r.Cluster == nil || r.Cluster.Name() != "web" {
		t.Errorf("prev changed after failed builds: %+v", r)
	}
}

func TestBuildReusesUnchangedClusters(t *testing.T) {
	cfg := testConfig()
	s1 := mustBuild(t, cfg, nil)

	cfg2 := testConfig() // equal values, fresh slices
	cfg2.Services[1].Endpoints = append(cfg2.Services[1].Endpoints, cluster.Endpoint{Addr: ap("10.1.0.4:53")})
	s2 := mustBuild(t, cfg2, s1)
	for _, name := range []string{"web", "db", "pg-any"} {
		if s1.Cluster(name) != s2.Cluster(name) {
			t.Errorf("cluster %s was rebuilt although unchanged", name)
		}
	}
	if s1.Cluster("dns") == s2.Cluster("dns") {
		t.Errorf("cluster dns was reused although an endpoint was added")
	}
	if len(s2.Cluster("dns").Stats().Endpoints) != 2 {
		t.Errorf("dns should have 2 endpoints now")
	}
	// Same layout: the indexes are shared, and still route to the new cluster.
	if r := s2.Lookup(ap("10.96.0.53:53")); r.Cluster != s2.Cluster("dns") {
		t.Errorf("lookup after rebuild points at the old cluster")
	}
	// A config change rebuilds.
	cfg3 := cfg2
	cfg3.Services = append([]Service(nil), cfg2.Services...)
	cfg3.Services[0].Cluster.Balancer = cluster.PeakEWMA
	s3 := mustBuild(t, cfg3, s2)
	if s3.Cluster("web") == s2.Cluster("web") {
		t.Errorf("web reused although its balancer changed")
	}
}

func TestTable(t *testing.T) {
	var tb Table
	if tb.Load() != nil {
		t.Fatal("zero Table should hold no snapshot")
	}
	s := mustBuild(t, testConfig(), nil)
	tb.Store(s)
	if tb.Load() != s {
		t.Fatal("Load did not return the stored snapshot")
	}
}

func TestDumpIsJSON(t *testing.T) {
	s := mustBuild(t, testConfig(), nil)
	b, err := json.Marshal(s.Dump())
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"name":"web"`, `"addr":"10.1.0.1:8080"`, `"balancer":"round_robin"`, `"connectTimeout":"5s"`, `"unknown":"passthrough"`, `"prefix":"10.20.0.0/16"`} {
		if !strings.Contains(string(b), want) {
			t.Errorf("dump lacks %s: %s", want, b)
		}
	}
}

func TestBuildLayoutChangeReusesByName(t *testing.T) {
	s1 := mustBuild(t, testConfig(), nil)
	cfg := testConfig()
	// Reorder, add a service and an address: indexes are rebuilt, clusters
	// are still found by name.
	cfg.Services[0], cfg.Services[1] = cfg.Services[1], cfg.Services[0]
	cfg.Services = append(cfg.Services, svc("new", []string{"10.96.0.99:80"}, "10.1.0.9:80"))
	cfg.Services[1].Addresses = append(cfg.Services[1].Addresses, ap("10.96.0.11:80"))
	s2 := mustBuild(t, cfg, s1)
	for _, name := range []string{"web", "dns", "db", "pg-any"} {
		if s1.Cluster(name) != s2.Cluster(name) {
			t.Errorf("%s rebuilt after a layout change that did not touch it", name)
		}
	}
	for dst, want := range map[string]string{"10.96.0.10:80": "web", "10.96.0.11:80": "web", "10.96.0.53:53": "dns", "10.96.0.99:80": "new", "10.20.1.1:5432": "db"} {
		if r := s2.Lookup(ap(dst)); r.Cluster == nil || r.Cluster.Name() != want {
			t.Errorf("Lookup(%s) = %+v, want %s", dst, r, want)
		}
	}
	// And a removed service's address no longer routes to it.
	cfg.Services = cfg.Services[:len(cfg.Services)-1]
	s3 := mustBuild(t, cfg, s2)
	if r := s3.Lookup(ap("10.96.0.99:80")); r.Cluster != nil {
		t.Errorf("removed service still routed: %+v", r)
	}
}
