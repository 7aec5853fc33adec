package integration

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weir-mesh/weir/integration/kubeworld"
	"github.com/weir-mesh/weir/integration/testworld"
)

func gwPtr[T any](v T) *T { return &v }

// weirCondition returns the condition typ of weir's status.parents entry.
func weirCondition(parents []gwv1.RouteParentStatus, typ string) *metav1.Condition {
	for _, p := range parents {
		if p.ControllerName == "weir.dev/mesh" {
			return meta.FindStatusCondition(p.Conditions, typ)
		}
	}
	return nil
}

// Must show 1 (issue 10): Gateway API routes from a real API server, with
// the CRDs installed from the gateway-api module's standard channel.
//   - an HTTPRoute attached to Service web splits 80/20 between web-stable
//     (pod a) and web-canary (pod b): 1,000 requests land within 5 points;
//   - a header match sends one client (x-user: alice) to the canary only;
//   - status.parents shows Accepted=True, written by weir.dev/mesh;
//   - an HTTPRoute on Service broken naming a Service that does not exist
//     shows ResolvedRefs=False (BackendNotFound) and its requests get 500;
//   - a GRPCRoute on Service grpc sends UnaryCall to grpc-a and every other
//     method (FullDuplexCall) to grpc-b, from a grpc-go client.
func TestKubeGatewayRoutes(t *testing.T) {
	testworld.RequireTool(t, "nginx", "curl")
	k := newKubeNode(t, true)
	k.kw.InstallGatewayAPI(t)
	agentNS := k.kw.Namespace(t, "weir-system", nil).Name // holds the status lease
	k.agentCfg["kubernetes"].(map[string]any)["namespace"] = agentNS
	k.agent = k.StartAgent(t, k.agentCfg)

	clientNS := k.namespace(t, true)
	ns := k.namespace(t, false)
	client := k.mustPod(t, clientNS, "client", nil)
	a, aObj, _ := k.pod(t, ns, "a", nil)
	b, bObj, _ := k.pod(t, ns, "b", nil)
	for _, p := range []*testworld.Pod{a, b} {
		startL7Nginx(t, p)
		startGRPC(t, p)
	}
	shadowPod, shadowObj, _ := k.pod(t, ns, "shadow", nil)
	shadow := startRecorder(t, shadowPod) // on 8080, as nginx
	epA, epB := kubeworld.PodEndpoint(aObj), kubeworld.PodEndpoint(bObj)
	httpPort := corev1.ServicePort{Name: "http", Port: 80, TargetPort: intstr.FromInt(8080), Protocol: corev1.ProtocolTCP}
	grpcPort := corev1.ServicePort{Name: "grpc", Port: 50051, TargetPort: intstr.FromInt(50051), Protocol: corev1.ProtocolTCP}
	service := func(name string, port corev1.ServicePort, ep discoveryv1.Endpoint) netip.AddrPort {
		svc := k.kw.Service(t, ns, name, nil, port)
		k.kw.EndpointSlice(t, svc, ep)
		return netip.AddrPortFrom(netip.MustParseAddr(svc.Spec.ClusterIP), uint16(port.Port))
	}
	// Parents have endpoints of their own (pod a), so traffic the routes
	// did not steer would show up as "a" only.
	web := service("web", httpPort, epA)
	service("web-stable", httpPort, epA)
	service("web-canary", httpPort, epB)
	broken := service("broken", httpPort, epA)
	grpcVIP := service("grpc", grpcPort, epA)
	mirroredVIP := service("mirrored", httpPort, epA)
	service("shadow", httpPort, kubeworld.PodEndpoint(shadowObj))
	service("grpc-a", grpcPort, epA)
	service("grpc-b", grpcPort, epB)

	gw, err := gwclient.NewForConfig(k.kw.Config)
	if err != nil {
		t.Fatal(err)
	}
	ctx := kubeworld.Context(t)
	split := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-split"}}
	split.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("web", 80)}
	split.Spec.Rules = []gwv1.HTTPRouteRule{
		{
			Matches:     []gwv1.HTTPRouteMatch{{Headers: []gwv1.HTTPHeaderMatch{{Name: "x-user", Value: "alice"}}}},
			BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: kubeworld.ServiceBackend("web-canary", 80, 1)}},
		},
		{BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: kubeworld.ServiceBackend("web-stable", 80, 80)}, {BackendRef: kubeworld.ServiceBackend("web-canary", 80, 20)}}},
	}
	missing := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "broken"}}
	missing.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("broken", 0)}
	missing.Spec.Rules = []gwv1.HTTPRouteRule{{BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: kubeworld.ServiceBackend("does-not-exist", 80, 1)}}}}
	byMethod := &gwv1.GRPCRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "by-method"}}
	byMethod.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("grpc", 50051)}
	byMethod.Spec.Rules = []gwv1.GRPCRouteRule{
		{
			Matches:     []gwv1.GRPCRouteMatch{{Method: &gwv1.GRPCMethodMatch{Service: gwPtr("grpc.testing.TestService"), Method: gwPtr("UnaryCall")}}},
			BackendRefs: []gwv1.GRPCBackendRef{{BackendRef: kubeworld.ServiceBackend("grpc-a", 50051, 1)}},
		},
		{BackendRefs: []gwv1.GRPCBackendRef{{BackendRef: kubeworld.ServiceBackend("grpc-b", 50051, 1)}}},
	}
	mirror := &gwv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "mirrored"}}
	mirror.Spec.ParentRefs = []gwv1.ParentReference{kubeworld.ServiceParent("mirrored", 80)}
	mirror.Spec.Rules = []gwv1.HTTPRouteRule{{
		Filters: []gwv1.HTTPRouteFilter{{Type: gwv1.HTTPRouteFilterRequestMirror, RequestMirror: &gwv1.HTTPRequestMirrorFilter{
			BackendRef: kubeworld.ServiceBackend("shadow", 80, 1).BackendObjectReference}}},
		BackendRefs: []gwv1.HTTPBackendRef{{BackendRef: kubeworld.ServiceBackend("web-canary", 80, 1)}},
	}}
	for _, r := range []*gwv1.HTTPRoute{split, missing, mirror} {
		if _, err := gw.GatewayV1().HTTPRoutes(ns).Create(ctx, r, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create HTTPRoute %s: %v", r.Name, err)
		}
	}
	if _, err := gw.GatewayV1().GRPCRoutes(ns).Create(ctx, byMethod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create GRPCRoute: %v", err)
	}
	t.Cleanup(func() {
		// The namespace cleanup does not know route kinds.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = gw.GatewayV1().HTTPRoutes(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
		_ = gw.GatewayV1().GRPCRoutes(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{})
	})

	alice := []string{"-H", "x-user: alice"}
	eventually(t, 20*time.Second, "the header match reaches the canary", func() bool {
		body, err := client.Curl(t, url(web), alice...)
		return err == nil && strings.TrimSpace(body) == "b"
	})

	t.Run("status-accepted", func(t *testing.T) {
		eventually(t, 20*time.Second, "Accepted=True and ResolvedRefs=True on web-split", func() bool {
			got, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "web-split", metav1.GetOptions{})
			if err != nil {
				return false
			}
			acc, res := weirCondition(got.Status.Parents, "Accepted"), weirCondition(got.Status.Parents, "ResolvedRefs")
			return acc != nil && acc.Status == metav1.ConditionTrue && res != nil && res.Status == metav1.ConditionTrue
		})
	})

	t.Run("split-80-20", func(t *testing.T) {
		// 1,000 requests over ten keep-alive connections.
		var urls []string
		for range 100 {
			urls = append(urls, url(web))
		}
		seen := map[string]int{}
		for range 10 {
			out, err := client.Curl(t, urls[0], urls[1:]...)
			if err != nil {
				t.Fatalf("curl: %v: %s", err, out)
			}
			for k, v := range countLines(out) {
				seen[k] += v
			}
		}
		t.Logf("80/20 split over 1000 requests: %v", seen)
		if seen["a"]+seen["b"] != 1000 || seen["a"] < 750 || seen["a"] > 850 {
			t.Fatalf("80/20 split over 1000 requests: %v; want a (web-stable) within 750..850", seen)
		}
	})

	t.Run("header-match-to-canary", func(t *testing.T) {
		var args []string
		for range 49 {
			args = append(args, url(web))
		}
		out, err := client.Curl(t, url(web), append(args, alice...)...)
		if err != nil {
			t.Fatalf("curl: %v: %s", err, out)
		}
		if got := countLines(out); got["b"] != 50 {
			t.Fatalf("50 requests with x-user: alice: %v, want all 50 on the canary b", got)
		}
	})

	t.Run("missing-backend-500", func(t *testing.T) {
		eventually(t, 20*time.Second, "ResolvedRefs=False BackendNotFound on broken", func() bool {
			got, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "broken", metav1.GetOptions{})
			if err != nil {
				return false
			}
			res := weirCondition(got.Status.Parents, "ResolvedRefs")
			acc := weirCondition(got.Status.Parents, "Accepted")
			return res != nil && res.Status == metav1.ConditionFalse && res.Reason == "BackendNotFound" &&
				acc != nil && acc.Status == metav1.ConditionTrue
		})
		got, _ := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "broken", metav1.GetOptions{})
		t.Logf("broken route status: %+v", weirCondition(got.Status.Parents, "ResolvedRefs"))
		args := []string{"-w", "%{http_code}\n", "-o", "/dev/null"}
		for range 19 {
			args = append(args, url(broken), "-o", "/dev/null")
		}
		var out string
		eventually(t, 20*time.Second, "every request to the broken route answered 500", func() bool {
			var err error
			out, err = client.Curl(t, url(broken), args...)
			return err == nil && countLines(out)["500"] == 20
		})
		t.Logf("20 requests to the route with a missing backend: %v", countLines(out))
	})

	t.Run("request-mirror", func(t *testing.T) {
		eventually(t, 20*time.Second, "Accepted=True and ResolvedRefs=True on the mirroring route", func() bool {
			got, err := gw.GatewayV1().HTTPRoutes(ns).Get(ctx, "mirrored", metav1.GetOptions{})
			if err != nil {
				return false
			}
			acc, res := weirCondition(got.Status.Parents, "Accepted"), weirCondition(got.Status.Parents, "ResolvedRefs")
			return acc != nil && acc.Status == metav1.ConditionTrue && res != nil && res.Status == metav1.ConditionTrue
		})
		eventually(t, 20*time.Second, "the route steers the mirrored Service to the canary", func() bool {
			body, err := client.Curl(t, url(mirroredVIP)+"probe")
			return err == nil && strings.TrimSpace(body) == "b"
		})
		var args []string
		for range 9 {
			args = append(args, url(mirroredVIP)+"copied")
		}
		out, err := client.Curl(t, url(mirroredVIP)+"copied", args...)
		if err != nil || countLines(out)["b"] != 10 {
			t.Fatalf("10 requests to the mirroring route: %v: %v, want all 10 answered by b", err, countLines(out))
		}
		copied := func(c copySeen) bool { return c.path == "/copied" && c.method == "GET" }
		deadline := time.Now().Add(10 * time.Second)
		for shadow.count(copied) != 10 && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if n := shadow.count(copied); n != 10 {
			t.Fatalf("the shadow Service got %d copies of 10 requests", n)
		}
	})

	t.Run("grpc-route-by-method", func(t *testing.T) {
		cc, err := grpc.NewClient("passthrough:///"+grpcVIP.String(),
			grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return client.Dial(addr, 5*time.Second)
			}))
		if err != nil {
			t.Fatal(err)
		}
		defer cc.Close()
		c := testpb.NewTestServiceClient(cc)
		unary := map[string]int{}
		for range 20 {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			r, err := c.UnaryCall(ctx, &testpb.SimpleRequest{})
			cancel()
			if err != nil {
				t.Fatalf("UnaryCall: %v", err)
			}
			unary[r.GetHostname()]++
		}
		streamed := map[string]int{}
		for i := range 5 {
			got, err := duplexOnce(c, fmt.Sprintf("m%d", i))
			if err != nil {
				t.Fatalf("FullDuplexCall: %v", err)
			}
			host, _, _ := strings.Cut(got, ":")
			streamed[host]++
		}
		t.Logf("UnaryCall answered by %v; FullDuplexCall by %v", unary, streamed)
		if unary["a"] != 20 || streamed["b"] != 5 {
			t.Fatalf("UnaryCall answered by %v (want a only), FullDuplexCall by %v (want b only)", unary, streamed)
		}
		got, err := gw.GatewayV1().GRPCRoutes(ns).Get(ctx, "by-method", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if c := weirCondition(got.Status.Parents, "Accepted"); c == nil || c.Status != metav1.ConditionTrue {
			t.Errorf("GRPCRoute Accepted %+v", c)
		}
	})
}

// duplexOnce sends one message on a new FullDuplexCall stream and returns
// the echo ("<server>:<msg>").
func duplexOnce(c testpb.TestServiceClient, msg string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.FullDuplexCall(ctx)
	if err != nil {
		return "", err
	}
	if err := st.Send(&testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte(msg)}}); err != nil {
		return "", err
	}
	r, err := st.Recv()
	if err != nil {
		return "", err
	}
	if err := st.CloseSend(); err != nil {
		return "", err
	}
	if _, err := st.Recv(); err != io.EOF {
		return "", fmt.Errorf("stream end: %v", err)
	}
	return string(r.GetPayload().GetBody()), nil
}
