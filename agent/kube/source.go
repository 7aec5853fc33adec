// Package kube is the agent's view of Kubernetes: which pods on its node are
// captured (namespace label, pod opt-out label, weir.dev/* annotations), the
// Services and EndpointSlices it balances, the Gateway API routes attached
// to those Services (gateway.go), and what it writes back (enrolment
// annotations on pods, the not-ready taint on its node, route status).
//
// A Source watches the API through client-go informers: namespaces, the
// pods bound to its own node (a field selector, so a node's agent never
// caches the cluster's pods), Services and EndpointSlices. Reads are served
// from those caches; only a pod the cache does not know yet (a CNI ADD can
// beat the watch) costs one GET.
//
// Enrolment rules, in the order they are checked (the first that applies
// gives the Decision's Reason):
//  1. hostNetwork pods are never captured: they share the node's network
//     namespace;
//  2. pods in kube-system and in the agent's own namespace are never captured;
//  3. a pod is captured only when its namespace has the label
//     weir.dev/capture=enabled; pod-level opt-in is not supported;
//  4. the pod label weir.dev/capture=disabled opts one pod out; any other
//     value than enabled or disabled is a configuration error;
//  5. pods that completed (phase Succeeded or Failed) have no network left
//     to capture;
//  6. the weir.dev/* annotations (podconfig) must be valid. A pod with a bad
//     annotation is left uncaptured, never half-captured with the good part
//     of its overrides, and a Warning Event InvalidCaptureConfig naming the
//     annotation is recorded on it (once per distinct problem).
//
// Annotations of pods that are not captured for another reason are not
// validated: they change nothing, so they deserve no Warning.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/weir-mesh/weir/proxy/route"
)

// Names weir reads and writes on Kubernetes objects.
const (
	// TaintKey is the NoSchedule taint the agent keeps on its node while
	// it cannot capture pods, so pods of enabled namespaces are not
	// scheduled there and started uncaptured. The agent's own DaemonSet
	// must tolerate it.
	TaintKey = "weir.dev/agent-not-ready"
	// LabelCapture on a namespace (value enabled) captures its pods; on a
	// pod (value disabled) opts the pod out.
	LabelCapture = "weir.dev/capture"
	// AnnotationCaptured is written on each pod the agent decided about:
	// "true" or "false", so operators see enrolment with kubectl.
	AnnotationCaptured = "weir.dev/captured"
	// AnnotationCaptureReason accompanies AnnotationCaptured with the
	// decision's reason.
	AnnotationCaptureReason = "weir.dev/capture-reason"
	// AnnotationCluster on a Service holds a JSON cluster.Config (balancer,
	// timeouts, outlier detection…) for all of the Service's ports.
	AnnotationCluster = "weir.dev/cluster"
	// AnnotationBalancer on a Service picks the balancer (round_robin,
	// random, least_request, peak_ewma, ring_hash, maglev); it overrides
	// the balancer of AnnotationCluster.
	AnnotationBalancer = "weir.dev/balancer"
	// AnnotationDataplane on a Service is agent (default) or kernel: its
	// TCP ports declared protocol tcp are balanced by eBPF capture's
	// connect program, straight to an endpoint (route.Service.Kernel).
	// A port the kernel cannot balance (route.Service.KernelError) stays
	// with the agent, with a Warning Event on the Service.
	AnnotationDataplane = "weir.dev/dataplane"
)

// Label values of LabelCapture.
const (
	CaptureEnabled  = "enabled"
	CaptureDisabled = "disabled"
)

// Event reasons the agent records.
const (
	// ReasonInvalidCaptureConfig: a pod's weir.dev/* labels or annotations
	// are invalid, so the pod is left uncaptured.
	ReasonInvalidCaptureConfig = "InvalidCaptureConfig"
	// ReasonInvalidClusterConfig: a Service's weir.dev/* annotations are
	// invalid, so its ports use the default cluster config.
	ReasonInvalidClusterConfig = "InvalidClusterConfig"
)

// KubeSystem is never captured: the cluster's own machinery must not depend
// on the mesh.
const KubeSystem = "kube-system"

// Options configure a Source.
type Options struct {
	// Client reaches the API server. Required.
	Client kubernetes.Interface
	// NodeName is the node the agent runs on; only pods bound to it are
	// watched. Required.
	NodeName string
	// AgentNamespace is never captured, like kube-system. Empty: only
	// kube-system is excluded.
	AgentNamespace string
	// Log receives the source's logs; nil means slog.Default().
	Log *slog.Logger
	// ResyncPeriod makes the informers replay their caches periodically,
	// and Changed fire after each replay, so the caller reconciles
	// periodically; 0 means never (the watches are enough).
	ResyncPeriod time.Duration
	// Gateway reaches the Gateway API (gateway.networking.k8s.io); nil
	// turns routes from HTTPRoute and GRPCRoute off. When set,
	// AgentNamespace is required: it holds the status lease.
	Gateway gwclient.Interface
	// GatewayRecheck is how often discovery is asked again for Gateway
	// API CRDs that were not installed; 0 means DefaultGatewayRecheck.
	GatewayRecheck time.Duration
}

