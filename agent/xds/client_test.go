package xds

import (
	"slices"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/types/known/durationpb"
)

func forEachMode(t *testing.T, f func(t *testing.T, delta bool)) {
	t.Run("sotw", func(t *testing.T) { f(t, false) })
	t.Run("delta", func(t *testing.T) { f(t, true) })
}

// webWorld is one TCP service at 10.96.0.10:80 over the given endpoints,
// and an HTTP listener at 10.96.0.20:80 whose routes send /api to api.
func webWorld(t *testing.T, web []string, api []string) *world {
	w := &world{
		clusters:  []types.Resource{edsCluster("web"), edsCluster("api")},
		endpoints: []types.Resource{cla("web", web...), cla("api", api...)},
		listeners: []types.Resource{
			tcpListener(t, "web-tcp", "10.96.0.10:80", "web"),
			httpListener(t, "front", "10.96.0.20:80", "front-routes"),
		},
		routes: []types.Resource{routeConfig("front-routes", &routev3.VirtualHost{
			Name: "all", Domains: []string{"*"},
			Routes: []*routev3.Route{prefixRoute("/api", "api"), prefixRoute("/", "web")},
		})},
	}
	return w
}

func TestPushChangesRoutingWithinOneSecond(t *testing.T) {
	forEachMode(t, func(t *testing.T, delta bool) {
		c := newCP(t)
		c.set("1", webWorld(t, []string{"10.0.0.1:8080", "10.0.0.2:8080"}, []string{"10.0.1.1:9090"}).res())
		s := newSink(t)
		cl := startClient(t, c, delta, s, nil)
		s.wait(5*time.Second, "first sync", func(u Update) bool {
			web, front := service(u, "web"), service(u, "listener:front")
			return web != nil && len(web.Endpoints) == 2 && len(web.Addresses) == 1 && web.Addresses[0].String() == "10.96.0.10:80" &&
				front != nil && len(front.HTTPRoutes) == 1 && len(front.Addresses) == 1
		})
		waitStatus(t, cl, "synced", func(st Status) bool { return st.Connected && st.Synced })
		// The HTTP listener's routes resolved to weir services.
		s.mu.Lock()
		r := s.snap.Lookup(mustAddrPort("10.96.0.20:80"))
		s.mu.Unlock()
		if r.HTTP == nil || r.Service != "listener:front" {
			t.Fatalf("10.96.0.20:80 routes to %+v, want the front listener's HTTP routes", r)
		}

		c.set("2", webWorld(t, []string{"10.0.0.3:8080"}, []string{"10.0.1.1:9090"}).res())
		took := s.wait(time.Second, "endpoint push", func(u Update) bool {
			return slices.Equal(endpointsOf(u, "web"), []string{"10.0.0.3:8080"})
		})
		t.Logf("push applied in %v", took)
		if n := c.nackList(); len(n) > 0 {
			t.Fatalf("unexpected NACKs: %v", n)
		}
	})
}

func TestBadClusterNACKedByNameGoodOnesApply(t *testing.T) {
	forEachMode(t, func(t *testing.T, delta bool) {
		c := newCP(t)
		w := webWorld(t, []string{"10.0.0.1:8080"}, []string{"10.0.1.1:9090"})
		c.set("1", w.res())
		s := newSink(t)
		cl := startClient(t, c, delta, s, nil)
		s.wait(5*time.Second, "first sync", func(u Update) bool { return len(endpointsOf(u, "web")) == 1 })

		bad := edsCluster("broken")
		bad.LbPolicy = clusterv3.Cluster_CLUSTER_PROVIDED
		good := edsCluster("extra")
		w.clusters = append(w.clusters, bad, good)
		// (No endpoints for broken: the ADS snapshot cache answers an EDS
		// request only when it names every resource of the snapshot.)
		w.endpoints = append(w.endpoints, cla("extra", "10.0.3.1:80"))
		c.set("2", w.res())
		s.wait(2*time.Second, "good cluster of the bad push", func(u Update) bool {
			return slices.Equal(endpointsOf(u, "extra"), []string{"10.0.3.1:80"})
		})
		deadline := time.Now().Add(2 * time.Second)
		for len(c.nackList()) == 0 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		nacks := c.nackList()
		if len(nacks) == 0 {
			t.Fatal("no NACK for the bad cluster")
		}
		if !strings.Contains(nacks[0], "broken") || !strings.Contains(nacks[0], "lb_policy") || strings.Contains(nacks[0], "extra") {
			t.Fatalf("NACK detail %q should name cluster broken and its lb_policy, and nothing else", nacks[0])
		}
		s.mu.Lock()
		last := *s.last
		s.mu.Unlock()
		if service(last, "broken") != nil {
			t.Fatal("the rejected cluster was applied")
		}
		if len(endpointsOf(last, "web")) != 1 {
			t.Fatalf("earlier clusters lost: %s", describe(last))
		}
		if st := cl.Status(); st.NACKs == 0 || !strings.Contains(st.LastError, "broken") {
			t.Fatalf("status does not report the NACK: %+v", st)
		}
	})
}

