package cluster

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"sigs.k8s.io/yaml"
)

func TestConfigFromYAML(t *testing.T) {
	const doc = `
balancer: maglev
connectTimeout: 2s
maglev:
  tableSize: 4099
subset:
  selector: {version: v2}
  fallback: any
locality:
  enabled: true
  minHealthyPercent: 50
retry:
  maxRetries: 1
  budgetPercent: 10
outlier:
  consecutiveFailures: 3
  baseEjectionTime: 10s
circuitBreaker:
  maxConnections: 500
`
	var c Config
	if err := yaml.UnmarshalStrict([]byte(doc), &c); err != nil {
		t.Fatalf("decode: %v", err)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("validate: %v", err)
	}
	want := Config{
		Balancer:       Maglev,
		ConnectTimeout: Duration(2 * time.Second),
		Maglev:         MaglevConfig{TableSize: 4099},
		Subset:         SubsetConfig{Selector: map[string]string{"version": "v2"}, Fallback: FallbackAny},
		Locality:       LocalityConfig{Enabled: true, MinHealthyPercent: 50},
		Retry:          RetryConfig{MaxRetries: 1, BudgetPercent: 10},
		Outlier:        OutlierConfig{ConsecutiveFailures: 3, BaseEjectionTime: Duration(10 * time.Second)},
		CircuitBreaker: CircuitBreakerConfig{MaxConnections: 500},
	}
	if !c.Equal(&want) {
		t.Errorf("decoded %+v\nwant    %+v", c, want)
	}
	// Round trip through JSON keeps it.
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var back Config
	if err := yaml.Unmarshal(b, &back); err != nil || !back.Equal(&c) {
		t.Errorf("round trip: %v\n%s", err, b)
	}

	for doc, wantErr := range map[string]string{
		"connectTimeout: 5":         "duration must be a string",
		"connectTimeout: 5 seconds": `duration "5 seconds"`,
		"outlier: {consecutive: 3}": "unknown field",
	} {
		var c Config
		err := yaml.UnmarshalStrict([]byte(doc), &c)
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("%q: err = %v, want %q", doc, err, wantErr)
		}
	}
}

func TestDefaults(t *testing.T) {
	d := Config{}.WithDefaults()
	if d.Balancer != RoundRobin || d.ConnectTimeout.D() != 5*time.Second || d.Retry.MaxRetries != 2 ||
		d.Outlier.ConsecutiveFailures != 5 || d.Outlier.BaseEjectionTime.D() != 30*time.Second ||
		d.Outlier.MaxEjectionPercent != 10 || d.PeakEWMA.DefaultRTT.D() != 30*time.Millisecond ||
		d.PeakEWMA.Decay.D() != 10*time.Second || d.Subset.Fallback != FallbackNone {
		t.Errorf("defaults: %+v", d)
	}
	// A base ejection time above the default max raises the max with it.
	d = Config{Outlier: OutlierConfig{BaseEjectionTime: Duration(10 * time.Minute)}}.WithDefaults()
	if d.Outlier.MaxEjectionTime < d.Outlier.BaseEjectionTime {
		t.Errorf("maxEjectionTime %s < baseEjectionTime %s", d.Outlier.MaxEjectionTime, d.Outlier.BaseEjectionTime)
	}
}

func TestHealthJSON(t *testing.T) {
	var e Endpoint
	if err := yaml.Unmarshal([]byte("addr: 10.0.0.1:80\nhealth: draining\nweight: 3"), &e); err != nil {
		t.Fatal(err)
	}
	if e.Addr != ap("10.0.0.1:80") || e.Health != Draining || e.Weight != 3 {
		t.Errorf("decoded %+v", e)
	}
	if err := yaml.Unmarshal([]byte("addr: 10.0.0.1:80\nhealth: sick"), &e); err == nil || !strings.Contains(err.Error(), `health "sick"`) {
		t.Errorf("bad health: %v", err)
	}
}

