package cluster

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var err5xx = errors.New("upstream answered 5xx (fake)")

// srCluster is six endpoints under success-rate detection (volume 20,
// five hosts, 10 s interval); consecutive-failure ejection is set out of
// reach so only the success rate can eject.
func srCluster(t *testing.T, clk *fakeClock) (*Cluster, []string) {
	var addrs []string
	for i := range 6 {
		addrs = append(addrs, fmt.Sprintf("10.0.0.%d:80", i+1))
	}
	c := mustNew(t, Config{Name: "sr", Outlier: OutlierConfig{
		ConsecutiveFailures: 1000, MaxEjectionPercent: 50, BaseEjectionTime: Duration(30 * time.Second),
		SuccessRate: SuccessRateConfig{Enabled: true, RequestVolume: 20, MinimumHosts: 5, Interval: Duration(10 * time.Second)},
	}}, eps(addrs...), Options{Clock: clk.Now})
	return c, addrs
}

// requests sends n requests by round robin; fail decides each outcome
// from the endpoint and how many requests it has had. It returns the
// requests each endpoint got.
func requests(t *testing.T, c *Cluster, n int, fail func(a netip.AddrPort, i int) bool) map[netip.AddrPort]int {
	t.Helper()
	seen := map[netip.AddrPort]int{}
	for range n {
		l, err := c.Pick(0, nil)
		if err != nil {
			t.Fatal(err)
		}
		a := l.Endpoint()
		if fail(a, seen[a]) {
			l.Done(err5xx)
		} else {
			l.Done(nil)
		}
		seen[a]++
	}
	return seen
}

func ejectedSet(c *Cluster) []string {
	var out []string
	for _, e := range c.Stats().Endpoints {
		if e.Ejected {
			out = append(out, e.Addr.String())
		}
	}
	return out
}

// An endpoint failing every other request (never five in a row) is an
// outlier by success rate among five that fail one in twenty or none;
// it is ejected when the interval ends, and only it.
func TestSuccessRateEjectsOutlier(t *testing.T) {
	clk := newFakeClock()
	c, addrs := srCluster(t, clk)
	bad, noisy := ap(addrs[1]), ap(addrs[2])
	requests(t, c, 120, func(a netip.AddrPort, i int) bool {
		return a == bad && i%2 == 0 || a == noisy && i == 7
	})
	if got := ejectedSet(c); len(got) != 0 {
		t.Fatalf("ejected %v before the interval ended", got)
	}
	clk.Advance(10 * time.Second)
	requests(t, c, 1, func(netip.AddrPort, int) bool { return false }) // the outcome that ends the interval
	if got := ejectedSet(c); len(got) != 1 || got[0] != bad.String() {
		t.Fatalf("ejected %v, want only %s (50 %% success against ~99 %%)", got, bad)
	}
	// The next interval judges afresh: the remaining five, all healthy
	// now, eject nobody, and the ejected endpoint gets no request.
	if got := requests(t, c, 100, func(netip.AddrPort, int) bool { return false }); got[bad] != 0 || len(got) != 5 {
		t.Fatalf("requests went %v while %s is ejected", got, bad)
	}
	clk.Advance(10 * time.Second)
	requests(t, c, 1, func(netip.AddrPort, int) bool { return false })
	if got := ejectedSet(c); len(got) != 1 {
		t.Fatalf("ejected %v after a healthy interval, want still just %s", got, bad)
	}
	clk.Advance(30 * time.Second)
	if got := ejectedSet(c); len(got) != 0 {
		t.Fatalf("still ejected after the ejection time: %v", got)
	}
}

// No ejection when too few endpoints have the volume to be judged, or
// when everyone fails alike (no outlier), or when detection is off.
func TestSuccessRateNeedsHostsVolumeAndAnOutlier(t *testing.T) {
	t.Run("too-few-hosts", func(t *testing.T) {
		clk := newFakeClock()
		c, addrs := srCluster(t, clk)
		// 6 × 15 requests: under the volume of 20 for everyone.
		requests(t, c, 90, func(a netip.AddrPort, i int) bool { return a == ap(addrs[0]) })
		clk.Advance(10 * time.Second)
		requests(t, c, 1, func(netip.AddrPort, int) bool { return false })
		if got := ejectedSet(c); len(got) != 0 {
			t.Fatalf("ejected %v with no endpoint at the volume", got)
		}
	})
	t.Run("uniform-failures", func(t *testing.T) {
		clk := newFakeClock()
		c, _ := srCluster(t, clk)
		requests(t, c, 180, func(_ netip.AddrPort, i int) bool { return i%3 == 0 })
		clk.Advance(10 * time.Second)
		requests(t, c, 1, func(netip.AddrPort, int) bool { return false })
		if got := ejectedSet(c); len(got) != 0 {
			t.Fatalf("ejected %v though every endpoint fails alike", got)
		}
	})
	t.Run("disabled", func(t *testing.T) {
		clk := newFakeClock()
		var addrs []string
		for i := range 6 {
			addrs = append(addrs, fmt.Sprintf("10.0.0.%d:80", i+1))
		}
		c := mustNew(t, Config{Name: "sr", Outlier: OutlierConfig{ConsecutiveFailures: 1000, MaxEjectionPercent: 50}}, eps(addrs...), Options{Clock: clk.Now})
		requests(t, c, 120, func(a netip.AddrPort, i int) bool { return a == ap(addrs[1]) && i%2 == 0 })
		clk.Advance(10 * time.Second)
		requests(t, c, 1, func(netip.AddrPort, int) bool { return false })
		if got := ejectedSet(c); len(got) != 0 {
			t.Fatalf("ejected %v with success-rate detection off", got)
		}
	})
}

func TestSuccessRateConfigValidated(t *testing.T) {
	for _, tc := range []struct {
		sr   SuccessRateConfig
		want string
	}{
		{SuccessRateConfig{Interval: Duration(-time.Second)}, "outlier.successRate.interval must be > 0"},
		{SuccessRateConfig{MinimumHosts: -1}, "outlier.successRate.minimumHosts must be > 0"},
		{SuccessRateConfig{RequestVolume: -5}, "outlier.successRate.requestVolume must be > 0"},
		{SuccessRateConfig{StdevFactor: -1}, "outlier.successRate.stdevFactor must be between 0 and 100"},
	} {
		err := Config{Outlier: OutlierConfig{SuccessRate: tc.sr}}.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.sr, err, tc.want)
		}
	}
}