func TestControlPlaneRestartKeepsLastRouting(t *testing.T) {
	forEachMode(t, func(t *testing.T, delta bool) {
		c := newCP(t)
		c.set("1", webWorld(t, []string{"10.0.0.1:8080", "10.0.0.2:8080"}, []string{"10.0.1.1:9090"}).res())
		s := newSink(t)
		cl := startClient(t, c, delta, s, nil)
		s.wait(5*time.Second, "first sync", func(u Update) bool {
			return len(endpointsOf(u, "web")) == 2 && service(u, "listener:front") != nil && len(service(u, "listener:front").HTTPRoutes) == 1
		})
		waitStatus(t, cl, "synced", func(st Status) bool { return st.Synced })
		time.Sleep(100 * time.Millisecond)
		s.mu.Lock()
		published := s.n
		s.mu.Unlock()

		c.stop()
		deadline := time.Now().Add(2 * time.Second)
		for cl.Status().Connected && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if cl.Status().Connected {
			t.Fatal("client still reports connected with the control plane down")
		}
		// Down for a while: the client retries with backoff, and nothing
		// it serves changes.
		time.Sleep(time.Second)
		s.mu.Lock()
		if s.n != published || len(endpointsOf(*s.last, "web")) != 2 {
			t.Fatalf("routing changed while the control plane was down: %d publishes, %s", s.n-published, describe(*s.last))
		}
		s.mu.Unlock()
		streams := c.streams.Load()

		c.start(c.addr)
		deadline = time.Now().Add(3 * time.Second)
		for !cl.Status().Connected && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !cl.Status().Connected {
			t.Fatalf("client did not reconnect: %+v", cl.Status())
		}
		// Back: a push is applied again.
		c.set("2", webWorld(t, []string{"10.0.0.9:8080"}, []string{"10.0.1.1:9090"}).res())
		s.wait(time.Second, "push after restart", func(u Update) bool {
			return slices.Equal(endpointsOf(u, "web"), []string{"10.0.0.9:8080"})
		})
		if got := c.streams.Load() - streams; got < 1 {
			t.Fatalf("server saw %d new streams after restart", got)
		}
		if st := cl.Status(); st.Reconnect < 2 {
			t.Fatalf("status reconnects = %d, want at least 2", st.Reconnect)
		}
	})
}

// With delta, a reconnect resumes from initial_resource_versions: nothing
// unchanged is sent again, only what changed meanwhile.
func TestDeltaReconnectSendsOnlyChanges(t *testing.T) {
	c := newCP(t)
	c.set("1", webWorld(t, []string{"10.0.0.1:8080", "10.0.0.2:8080"}, []string{"10.0.1.1:9090"}).res())
	s := newSink(t)
	cl := startClient(t, c, true, s, nil)
	s.wait(5*time.Second, "first sync", func(u Update) bool {
		return len(endpointsOf(u, "web")) == 2 && service(u, "listener:front") != nil && len(service(u, "listener:front").HTTPRoutes) == 1
	})
	before := map[string]int{}
	for _, u := range []string{ClusterType, EndpointType, ListenerType, RouteType} {
		before[u] = c.sentOf(u)
		if before[u] == 0 {
			t.Fatalf("nothing of %s was sent at first", u)
		}
	}

	c.stop()
	for cl.Status().Connected {
		time.Sleep(10 * time.Millisecond)
	}
	// While it is down, one endpoint set changes.
	c.set("2", webWorld(t, []string{"10.0.0.1:8080", "10.0.0.2:8080"}, []string{"10.0.1.2:9090"}).res())
	c.start(c.addr)
	s.wait(3*time.Second, "the change made while disconnected", func(u Update) bool {
		return slices.Equal(endpointsOf(u, "api"), []string{"10.0.1.2:9090"})
	})
	time.Sleep(200 * time.Millisecond)
	for _, u := range []string{ClusterType, ListenerType, RouteType} {
		if got := c.sentOf(u) - before[u]; got != 0 {
			t.Errorf("%s: %d unchanged resources sent again after reconnect", u, got)
		}
	}
	if got := c.sentOf(EndpointType) - before[EndpointType]; got != 1 {
		t.Errorf("endpoints: %d sent after reconnect, want only the changed one", got)
	}
	c.mu.Lock()
	initial := len(c.deltaInitial)
	c.mu.Unlock()
	if initial < 4 {
		t.Errorf("saw %d requests with initial_resource_versions, want one per type", initial)
	}
}