// Source is the agent's Kubernetes view. Create it with New, start it with
// Run; every method is safe for concurrent use.
type Source struct {
	client kubernetes.Interface
	node   string
	agentN string
	log    *slog.Logger
	resync time.Duration

	namespaces corelisters.NamespaceLister
	pods       corelisters.PodLister
	services   corelisters.ServiceLister
	slices     discoverylisters.EndpointSliceLister
	sliceIndex cache.Indexer // EndpointSlices by namespace/service-name
	podFactory informers.SharedInformerFactory
	allFactory informers.SharedInformerFactory

	changed chan struct{}
	running atomic.Bool

	// recorder is set by Run; events before Run are only logged.
	recMu    sync.Mutex
	recorder record.EventRecorder

	// reported remembers the last Warning recorded per object, so a
	// problem yields one Event however often it is looked at.
	repMu    sync.Mutex
	reported map[types.UID]string

	// gw is the Gateway API half; nil when Options.Gateway is nil.
	gw *gateway

	// Services() result, rebuilt only after a Service, EndpointSlice or
	// Gateway API route changed.
	svcDirty atomic.Bool
	svcMu    sync.Mutex
	svcCache []route.Service
	svcMemo  map[string]svcMemo
}

// indexByService indexes EndpointSlices by "namespace/service-name".
const indexByService = "weir.dev/service"

// New checks the options and builds the informers; nothing talks to the API
// until Run.
func New(o Options) (*Source, error) {
	if o.Client == nil {
		return nil, errors.New("kube source: Client is required")
	}
	if o.NodeName == "" {
		return nil, errors.New("kube source: NodeName is required")
	}
	if o.ResyncPeriod < 0 {
		return nil, fmt.Errorf("kube source: ResyncPeriod must not be negative, got %v", o.ResyncPeriod)
	}
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.GatewayRecheck < 0 {
		return nil, fmt.Errorf("kube source: GatewayRecheck must not be negative, got %v", o.GatewayRecheck)
	}
	if o.GatewayRecheck == 0 {
		o.GatewayRecheck = DefaultGatewayRecheck
	}
	if o.Gateway != nil && o.AgentNamespace == "" {
		return nil, errors.New("kube source: AgentNamespace is required with Gateway (it holds the route status lease)")
	}
	s := &Source{
		client:   o.Client,
		node:     o.NodeName,
		agentN:   o.AgentNamespace,
		log:      o.Log,
		resync:   o.ResyncPeriod,
		changed:  make(chan struct{}, 1),
		reported: map[types.UID]string{},
	}
	s.svcDirty.Store(true)
	if o.Gateway != nil {
		s.gw = newGateway(o.Gateway, o.GatewayRecheck, o.Log)
	}

	s.podFactory = informers.NewSharedInformerFactoryWithOptions(o.Client, o.ResyncPeriod,
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", o.NodeName).String()
		}))
	s.allFactory = informers.NewSharedInformerFactory(o.Client, o.ResyncPeriod)

	podInf := s.podFactory.Core().V1().Pods()
	nsInf := s.allFactory.Core().V1().Namespaces()
	svcInf := s.allFactory.Core().V1().Services()
	sliceInf := s.allFactory.Discovery().V1().EndpointSlices()

	for _, inf := range []cache.SharedIndexInformer{podInf.Informer(), nsInf.Informer(), svcInf.Informer(), sliceInf.Informer()} {
		// managedFields are the largest part of most objects and nothing
		// here reads them.
		if err := inf.SetTransform(stripManagedFields); err != nil {
			return nil, fmt.Errorf("kube source: set informer transform: %w", err)
		}
	}
	if err := sliceInf.Informer().AddIndexers(cache.Indexers{indexByService: sliceServiceKey}); err != nil {
		return nil, fmt.Errorf("kube source: index endpoint slices: %w", err)
	}

	handlers := []struct {
		inf      cache.SharedIndexInformer
		services bool // affects Services()
		relevant func(old, cur any) bool
	}{
		{podInf.Informer(), false, always},
		{nsInf.Informer(), false, namespaceCaptureChanged},
		{svcInf.Informer(), true, always},
		{sliceInf.Informer(), true, always},
	}
	for _, h := range handlers {
		_, err := h.inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: func(any) { s.notify(h.services) },
			UpdateFunc: func(old, cur any) {
				switch {
				case !resourceVersionChanged(old, cur):
					// A resync (ResyncPeriod) or a relist replays an
					// object unchanged: wake the caller, who asked for
					// periodic reconciles, but nothing needs rebuilding.
					s.notify(false)
				case h.relevant(old, cur):
					s.notify(h.services)
				}
			},
			DeleteFunc: func(obj any) {
				s.forget(obj)
				s.notify(h.services)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("kube source: add event handler: %w", err)
		}
	}

	s.pods = podInf.Lister()
	s.namespaces = nsInf.Lister()
	s.services = svcInf.Lister()
	s.slices = sliceInf.Lister()
	s.sliceIndex = sliceInf.Informer().GetIndexer()
	return s, nil
}

