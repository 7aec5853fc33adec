package xds

import (
	"fmt"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// Endpoint pushes deliver the same services with the changed sets in
// Update.Endpoints, cumulated, until many changed: then new services hold
// them. Every update routes exactly as the whole routing built afresh
// (the sink checks), and AllServices always has the latest endpoints.
func TestEndpointPushesCumulateThenFold(t *testing.T) {
	const n = 100
	s := newSink(t)
	cl, err := New(Options{Target: "unused:1", Delta: true, Node: &corev3.Node{Id: "t"}, Publish: s.publish, Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	cds := response{url: ClusterType, nonce: "c"}
	eds := response{url: EndpointType, nonce: "e"}
	for i := range n {
		name := fmt.Sprintf("svc-%03d", i)
		cds.delta = append(cds.delta, deltaResource(t, name, edsCluster(name)))
		eds.delta = append(eds.delta, deltaResource(t, name, cla(name, fmt.Sprintf("10.0.%d.1:80", i))))
	}
	for _, r := range []response{cds, eds} {
		if err := cl.apply(nullStream{}, r); err != nil {
			t.Fatal(err)
		}
	}
	base := s.from.Services
	folded := 0
	for i := range foldEndpoints(n) + 1 {
		name := fmt.Sprintf("svc-%03d", i)
		addr := fmt.Sprintf("10.9.%d.1:80", i)
		r := response{url: EndpointType, nonce: fmt.Sprint("p", i), delta: []*discovery.Resource{deltaResource(t, name, cla(name, addr))}}
		if err := cl.apply(nullStream{}, r); err != nil {
			t.Fatal(err)
		}
		u := s.from
		if got := s.last.Services[i].Endpoints[0].Addr.String(); got != addr {
			t.Fatalf("push %d: %s has %s, want %s", i, name, got, addr)
		}
		if i < foldEndpoints(n) {
			if !sameSlice(u.Services, base) || len(u.Endpoints) != i+1 {
				t.Fatalf("push %d: same services %v, %d endpoint sets carried, want %d", i, sameSlice(u.Services, base), len(u.Endpoints), i+1)
			}
			continue
		}
		if sameSlice(u.Services, base) || u.Endpoints != nil {
			t.Fatalf("push %d: not folded (%d endpoint sets carried)", i, len(u.Endpoints))
		}
		folded++
	}
	if folded != 1 {
		t.Fatalf("folded %d times", folded)
	}
	if st := cl.Status(); st.NACKs != 0 {
		t.Fatalf("NACKs: %s", st.LastError)
	}
}