// A subscribed resource the control plane never sends is declared absent
// once the stream is up, not while connecting.
func TestDoesNotExistTimer(t *testing.T) {
	c := newCP(t)
	w := &world{clusters: []types.Resource{edsCluster("lonely")}}
	snapRes := w.res()
	// The ADS snapshot cache answers EDS only for the full set: keep
	// the cluster's endpoints out of the snapshot altogether.
	delete(snapRes, EndpointType)
	c.set("1", snapRes)
	s := newSink(t)
	cl := startClient(t, c, false, s, func(o *Options) { o.DoesNotExist = 300 * time.Millisecond })
	s.wait(5*time.Second, "cluster", func(u Update) bool { return service(u, "lonely") != nil })
	if st := cl.Status(); st.Synced || len(st.Absent) > 0 {
		t.Fatalf("status before the timer: %+v", st)
	}
	deadline := time.Now().Add(2 * time.Second)
	for len(cl.Status().Absent) == 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	st := cl.Status()
	if !slices.Equal(st.Absent, []string{"endpoint/lonely"}) || !st.Synced {
		t.Fatalf("status after the timer: %+v", st)
	}
}

func TestBackoffGrowsWithJitterAndCaps(t *testing.T) {
	base, maxD := 100*time.Millisecond, 2*time.Second
	for attempt, want := range []time.Duration{100, 200, 400, 800, 1600, 2000, 2000} {
		want *= time.Millisecond
		if attempt == 6 {
			attempt = 40
		}
		for i := 0; i < 50; i++ {
			d := backoffDelay(base, maxD, attempt)
			if d < want*8/10 || d > want*12/10 {
				t.Fatalf("attempt %d: %v outside %v ±20%%", attempt, d, want)
			}
		}
	}
}

func waitStatus(t *testing.T, cl *Client, what string, cond func(Status) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !cond(cl.Status()) {
		if time.Now().After(deadline) {
			t.Fatalf("status not %s within 2s: %+v", what, cl.Status())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// gRFC A46: a resource that turns invalid is NACKed and its last good
// version stays in use; a cluster that goes away takes its endpoint
// subscription with it.
func TestInvalidUpdateKeepsLastGoodVersion(t *testing.T) {
	forEachMode(t, func(t *testing.T, delta bool) {
		c := newCP(t)
		w := webWorld(t, []string{"10.0.0.1:8080"}, []string{"10.0.1.1:9090"})
		c.set("1", w.res())
		s := newSink(t)
		cl := startClient(t, c, delta, s, nil)
		s.wait(5*time.Second, "first sync", func(u Update) bool { return len(endpointsOf(u, "api")) == 1 })
		waitStatus(t, cl, "synced", func(st Status) bool { return st.Synced })

		bad := edsCluster("web")
		bad.ConnectTimeout = durationpb.New(-time.Second)
		w.clusters[0] = bad
		c.set("2", w.res())
		waitStatus(t, cl, "NACKed", func(st Status) bool { return st.NACKs > 0 })
		deadline := time.Now().Add(2 * time.Second)
		for len(c.nackList()) == 0 && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
		if n := c.nackList(); len(n) == 0 || !strings.Contains(n[0], "web: connect_timeout") {
			t.Fatalf("NACK %q does not name web's connect_timeout", n[0])
		}
		s.mu.Lock()
		web := service(*s.last, "web")
		s.mu.Unlock()
		if web == nil || web.Cluster.ConnectTimeout.D() != time.Second || len(web.Endpoints) != 1 {
			t.Fatalf("last good web not kept: %+v", web)
		}

		// api goes away: its service and endpoint subscription with it.
		w = webWorld(t, []string{"10.0.0.1:8080"}, nil)
		w.clusters, w.endpoints = w.clusters[:1], w.endpoints[:1]
		c.set("3", w.res())
		s.wait(2*time.Second, "api removed", func(u Update) bool { return service(u, "api") == nil && service(u, "web") != nil })
		waitStatus(t, cl, "one endpoint set", func(st Status) bool { return st.Resources["endpoint"] == 1 && st.Synced })
	})
}
