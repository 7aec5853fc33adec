package kube

// Gateway API routes from the cluster (the GAMMA pattern): HTTPRoutes and
// GRPCRoutes whose parentRefs name a Service (group "", kind Service) feed
// the HTTP routes of that Service's ports. Package gwroute translates;
// gatewaystatus.go writes the status.
//
// The CRDs are optional. Without them the feature is off, said once in
// the log; discovery is asked again every GatewayRecheck, so CRDs
// installed later are picked up without a restart. Only the kinds that
// exist are watched, so no informer retries a missing resource forever.
// CRDs removed while the agent runs leave their informers retrying (client-go
// backs off); restart the agent after removing them.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/tools/cache"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gwlisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"

	"github.com/weir-mesh/weir/agent/kube/gwroute"
	"github.com/weir-mesh/weir/proxy/route"
)

// DefaultGatewayRecheck is how often the agent asks discovery whether the
// Gateway API CRDs it does not watch yet were installed.
const DefaultGatewayRecheck = 30 * time.Second

// gateway is a Source's Gateway API half.
type gateway struct {
	client  gwclient.Interface
	disco   discovery.DiscoveryInterface
	recheck time.Duration
	log     *slog.Logger
	factory gwinformers.SharedInformerFactory

	// mu guards the listers (nil until that kind's CRD exists and its
	// cache synced) and last.
	mu   sync.Mutex
	http gwlisters.HTTPRouteLister
	grpc gwlisters.GRPCRouteLister
	// last is the newest translation, for the status writer.
	last gwroute.Translation

	// kick wakes the status writer (coalesced).
	kick chan struct{}
}

func newGateway(client gwclient.Interface, recheck time.Duration, log *slog.Logger) *gateway {
	return &gateway{
		client:  client,
		disco:   client.Discovery(),
		recheck: recheck,
		log:     log,
		factory: gwinformers.NewSharedInformerFactory(client, 0),
		kick:    make(chan struct{}, 1),
	}
}

func (g *gateway) wake() {
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// kinds asks discovery which route kinds the API serves at
// gateway.networking.k8s.io/v1. A group that is not there is no error.
func (g *gateway) kinds() (http, grpc bool, err error) {
	list, err := g.disco.ServerResourcesForGroupVersion(gwv1.GroupVersion.String())
	if apierrors.IsNotFound(err) {
		return false, false, nil
	}
	if err != nil {
		return false, false, fmt.Errorf("discover %s: %w", gwv1.GroupVersion, err)
	}
	for _, r := range list.APIResources {
		switch r.Name {
		case "httproutes":
			http = true
		case "grpcroutes":
			grpc = true
		}
	}
	return http, grpc, nil
}

// mayList lists one object of resource ("httproutes" or "grpcroutes") in
// every namespace, to learn whether RBAC lets the agent watch it.
func (g *gateway) mayList(ctx context.Context, resource string) error {
	opts := metav1.ListOptions{Limit: 1}
	var err error
	if resource == "httproutes" {
		_, err = g.client.GatewayV1().HTTPRoutes("").List(ctx, opts)
	} else {
		_, err = g.client.GatewayV1().GRPCRoutes("").List(ctx, opts)
	}
	if err != nil {
		return fmt.Errorf("list %s.%s: %w", resource, gwv1.GroupName, err)
	}
	return nil
}

// startGateway watches the route kinds whose CRDs exist now and returns
// once their caches synced (or ctx ended), then keeps looking for the
// missing ones in the background.
func (s *Source) startGateway(ctx context.Context) {
	g := s.gw
	var lastErr string
	announced := false
	check := func() (done bool) {
		http, grpc, err := g.kinds()
		if err != nil {
			if err.Error() != lastErr {
				g.log.Warn("gateway API discovery failed; retrying", "err", err, "every", g.recheck)
				lastErr = err.Error()
			}
			return false
		}
		g.mu.Lock()
		needHTTP, needGRPC := http && g.http == nil, grpc && g.grpc == nil
		g.mu.Unlock()
		// A kind the agent may not list would leave its informer logging
		// "forbidden" forever: probe first, say once what to grant.
		var denied []error
		if needHTTP {
			if err := g.mayList(ctx, "httproutes"); err != nil {
				needHTTP, denied = false, append(denied, err)
			}
		}
		if needGRPC {
			if err := g.mayList(ctx, "grpcroutes"); err != nil {
				needGRPC, denied = false, append(denied, err)
			}
		}
		if err := errors.Join(denied...); err != nil && err.Error() != lastErr {
			g.log.Warn("cannot watch Gateway API routes; grant the agent the rules of manifests/weir.yaml", "err", err, "recheck", g.recheck)
			lastErr = err.Error()
		} else if err == nil {
			lastErr = ""
		}
		if needHTTP || needGRPC {
			s.watchRoutes(ctx, needHTTP, needGRPC)
		}
		g.mu.Lock()
		haveHTTP, haveGRPC := g.http != nil, g.grpc != nil
		g.mu.Unlock()
		if !announced && (!http || !grpc) {
			announced = true
			var missing []string
			if !http {
				missing = append(missing, "httproutes")
			}
			if !grpc {
				missing = append(missing, "grpcroutes")
			}
			g.log.Info("Gateway API CRDs not installed: routes from them are off until they are",
				"missing", missing, "group", gwv1.GroupVersion.String(), "recheck", g.recheck)
		}
		return haveHTTP && haveGRPC
	}
	if check() {
		return
	}
	go func() {
		t := time.NewTicker(g.recheck)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if check() {
					return
				}
			}
		}
	}()
}