// TestConcurrentConnect hammers one cluster from many goroutines (run with
// -race): counters must add up and every lease must be released.
func TestConcurrentConnect(t *testing.T) {
	f := newFakeNet(t)
	var e []Endpoint
	for i := range 8 {
		e = append(e, Endpoint{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)}), 80)})
	}
	f.setDown(e[0].Addr, true)
	for _, b := range []string{RoundRobin, LeastRequest, PeakEWMA, Maglev} {
		c := mustNew(t, Config{Name: b, Balancer: b}, e, Options{})
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 200 {
					conn, l, err := c.Connect(context.Background(), uint64(g*1000+i), f.dial)
					if err != nil {
						t.Errorf("%s: %v", b, err)
						return
					}
					_ = conn
					l.Done(nil)
				}
			}()
		}
		wg.Wait()
		s := c.Stats()
		var sum uint64
		for _, es := range s.Endpoints {
			sum += es.Connections
			if es.Active != 0 {
				t.Errorf("%s: endpoint %s active %d after all done", b, es.Addr, es.Active)
			}
		}
		if s.Connections != 1600 || sum != 1600 || s.Active != 0 || s.Pending != 0 {
			t.Errorf("%s: connections %d (endpoints %d), active %d, pending %d; want 1600, 1600, 0, 0", b, s.Connections, sum, s.Active, s.Pending)
		}
	}
}

func TestHealthChecks(t *testing.T) {
	f := newFakeNet(t)
	clk := newFakeClock()
	cfg := Config{Name: "hc", HealthCheck: HealthCheckConfig{Enabled: true}, Outlier: OutlierConfig{Disabled: true}}
	c := mustNew(t, cfg, eps("10.0.0.1:80", "10.0.0.2:80"), Options{Clock: clk.Now})
	bad := ap("10.0.0.1:80")
	failing := func() bool { return c.Stats().Endpoints[0].HealthCheckFailing }

	c.HealthCheck(context.Background(), f.dial, 4)
	if n := len(f.dialed()); n != 2 {
		t.Fatalf("first round dialed %d endpoints, want 2", n)
	}
	c.HealthCheck(context.Background(), f.dial, 4)
	if n := len(f.dialed()); n != 2 {
		t.Fatalf("a second round before the interval dialed again (%d)", n)
	}
	f.setDown(bad, true)
	for i := range 3 {
		clk.Advance(10 * time.Second)
		c.HealthCheck(context.Background(), f.dial, 4)
		if got, want := failing(), i == 2; got != want {
			t.Fatalf("after %d failed checks: failing=%v, want %v (unhealthyThreshold 3)", i+1, got, want)
		}
	}
	// Out of rotation: connections avoid it without dialing it.
	f.reset()
	for range 10 {
		if a, err := connect(t, c, f, 0, nil); err != nil || a == bad {
			t.Fatalf("while failing checks: %s %v", a, err)
		}
	}
	for _, a := range f.dialed() {
		if a == bad {
			t.Fatal("dialed an endpoint failing its health checks")
		}
	}
	// One pass brings it back (healthyThreshold 1).
	f.setDown(bad, false)
	clk.Advance(10 * time.Second)
	c.HealthCheck(context.Background(), f.dial, 4)
	if failing() {
		t.Fatal("still failing after a passing check")
	}
	// The state survives a rebuild.
	f.setDown(bad, true)
	for range 3 {
		clk.Advance(10 * time.Second)
		c.HealthCheck(context.Background(), f.dial, 4)
	}
	c2 := mustNew(t, cfg, eps("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"), Options{Prev: c, Clock: clk.Now})
	if !c2.Stats().Endpoints[0].HealthCheckFailing {
		t.Error("health check state lost across rebuild")
	}
	// Disabled: no checks at all.
	f.reset()
	c3 := mustNew(t, Config{Name: "nohc"}, eps("10.0.0.1:80"), Options{Clock: clk.Now})
	c3.HealthCheck(context.Background(), f.dial, 4)
	if len(f.dialed()) != 0 {
		t.Error("checks ran with healthCheck disabled")
	}
}
