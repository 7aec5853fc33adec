package xds

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// vipOf is the listener address of cluster i in onDemandWorld.
func vipOf(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), 80)
}

// onDemandWorld is n EDS clusters, each with one endpoint and a tcp_proxy
// listener on its own VIP.
func onDemandWorld(t testing.TB, n int) *world {
	w := &world{}
	for i := range n {
		name := fmt.Sprintf("svc-%05d", i)
		w.clusters = append(w.clusters, edsCluster(name))
		w.endpoints = append(w.endpoints, cla(name, fmt.Sprintf("10.1.%d.%d:8080", i>>8, i&255)))
		w.listeners = append(w.listeners, tcpListener(t, "l-"+name, vipOf(i).String(), name))
	}
	return w
}

func (c *cp) subCount(url, name string) (subs, unsubs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.subs[url][name], c.unsubs[url][name]
}

func (c *cp) subTotal(url string) (subs, unsubs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, v := range c.subs[url] {
		subs += v
	}
	for _, v := range c.unsubs[url] {
		unsubs += v
	}
	return subs, unsubs
}

func heapInUse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

func waitStatusFor(t *testing.T, cl *Client, d time.Duration, what string, cond func(Status) bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond(cl.Status()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; status %+v", what, d, cl.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// With 10k clusters on the control plane and connections to 3 of them,
// the on-demand client holds those 3 clusters and endpoints (and every
// listener), the first connection to each gets its cluster within the
// timeout, and the heap is compared with a client holding everything.
func TestOnDemandTenThousandClusters(t *testing.T) {
	const n = 10000
	c := newCP(t)
	c.set("v1", onDemandWorld(t, n).res())
	cdsSent := func() int { return c.sentOf(resource.ClusterType) }

	measure := func(onDemand bool) (heap uint64, st Status, firsts []time.Duration) {
		base := heapInUse()
		s := newSink(t)
		ctx, cancel := context.WithCancel(context.Background())
		opts := Options{
			Target: c.addr, Delta: true, Node: nodeOf(), Publish: s.publish, Log: testLogger(t),
			OnDemand: onDemand, OnDemandTimeout: 5 * time.Second, OnDemandIdle: time.Minute,
		}
		cl, err := New(opts)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { cl.Run(ctx); close(done) }()
		defer func() { cancel(); <-done }()
		waitStatusFor(t, cl, 30*time.Second, "synced", func(st Status) bool { return st.Synced && st.Resources["listener"] == n })
		if onDemand {
			for _, i := range []int{17, 4242, 9999} {
				start := time.Now()
				if err := cl.Await(ctx, vipOf(i)); err != nil {
					t.Fatalf("first connection to svc-%05d: %v", i, err)
				}
				firsts = append(firsts, time.Since(start))
				s.mu.Lock()
				r := s.snap.Lookup(vipOf(i))
				s.mu.Unlock()
				if r.Cluster == nil || len(r.Cluster.Stats().Endpoints) != 1 {
					t.Fatalf("svc-%05d: route after Await = %+v, want its cluster with 1 endpoint", i, r)
				}
				// Held now: a second connection does not wait.
				start = time.Now()
				if err := cl.Await(ctx, vipOf(i)); err != nil || time.Since(start) > 50*time.Millisecond {
					t.Fatalf("second connection to svc-%05d: %v after %v", i, err, time.Since(start))
				}
			}
			// Not on the control plane's listeners: not on demand, no wait.
			if err := cl.Await(ctx, netip.MustParseAddrPort("192.0.2.1:80")); err != nil {
				t.Fatal(err)
			}
		} else {
			waitStatusFor(t, cl, 60*time.Second, "all held", func(st Status) bool { return st.Resources["endpoint"] == n })
		}
		heap = heapInUse() - base
		st = cl.Status()
		s.mu.Lock()
		s.last, s.snap = nil, nil // the client's own memory only, next round
		s.mu.Unlock()
		return heap, st, firsts
	}

	sentBefore := cdsSent()
	odHeap, odSt, firsts := measure(true)
	odSent := cdsSent() - sentBefore
	if odSt.Resources["cluster"] != 3 || odSt.Resources["endpoint"] != 3 || odSt.Resources["listener"] != n {
		t.Fatalf("on demand holds %v, want 3 clusters, 3 endpoints, %d listeners", odSt.Resources, n)
	}
	if odSent != 3 {
		t.Errorf("control plane sent %d clusters on demand, want 3", odSent)
	}
	if subs, _ := c.subTotal(resource.ClusterType); subs != 3 {
		t.Errorf("clusters subscribed: %d names, want 3", subs)
	}
	allHeap, allSt, _ := measure(false)
	t.Logf("on demand: held %v (status %+v), heap +%.1f MiB; first connection waited %v", odSt.Resources, *odSt.OnDemand, float64(odHeap)/(1<<20), firsts)
	t.Logf("everything (delta wildcard): held %v, heap +%.1f MiB", allSt.Resources, float64(allHeap)/(1<<20))
	for _, d := range firsts {
		if d > 5*time.Second {
			t.Errorf("first connection waited %v, over the 5s timeout", d)
		}
	}
	if odHeap >= allHeap {
		t.Errorf("on demand heap %d >= wildcard heap %d", odHeap, allHeap)
	}
}

func nodeOf() *corev3.Node { return &corev3.Node{Id: testNode, Cluster: "test"} }

// A cluster no connection asked for within the idle time is unsubscribed
// (clusters and endpoints, counted on the control plane), its routing
// goes, and the next connection subscribes it again; one kept busy stays.
// An HTTP listener fetches every backend its routes name; a cluster the
// control plane does not have times the connection out.
func TestOnDemandIdleAndTimeout(t *testing.T) {
	c := newCP(t)
	w := onDemandWorld(t, 50)
	w.routes = append(w.routes, routeConfig("web", &routev3.VirtualHost{Name: "web", Domains: []string{"*"},
		Routes: []*routev3.Route{prefixRoute("/a", "svc-00040"), prefixRoute("/", "svc-00041")}}))
	w.listeners = append(w.listeners, httpListener(t, "l-web", "10.97.0.1:80", "web"),
		tcpListener(t, "l-ghost", "10.97.0.2:80", "ghost"))
	c.set("v1", w.res())
	s := newSink(t)
	cl := startClient(t, c, true, s, func(o *Options) {
		// Idle after 2 s: the loop below keeps svc-00002 busy every 100 ms,
		// which on a loaded machine can stretch past a second.
		o.OnDemand, o.OnDemandTimeout, o.OnDemandIdle = true, 700*time.Millisecond, 2*time.Second
	})
	waitStatusFor(t, cl, 10*time.Second, "synced", func(st Status) bool { return st.Synced && st.Resources["listener"] == 52 })
	ctx := context.Background()
	for _, i := range []int{1, 2} {
		if err := cl.Await(ctx, vipOf(i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Await(ctx, netip.MustParseAddrPort("10.97.0.1:80")); err != nil {
		t.Fatal(err)
	}
	if st := cl.Status(); st.Resources["cluster"] != 4 || st.Resources["endpoint"] != 4 {
		t.Fatalf("held %v, want 4 clusters and endpoints", st.Resources)
	}
	start := time.Now()
	if err := cl.Await(ctx, netip.MustParseAddrPort("10.97.0.2:80")); err == nil {
		t.Fatal("a cluster the control plane does not have: Await succeeded")
	} else if d := time.Since(start); d < 600*time.Millisecond || d > 2*time.Second {
		t.Fatalf("timeout after %v, want about 700ms (%v)", d, err)
	}

	// Keep svc-00002 busy; svc-00001, the HTTP backends and ghost go idle.
	deadline := time.Now().Add(8 * time.Second)
	for time.Now().Before(deadline) {
		if err := cl.Await(ctx, vipOf(2)); err != nil {
			t.Fatal(err)
		}
		if cl.Status().Resources["cluster"] == 1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	st := cl.Status()
	if st.Resources["cluster"] != 1 || st.Resources["endpoint"] != 1 {
		t.Fatalf("after idle: held %v, want only svc-00002", st.Resources)
	}
	// The unsubscriptions reach the control plane after the client
	// dropped the resources: wait (bounded) for them to be counted there.
	unsubscribed := func(typ, name string) int {
		_, un := c.subCount(typ, name)
		for end := time.Now().Add(5 * time.Second); un == 0 && time.Now().Before(end); {
			time.Sleep(20 * time.Millisecond)
			_, un = c.subCount(typ, name)
		}
		return un
	}
	for _, name := range []string{"svc-00001", "svc-00040", "svc-00041", "ghost"} {
		if un := unsubscribed(resource.ClusterType, name); un != 1 {
			t.Errorf("cluster %s unsubscribed %d times on the control plane, want 1", name, un)
		}
	}
	if un := unsubscribed(resource.EndpointType, "svc-00001"); un != 1 {
		t.Errorf("endpoints of svc-00001 unsubscribed %d times, want 1", un)
	}
	if _, un := c.subCount(resource.ClusterType, "svc-00002"); un != 0 {
		t.Errorf("busy svc-00002 unsubscribed %d times", un)
	}
	s.mu.Lock()
	gone := s.snap.Lookup(vipOf(1)).Cluster == nil
	s.mu.Unlock()
	if !gone {
		t.Error("svc-00001 still routed after it went idle")
	}
	if st.OnDemand.Dropped != 4 {
		t.Errorf("status %+v, want 4 dropped", *st.OnDemand)
	}
	// Needed again: subscribed again, routed again.
	if err := cl.Await(ctx, vipOf(1)); err != nil {
		t.Fatal(err)
	}
	if sub, _ := c.subCount(resource.ClusterType, "svc-00001"); sub != 2 {
		t.Errorf("svc-00001 subscribed %d times, want 2", sub)
	}
	s.mu.Lock()
	back := s.snap.Lookup(vipOf(1)).Cluster != nil
	s.mu.Unlock()
	if !back {
		t.Error("svc-00001 not routed after it was needed again")
	}
	// A reconnect resubscribes the wanted clusters only.
	c.restart(100 * time.Millisecond)
	waitStatusFor(t, cl, 10*time.Second, "reconnected", func(st Status) bool { return st.Connected && st.Reconnect == 2 && st.Synced })
	if err := cl.Await(ctx, vipOf(1)); err != nil {
		t.Fatal(err)
	}
	if st := cl.Status(); st.Resources["cluster"] != 2 {
		t.Errorf("after reconnect held %v, want 2 clusters", st.Resources)
	}
}

func TestOnDemandNeedsDelta(t *testing.T) {
	_, err := New(Options{Target: "x:1", Node: nodeOf(), Publish: func(Update) error { return nil }, OnDemand: true})
	if err == nil {
		t.Fatal("on demand over state of the world accepted")
	}
}

// A listener on a wildcard address (0.0.0.0:9000) cannot be indexed by
// destination: its cluster is subscribed up front and never goes idle,
// and is dropped once no listener names it.
func TestOnDemandWildcardListenerPinsItsCluster(t *testing.T) {
	c := newCP(t)
	w := onDemandWorld(t, 5)
	w.listeners = append(w.listeners, tcpListener(t, "l-any", "0.0.0.0:9000", "svc-00003"))
	c.set("v1", w.res())
	s := newSink(t)
	cl := startClient(t, c, true, s, func(o *Options) {
		o.OnDemand, o.OnDemandTimeout, o.OnDemandIdle = true, 500*time.Millisecond, 300*time.Millisecond
	})
	waitStatusFor(t, cl, 10*time.Second, "pinned cluster held", func(st Status) bool {
		return st.Synced && st.Resources["listener"] == 6 && st.Resources["cluster"] == 1 && st.Resources["endpoint"] == 1
	})
	time.Sleep(time.Second) // over three idle times
	if st := cl.Status(); st.Resources["cluster"] != 1 {
		t.Fatalf("pinned cluster went idle: %v", st.Resources)
	}
	s.mu.Lock()
	r := s.snap.Lookup(netip.MustParseAddrPort("192.0.2.9:9000"))
	s.mu.Unlock()
	if r.Cluster == nil {
		t.Fatal("0.0.0.0:9000 not routed to its cluster")
	}
	w.listeners = w.listeners[:5]
	c.set("v2", w.res())
	waitStatusFor(t, cl, 5*time.Second, "unpinned cluster dropped", func(st Status) bool { return st.Resources["cluster"] == 0 })
}

// Many connections at once to services not held: one subscription each,
// every connection gets its cluster.
func TestOnDemandConcurrentConnections(t *testing.T) {
	c := newCP(t)
	c.set("v1", onDemandWorld(t, 100).res())
	s := newSink(t)
	cl := startClient(t, c, true, s, func(o *Options) { o.OnDemand = true })
	waitStatusFor(t, cl, 10*time.Second, "synced", func(st Status) bool { return st.Synced && st.Resources["listener"] == 100 })
	errs := make(chan error, 50)
	for g := range 50 {
		go func() { errs <- cl.Await(context.Background(), vipOf(g%5)) }()
	}
	for range 50 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		if sub, _ := c.subCount(resource.ClusterType, fmt.Sprintf("svc-%05d", i)); sub != 1 {
			t.Errorf("svc-%05d subscribed %d times, want 1", i, sub)
		}
	}
	if st := cl.Status(); st.Resources["cluster"] != 5 {
		t.Errorf("held %v, want 5 clusters", st.Resources)
	}
}

// A cluster the control plane never sends fails the waiting connection
// once it is declared absent (before the on-demand timeout), and later
// connections at once.
func TestOnDemandAbsentClusterFailsFast(t *testing.T) {
	c := newCP(t)
	w := onDemandWorld(t, 2)
	w.listeners = append(w.listeners, tcpListener(t, "l-ghost", "10.97.0.2:80", "ghost"))
	c.set("v1", w.res())
	cl := startClient(t, c, true, newSink(t), func(o *Options) {
		o.OnDemand, o.OnDemandTimeout, o.DoesNotExist = true, 3*time.Second, 200*time.Millisecond
	})
	waitStatusFor(t, cl, 10*time.Second, "synced", func(st Status) bool { return st.Synced && st.Resources["listener"] == 3 })
	ghost := netip.MustParseAddrPort("10.97.0.2:80")
	start := time.Now()
	if err := cl.Await(context.Background(), ghost); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("first connection to a missing cluster: %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("failed after %v, want about the 200ms does-not-exist time", d)
	}
	start = time.Now()
	if err := cl.Await(context.Background(), ghost); err == nil || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("second connection: %v after %v, want an error at once", err, time.Since(start))
	}
	if err := cl.Await(context.Background(), vipOf(1)); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkAwait times what the engine pays per outbound connection with
// on-demand clusters on: a destination not served on demand, and one
// whose cluster is held.
func BenchmarkAwait(b *testing.B) {
	cl, err := New(Options{Target: "x:1", Delta: true, OnDemand: true, Node: nodeOf(), Publish: func(Update) error { return nil }})
	if err != nil {
		b.Fatal(err)
	}
	idx := map[netip.AddrPort][]string{}
	for i := range 10000 {
		idx[vipOf(i)] = []string{fmt.Sprintf("svc-%05d", i)}
	}
	cl.od.index.Store(&idx)
	cl.od.entries["svc-00007"] = &demandEntry{held: true, closed: true, ready: make(chan struct{})}
	ctx := context.Background()
	b.Run("other", func(b *testing.B) {
		dst := netip.MustParseAddrPort("192.0.2.1:80")
		b.ReportAllocs()
		for b.Loop() {
			if err := cl.Await(ctx, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("held", func(b *testing.B) {
		dst := vipOf(7)
		b.ReportAllocs()
		for b.Loop() {
			if err := cl.Await(ctx, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
}