// Run starts the informers and the event recorder and returns once every
// cache has synced, or with an error when ctx ended first. The informers
// and the recorder keep running until ctx ends. Run may be called once.
func (s *Source) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("kube source: Run called twice")
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: s.client.CoreV1().Events("")})
	s.recMu.Lock()
	s.recorder = broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "weir-agent", Host: s.node})
	s.recMu.Unlock()

	s.podFactory.Start(ctx.Done())
	s.allFactory.Start(ctx.Done())
	began := time.Now()
	for _, f := range []informers.SharedInformerFactory{s.podFactory, s.allFactory} {
		for typ, ok := range f.WaitForCacheSync(ctx.Done()) {
			if !ok {
				return fmt.Errorf("kube source: cache of %v did not sync: %w", typ, context.Cause(ctx))
			}
		}
	}
	if s.gw != nil {
		s.startGateway(ctx)
		go s.runStatusWriter(ctx)
	}
	s.log.Info("kubernetes caches synced", "node", s.node, "took", time.Since(began).Round(time.Millisecond))
	go func() {
		<-ctx.Done()
		s.podFactory.Shutdown()
		s.allFactory.Shutdown()
	}()
	return nil
}

// Changed delivers a value whenever something that affects Decide, Pods or
// Services changed. It is coalesced (a buffer of one): after a receive, read
// the current state, which includes every change signalled so far.
func (s *Source) Changed() <-chan struct{} { return s.changed }

func (s *Source) notify(services bool) {
	if services {
		s.svcDirty.Store(true)
		if s.gw != nil {
			s.gw.wake() // a Service change can change a route's status
		}
	}
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// forget drops what was reported about a deleted object, so a new object
// with the same problem is reported again (UIDs are never reused).
func (s *Source) forget(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	m, ok := obj.(metav1.Object)
	if !ok {
		return
	}
	s.repMu.Lock()
	delete(s.reported, m.GetUID())
	s.repMu.Unlock()
}

// warnOnce records a Warning Event on obj unless the same message was
// already recorded for it.
func (s *Source) warnOnce(obj object, reason, message string) {
	key := reason + ": " + message
	s.repMu.Lock()
	if s.reported[obj.GetUID()] == key {
		s.repMu.Unlock()
		return
	}
	s.reported[obj.GetUID()] = key
	s.repMu.Unlock()

	s.log.Warn(message, "object", obj.GetNamespace()+"/"+obj.GetName(), "reason", reason)
	s.recMu.Lock()
	rec := s.recorder
	s.recMu.Unlock()
	if rec == nil {
		// Before Run there is no sink; forget the report so the Event is
		// recorded when the object is next looked at.
		s.repMu.Lock()
		delete(s.reported, obj.GetUID())
		s.repMu.Unlock()
		return
	}
	rec.Event(obj, corev1.EventTypeWarning, reason, message)
}

// object is what an Event can be recorded on.
type object interface {
	metav1.Object
	runtime.Object
}

func stripManagedFields(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

func always(_, _ any) bool { return true }

func resourceVersionChanged(old, cur any) bool {
	o, ok1 := old.(metav1.Object)
	c, ok2 := cur.(metav1.Object)
	return !ok1 || !ok2 || o.GetResourceVersion() != c.GetResourceVersion()
}

// namespaceCaptureChanged: only a namespace's capture label matters here.
func namespaceCaptureChanged(old, cur any) bool {
	o, ok1 := old.(*corev1.Namespace)
	c, ok2 := cur.(*corev1.Namespace)
	return !ok1 || !ok2 || o.Labels[LabelCapture] != c.Labels[LabelCapture]
}

func sliceServiceKey(obj any) ([]string, error) {
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := sl.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{sl.Namespace + "/" + name}, nil
}
