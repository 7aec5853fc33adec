package xds

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/weir-mesh/weir/proxy/route"
)

// nullStream drops requests: the benchmark drives apply directly.
type nullStream struct{}

func (nullStream) send(*typeState, *ackInfo) error { return nil }
func (nullStream) recv() (response, error)         { select {} }

func deltaResource(b testing.TB, name string, m proto.Message) *discovery.Resource {
	a, err := anypb.New(m)
	if err != nil {
		b.Fatal(err)
	}
	return &discovery.Resource{Name: name, Version: "1", Resource: a}
}

// BenchmarkPushOneEndpoint10kClusters measures one delta push that changes
// one endpoint set in a 10k-cluster snapshot, from the decoded response to
// the new route snapshot published (decode, store, compose, route.Build
// with the previous snapshot).
func BenchmarkPushOneEndpoint10kClusters(b *testing.B) {
	const n = 10000
	var table route.Table
	var from *Update
	cl, err := New(Options{
		Target: "unused:1", Delta: true, Node: &corev3.Node{Id: "bench"},
		Publish: func(u Update) error {
			snap, err := u.Snapshot(table.Load(), from)
			if err != nil {
				return err
			}
			table.Store(snap)
			from = &u
			return nil
		},
		Log: testLogger(b),
	})
	if err != nil {
		b.Fatal(err)
	}
	cds := response{url: ClusterType, nonce: "c1"}
	eds := response{url: EndpointType, nonce: "e1"}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("svc-%05d", i)
		cds.delta = append(cds.delta, deltaResource(b, name, edsCluster(name)))
		eds.delta = append(eds.delta, deltaResource(b, name, cla(name, fmt.Sprintf("10.%d.%d.1:8080", i/256, i%256), fmt.Sprintf("10.%d.%d.2:8080", i/256, i%256))))
	}
	for _, r := range []response{cds, eds} {
		if err := cl.apply(nullStream{}, r); err != nil {
			b.Fatal(err)
		}
	}
	if got := len(table.Load().Clusters()); got != n {
		b.Fatalf("%d clusters after the initial push, want %d", got, n)
	}
	pushes := [2]response{}
	for i := range pushes {
		pushes[i] = response{url: EndpointType, nonce: fmt.Sprint("p", i), delta: []*discovery.Resource{
			deltaResource(b, "svc-04242", cla("svc-04242", fmt.Sprintf("10.99.0.%d:8080", i+1))),
		}}
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	for i := 0; i < b.N; i++ {
		if err := cl.apply(nullStream{}, pushes[i%2]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu)
	if st := cl.Status(); st.NACKs != 0 {
		b.Fatalf("NACKs: %s", st.LastError)
	}
}

// BenchmarkPushOneEndpoint10kClustersSotW is the same change over state of
// the world, where the endpoint response carries all 10k sets again.
func BenchmarkPushOneEndpoint10kClustersSotW(b *testing.B) {
	const n = 10000
	var table route.Table
	var from *Update
	cl, err := New(Options{
		Target: "unused:1", Node: &corev3.Node{Id: "bench"},
		Publish: func(u Update) error {
			snap, err := u.Snapshot(table.Load(), from)
			if err != nil {
				return err
			}
			table.Store(snap)
			from = &u
			return nil
		},
		Log: testLogger(b),
	})
	if err != nil {
		b.Fatal(err)
	}
	anyOf := func(m proto.Message) *anypb.Any {
		a, err := anypb.New(m)
		if err != nil {
			b.Fatal(err)
		}
		return a
	}
	cds := response{url: ClusterType, nonce: "c1", version: "1"}
	var eds [2]response
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("svc-%05d", i)
		cds.resources = append(cds.resources, anyOf(edsCluster(name)))
		a := anyOf(cla(name, fmt.Sprintf("10.%d.%d.1:8080", i/256, i%256), fmt.Sprintf("10.%d.%d.2:8080", i/256, i%256)))
		for v := range eds {
			eds[v].resources = append(eds[v].resources, a)
		}
	}
	for v := range eds {
		eds[v].url, eds[v].nonce, eds[v].version = EndpointType, fmt.Sprint("e", v), fmt.Sprint(v)
		eds[v].resources = append([]*anypb.Any(nil), eds[v].resources...)
		eds[v].resources[4242] = anyOf(cla("svc-04242", fmt.Sprintf("10.99.0.%d:8080", v+1)))
	}
	for _, r := range []response{cds, eds[0]} {
		if err := cl.apply(nullStream{}, r); err != nil {
			b.Fatal(err)
		}
	}
	if got := len(table.Load().Clusters()); got != n {
		b.Fatalf("%d clusters after the initial push, want %d", got, n)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	for i := 0; i < b.N; i++ {
		if err := cl.apply(nullStream{}, eds[(i+1)%2]); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	reportCPU(b, cpu)
	if st := cl.Status(); st.NACKs != 0 {
		b.Fatalf("NACKs: %s", st.LastError)
	}
}

// cpuTime is the process's user and system CPU time so far. Reported per
// push beside the wall time, it shows the cost of a push on a machine
// shared with other work, where wall time mostly measures waiting.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, since time.Duration) {
	b.ReportMetric(float64(cpuTime()-since)/float64(b.N), "cpu-ns/op")
}
