package integration

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weir-mesh/weir/integration/kubeworld"
)

// istioVersion is what the agent tells istiod it speaks, as a sidecar
// would; istiod gates newer configuration on it.
const istioVersion = "1.29.0"

// TestXDSIstiod: a real istiod watching the test's API server is the
// agent's only source of services. The agent, identified as a proxy in
// istiod's node id format, receives the clusters and endpoints of a
// Kubernetes Service over state of the world and delta, and routes a
// captured pod's requests to the ClusterIP by them; an EndpointSlice edit
// moves the traffic within 2 s; istiod restarted mid-test costs no request.
func TestXDSIstiod(t *testing.T) {
	for _, mode := range []string{"delta", "sotw"} {
		t.Run(mode, func(t *testing.T) {
			// The package has no shared world: istiod watches this node's.
			k := newKubeNode(t, true)
			istiod := kubeworld.StartIstiod(t, k.kw)
			cfg := map[string]any{}
			for key, v := range k.agentCfg {
				cfg[key] = v
			}
			cfg["xds"] = map[string]any{
				// istiod sees the agent through a relay out of the node
				// netns, like the API server.
				"address": k.Forward(t, istiod.XDSAddr),
				"mode":    mode,
				// istiod's node id: type~ip~id.namespace~namespace.svc.domain.
				"nodeId":     "sidecar~192.0.2.10~" + k.nodeName + ".weir-system~weir-system.svc.cluster.local",
				"precedence": "xds",
				"metadata": map[string]any{
					"ISTIO_VERSION": istioVersion,
					"CLUSTER_ID":    "Kubernetes",
					"NAMESPACE":     "weir-system",
				},
			}
			k.agent = k.StartAgent(t, cfg)
			ns := k.namespace(t, true)
			backNS := k.namespace(t, false)
			client := k.mustPod(t, ns, "client", nil)
			a, aObj, err := k.pod(t, backNS, "a", map[string]string{"app": "web"})
			if err != nil {
				t.Fatal(err)
			}
			b, bObj, err := k.pod(t, backNS, "b", map[string]string{"app": "web"})
			if err != nil {
				t.Fatal(err)
			}
			a.StartNginx(t, 8080, "a")
			b.StartNginx(t, 8080, "b")
			svc := k.kw.Service(t, backNS, "web", map[string]string{"app": "web"},
				corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP})
			slice := k.kw.EndpointSlice(t, svc, kubeworld.PodEndpoint(aObj))
			vip := netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), 80)
			get := func() (string, error) {
				body, err := client.Get(url(vip))
				if err != nil && strings.Contains(err.Error(), "unreachable") {
					// A connect that left the pod uncaptured: say whether a
					// stale conntrack entry was why (conntrack_test.go).
					stale, lerr := unansweredTo(client.Path, vip)
					err = fmt.Errorf("%w (unanswered conntrack entries to %s in the client pod: %v %v)", err, vip, stale, lerr)
				}
				return strings.TrimSpace(body), err
			}
			// dump is what the agent holds from xDS, for failure messages.
			dump := func() string {
				d, err := k.agent.Get("/config_dump")
				if err != nil {
					return err.Error()
				}
				var v struct {
					XDS    json.RawMessage `json:"xds"`
					Routes json.RawMessage `json:"routes"`
				}
				if err := json.Unmarshal([]byte(d), &v); err != nil {
					return err.Error()
				}
				routes := string(v.Routes)
				if len(routes) > 8000 {
					routes = routes[:8000] + "..."
				}
				return fmt.Sprintf("xds: %s\nroutes: %s", v.XDS, routes)
			}

			// The Service reaches the agent only through istiod.
			wait := pollFor(20*time.Second, func() bool {
				body, err := get()
				return err == nil && body == "a"
			})
			if wait < 0 {
				t.Fatalf("the Service %s/web at %s never answered through istiod's xDS\nagent: %s\nistiod connections: %s\nistiod services: %s\nistiod log: %s",
					backNS, vip, dump(), istiod.Debug("/debug/adsz"), istiod.Debug("/debug/registryz"), istiod.LogTail())
			}
			t.Logf("%s: Service reachable by istiod's xDS %v after it was created", mode, wait.Round(time.Millisecond))
			if got := k.agent.Metric(t, "weir_xds_connected"); got != 1 {
				t.Fatalf("weir_xds_connected = %v", got)
			}
			// istiod's outbound HTTP listener 0.0.0.0_80 names route
			// configuration "80", whose virtual host for the Service leads
			// to cluster outbound|80||web.<ns>.svc.cluster.local.
			for _, typ := range []string{"listener", "route", "cluster", "endpoint"} {
				if got := k.agent.Metric(t, `weir_xds_resources{type="`+typ+`"}`); got < 1 {
					t.Fatalf("%s resources held from istiod: %v\n%s", typ, got, dump())
				}
			}
			if d := dump(); !strings.Contains(d, `"name":"`+backNS+`/web:80"`) || !strings.Contains(d, `"name":"listener:0.0.0.0_80"`) {
				t.Fatalf("the agent holds no service %s/web:80 and listener:0.0.0.0_80 from istiod:\n%s", backNS, d)
			}

			// The EndpointSlice moves to b: within 2 s every request goes there.
			slice.Endpoints = []discoveryv1.Endpoint{kubeworld.PodEndpoint(bObj)}
			slice, err = k.kw.Client.DiscoveryV1().EndpointSlices(backNS).Update(kubeworld.Context(t), slice, metav1.UpdateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			for {
				body, err := get()
				if err == nil && body == "b" {
					break
				}
				if time.Since(start) > 2*time.Second {
					t.Fatalf("2s after the EndpointSlice edit the Service answers %q (%v)\nagent config: %s", body, err, dump())
				}
				time.Sleep(20 * time.Millisecond)
			}
			t.Logf("%s: EndpointSlice edit followed in %v", mode, time.Since(start).Round(time.Millisecond))

			// istiod restarted while a client keeps sending: none fails.
			stopLoad := steadyLoad(t, get, "b")
			time.Sleep(300 * time.Millisecond)
			istiod.Stop()
			waitMetric(t, k.agent, "weir_xds_connected", 0, 10*time.Second)
			time.Sleep(time.Second)
			if err := istiod.Start(); err != nil {
				t.Fatal(err)
			}
			waitMetric(t, k.agent, "weir_xds_connected", 1, 60*time.Second)
			time.Sleep(time.Second)
			ok, failed := stopLoad()
			if failed != 0 || ok < 20 {
				t.Fatalf("across the istiod restart: %d requests failed, %d succeeded\nistiod log: %s", failed, ok, istiod.LogTail())
			}
			t.Logf("%s: %d requests across the istiod restart, 0 failed", mode, ok)

			// And it follows the API again after the restart.
			slice.Endpoints = []discoveryv1.Endpoint{kubeworld.PodEndpoint(aObj)}
			if _, err := k.kw.Client.DiscoveryV1().EndpointSlices(backNS).Update(kubeworld.Context(t), slice, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if pollFor(10*time.Second, func() bool { body, err := get(); return err == nil && body == "a" }) < 0 {
				t.Fatalf("after istiod's restart an EndpointSlice edit is not followed\nagent config: %s", dump())
			}
		})
	}
}

// pollFor polls cond until it holds or d passes; it returns how long
// it took, or -1.
func pollFor(d time.Duration, cond func() bool) time.Duration {
	start := time.Now()
	for !cond() {
		if time.Since(start) > d {
			return -1
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}