// watchRoutes starts informers for the named kinds and publishes their
// listers once synced, so a translation never sees a half-filled cache
// (and never writes status from one).
func (s *Source) watchRoutes(ctx context.Context, http, grpc bool) {
	g := s.gw
	var infs []cache.SharedIndexInformer
	var httpInf, grpcInf cache.SharedIndexInformer
	if http {
		httpInf = g.factory.Gateway().V1().HTTPRoutes().Informer()
		infs = append(infs, httpInf)
	}
	if grpc {
		grpcInf = g.factory.Gateway().V1().GRPCRoutes().Informer()
		infs = append(infs, grpcInf)
	}
	for _, inf := range infs {
		_ = inf.SetTransform(stripManagedFields) // fails only once started
		_, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { s.notify(true) },
			UpdateFunc: func(old, cur any) {
				switch {
				case !resourceVersionChanged(old, cur):
				case specChanged(old, cur):
					s.notify(true)
				default:
					// Status only (mostly the status writer's own
					// writes): no route changed, so no node rebuilds
					// its snapshot; the writer checks for drift.
					g.wake()
				}
			},
			DeleteFunc: func(any) { s.notify(true) },
		})
		if err != nil {
			g.log.Error("gateway API informer handler", "err", err)
			return
		}
	}
	g.factory.Start(ctx.Done())
	for _, inf := range infs {
		if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
			return
		}
	}
	g.mu.Lock()
	if http {
		g.http = gwlisters.NewHTTPRouteLister(httpInf.GetIndexer())
	}
	if grpc {
		g.grpc = gwlisters.NewGRPCRouteLister(grpcInf.GetIndexer())
	}
	g.mu.Unlock()
	g.log.Info("watching Gateway API routes attached to Services", "httproutes", http, "grpcroutes", grpc)
	s.notify(true)
}

// routes translates every watched route from the caches, afresh: the
// result is handed to route.Build, which keeps it, so nothing is shared
// with an earlier translation.
func (g *gateway) routes() []*gwroute.Route {
	g.mu.Lock()
	hl, gl := g.http, g.grpc
	g.mu.Unlock()
	var out []*gwroute.Route
	if hl != nil {
		list, err := hl.List(everything)
		if err != nil {
			g.log.Error("list HTTPRoutes from cache", "err", err)
		}
		for _, r := range list {
			out = append(out, gwroute.FromHTTPRoute(r))
		}
	}
	if gl != nil {
		list, err := gl.List(everything)
		if err != nil {
			g.log.Error("list GRPCRoutes from cache", "err", err)
		}
		for _, r := range list {
			out = append(out, gwroute.FromGRPCRoute(r))
		}
	}
	return out
}

// withRoutes returns base with the routes attached to each service port a
// route names as its parent; base itself is not modified.
func (s *Source) withRoutes(base []route.Service) []route.Service {
	g := s.gw
	if g == nil {
		return base
	}
	routes := g.routes()
	known := make(map[string]route.Protocol, len(base))
	for _, svc := range base {
		known[svc.Name] = svc.Protocol
	}
	tr := gwroute.Translate(routes, s.serviceOf, known)
	g.mu.Lock()
	g.last = tr
	g.mu.Unlock()
	g.wake()
	if len(tr.Attach) == 0 {
		return base
	}
	out := slices.Clone(base)
	for i := range out {
		if rs, ok := tr.Attach[out[i].Name]; ok {
			out[i].HTTPRoutes = rs
		}
	}
	return out
}

// specChanged reports whether a route's spec changed: its generation moves
// with the spec only (status is a subresource).
func specChanged(old, cur any) bool {
	o, ok1 := old.(metav1.Object)
	c, ok2 := cur.(metav1.Object)
	return !ok1 || !ok2 || o.GetGeneration() != c.GetGeneration()
}

func (s *Source) serviceOf(namespace, name string) *corev1.Service {
	svc, err := s.services.Services(namespace).Get(name)
	if err != nil {
		return nil
	}
	return svc
}
