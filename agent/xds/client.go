// Package xds is weir's xDS client: one persistent ADS stream to a control
// plane (state of the world or incremental), whose listeners, routes,
// clusters and endpoints it maps onto the same route model the static and
// Kubernetes sources produce.
//
// Behaviour follows the best xDS clients (Envoy, gRPC's gRFCs A27, A46,
// A57): per-type versions survive reconnects and nonces do not; a delta
// stream resumes with initial_resource_versions so nothing unchanged is
// sent again; a response with invalid resources is NACKed naming each one
// while its valid resources apply; a subscribed resource the control plane
// never sends is declared absent after 15s of a ready stream only;
// reconnects back off exponentially with jitter, reset by a response; and
// the next response is read only once the last one was applied. While the
// control plane is unreachable the last applied routing stays in force.
package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/prometheus/client_golang/prometheus"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// Resource type URLs.
const (
	ListenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	RouteType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	ClusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	EndpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	resourceType = "type.googleapis.com/envoy.service.discovery.v3.Resource"
)

// Defaults for Options.
const (
	DefaultBackoffBase  = 500 * time.Millisecond
	DefaultBackoffMax   = 30 * time.Second
	DefaultDoesNotExist = 15 * time.Second
)

// Options configure a Client.
type Options struct {
	// Target is the control plane's host:port.
	Target string
	// TLS secures the connection; nil means plaintext (for a control plane
	// on the node or behind a trusted network only).
	TLS *tls.Config
	// Delta selects incremental xDS; false is state of the world.
	Delta bool
	// Node identifies this agent to the control plane.
	Node *corev3.Node
	// Publish receives the routing after every applied response, on the
	// client's goroutine: the next response is read after it returns. An
	// error is reported in the NACK of the response that caused it.
	Publish func(Update) error
	Log     *slog.Logger
	// Registerer, when set, receives the client's metrics.
	Registerer prometheus.Registerer
	// BackoffBase and BackoffMax bound the wait between two stream
	// attempts: it doubles from BackoffBase up to BackoffMax, ±20% jitter,
	// and starts over after a stream that got a response.
	BackoffBase, BackoffMax time.Duration
	// DoesNotExist is how long a subscribed resource may go unanswered on
	// a ready stream before it is taken as absent.
	DoesNotExist time.Duration
	// OnDemand subscribes clusters only when a connection needs one
	// (Await) and drops them once unused for OnDemandIdle (ondemand.go);
	// delta only.
	OnDemand bool
	// OnDemandTimeout bounds how long a connection waits for its cluster;
	// OnDemandIdle is how long a cluster stays subscribed unused.
	OnDemandTimeout, OnDemandIdle time.Duration
}

// Status is what the client reports for readiness and the config dump.
type Status struct {
	Target    string `json:"target"`
	Mode      string `json:"mode"`
	Connected bool   `json:"connected"`
	// Synced is true once every type got a response and every subscribed
	// resource arrived or was declared absent.
	Synced bool `json:"synced"`
	// LastError is the last stream error or NACK, "" when none.
	LastError string `json:"lastError,omitempty"`
	// Versions are the last accepted version per type (state of the world).
	Versions map[string]string `json:"versions,omitempty"`
	// Resources counts the accepted resources per type.
	Resources map[string]int `json:"resources"`
	// Absent lists subscribed resources declared absent.
	Absent []string `json:"absent,omitempty"`
	// OnDemand, when on-demand clusters are on: the clusters wanted now,
	// and how many were requested and dropped as idle so far.
	OnDemand  *OnDemandStatus `json:"onDemand,omitempty"`
	Updates   uint64          `json:"updates"`
	NACKs     uint64          `json:"nacks"`
	Reconnect uint64          `json:"reconnects"`
}

// Client holds one ADS stream at a time and the resources it delivered.
type Client struct {
	opts    Options
	log     *slog.Logger
	store   *store
	types   []*typeState // in request order: CDS, EDS, LDS, RDS
	byURL   map[string]*typeState
	metrics *metrics
	od      *onDemand // nil unless Options.OnDemand

	mu     sync.Mutex // guards status
	status Status
	// warned holds the last warning logged per resource, so an unchanged
	// resource pushed again is not logged again.
	warned map[string]string
}

// typeState is the subscription and progress of one resource type.
type typeState struct {
	url, label string
	wildcard   bool
	// names is the subscription of a non-wildcard type.
	names map[string]bool
	// version is the last accepted version_info (state of the world); it
	// survives reconnects.
	version string
	// versions are the resource versions held (delta); they survive
	// reconnects and become initial_resource_versions.
	versions map[string]string
	// raw maps the encoded bytes of each resource accepted over state of
	// the world to its name (rawOf is the reverse), so a resource sent
	// again unchanged is not decoded and converted again. An entry is
	// added only for a resource held and removed with it (remove), so
	// a name found here is held.
	raw, rawOf map[string]string

	// Per stream.
	nonce      string
	sent       map[string]bool // delta: names subscribed on this stream
	sentOnce   bool            // a request went out on this stream
	responded  bool            // a response arrived on this stream
	everAnswer bool            // a response ever arrived
	// pending maps names (or "" for a wildcard type's first response) to
	// the time they are declared absent; set only while the stream is ready.
	pending map[string]time.Time
	absent  map[string]bool
}

// New validates opts and returns a client; Run connects it.
func New(opts Options) (*Client, error) {
	if opts.Target == "" {
		return nil, errors.New("xds: target is required")
	}
	if opts.Publish == nil {
		return nil, errors.New("xds: Publish is required")
	}
	if opts.Node == nil || opts.Node.GetId() == "" {
		return nil, errors.New("xds: node id is required")
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	if opts.BackoffBase <= 0 {
		opts.BackoffBase = DefaultBackoffBase
	}
	if opts.BackoffMax < opts.BackoffBase {
		opts.BackoffMax = max(DefaultBackoffMax, opts.BackoffBase)
	}
	if opts.OnDemand && !opts.Delta {
		return nil, errors.New("xds: on-demand clusters need delta xDS")
	}
	if opts.DoesNotExist <= 0 {
		opts.DoesNotExist = DefaultDoesNotExist
	}
	c := &Client{
		opts:   opts,
		log:    opts.Log.With("xds", opts.Target),
		store:  newStore(),
		byURL:  map[string]*typeState{},
		warned: map[string]string{},
	}
	for _, t := range []struct {
		url, label string
		wildcard   bool
	}{{ClusterType, "cluster", !opts.OnDemand}, {EndpointType, "endpoint", false}, {ListenerType, "listener", true}, {RouteType, "route", false}} {
		ts := &typeState{url: t.url, label: t.label, wildcard: t.wildcard, names: map[string]bool{}, versions: map[string]string{},
			absent: map[string]bool{}, sent: map[string]bool{}, pending: map[string]time.Time{},
			raw: map[string]string{}, rawOf: map[string]string{}}
		c.types = append(c.types, ts)
		c.byURL[t.url] = ts
	}
	c.status = Status{Target: opts.Target, Mode: "sotw", Resources: map[string]int{}}
	if opts.Delta {
		c.status.Mode = "delta"
	}
	c.metrics = newMetrics(opts.Registerer)
	if opts.OnDemand {
		c.od = newOnDemand(opts.OnDemandTimeout, opts.OnDemandIdle)
		c.store.onDemand = true
	}
	return c, nil
}

// Status returns a copy of the client's state.
func (c *Client) Status() Status {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.status
	s.Versions = maps.Clone(s.Versions)
	s.Resources = maps.Clone(s.Resources)
	s.Absent = slices.Clone(s.Absent)
	if c.od != nil {
		w, r, d := c.od.counts()
		s.OnDemand = &OnDemandStatus{Wanted: w, Requested: r, Dropped: d}
	}
	return s
}

// Run keeps a stream to the control plane until ctx ends. Stream failures
// are retried with backoff; the last published routing stays meanwhile.
func (c *Client) Run(ctx context.Context) error {
	creds := insecure.NewCredentials()
	if c.opts.TLS != nil {
		creds = credentials.NewTLS(c.opts.TLS)
	}
	conn, err := grpc.NewClient(c.opts.Target,
		grpc.WithTransportCredentials(creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: c.opts.BackoffBase, Multiplier: 2, Jitter: 0.2, MaxDelay: c.opts.BackoffMax},
			MinConnectTimeout: 5 * time.Second,
		}),
		// Notice a control plane that vanished without closing; 5 minutes
		// is what gRPC servers allow by default.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 5 * time.Minute, Timeout: 20 * time.Second}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)),
	)
	if err != nil {
		return fmt.Errorf("xds: connect to %s: %w", c.opts.Target, err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	attempt := 0
	for {
		got, err := c.runStream(ctx, ads)
		c.setConnected(false)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			attempt = 0
		}
		wait := backoffDelay(c.opts.BackoffBase, c.opts.BackoffMax, attempt)
		attempt++
		c.setError(err.Error())
		c.log.Warn("xds stream ended; serving the last routing", "err", err, "retryIn", wait.Round(time.Millisecond).String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// backoffDelay is base·2^attempt capped at max, with ±20% jitter.
func backoffDelay(base, maxDelay time.Duration, attempt int) time.Duration {
	d := base
	for i := 0; i < attempt && d < maxDelay; i++ {
		d *= 2
	}
	d = min(d, maxDelay)
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// stream is what runStream needs of either ADS variant.
type stream interface {
	send(t *typeState, ack *ackInfo) error
	recv() (response, error)
}

// ackInfo says which response a request acknowledges; nil for a request
// that only changes the subscription.
type ackInfo struct {
	nonce   string
	version string // SotW: the version being accepted
	err     string // non-empty: NACK
}

// response is one decoded response of either variant.
type response struct {
	url       string
	nonce     string
	version   string                // SotW
	resources []*anypb.Any          // SotW
	delta     []*discovery.Resource // delta
	removed   []string              // delta
}

// runStream opens one stream, subscribes, and applies responses until the
// stream fails. got reports whether any response arrived.
func (c *Client) runStream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) (got bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var st stream
	if c.opts.Delta {
		s, err := ads.DeltaAggregatedResources(sctx)
		if err != nil {
			return false, fmt.Errorf("open delta stream: %w", err)
		}
		st = &deltaStream{s: s, node: c.opts.Node}
	} else {
		s, err := ads.StreamAggregatedResources(sctx)
		if err != nil {
			return false, fmt.Errorf("open stream: %w", err)
		}
		st = &sotwStream{s: s, node: c.opts.Node}
	}
	c.metrics.reconnects.Inc()
	c.mu.Lock()
	c.status.Reconnect++
	c.mu.Unlock()
	for _, t := range c.types {
		t.nonce, t.sent, t.sentOnce, t.responded = "", map[string]bool{}, false, false
		t.pending = map[string]time.Time{}
	}
	if c.od != nil {
		// Subscribe what is wanted now with the stream's first request.
		if err := c.syncDemand(nil); err != nil {
			return false, err
		}
	}
	for _, t := range c.types {
		if err := c.subscribe(st, t); err != nil {
			return false, err
		}
	}
	// The stream is open: the channel is ready, so the does-not-exist
	// timers may run (they do not while connecting).
	c.setConnected(true)
	c.log.Info("xds stream open", "mode", c.status.Mode)
	c.armPending()

	type recvd struct {
		r   response
		err error
	}
	in := make(chan recvd)
	applied := make(chan struct{})
	go func() {
		for {
			r, err := st.recv()
			select {
			case in <- recvd{r, err}:
			case <-sctx.Done():
				return
			}
			if err != nil {
				return
			}
			// Flow control: read the next response only after this one
			// was applied and acknowledged.
			select {
			case <-applied:
			case <-sctx.Done():
				return
			}
		}
	}()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var wake <-chan struct{}
	var idle <-chan time.Time
	if c.od != nil {
		wake = c.od.wake
		tk := time.NewTicker(max(c.od.idle/4, 50*time.Millisecond))
		defer tk.Stop()
		idle = tk.C
	}
	for {
		c.resetTimer(timer)
		select {
		case <-ctx.Done():
			return got, ctx.Err()
		case m := <-in:
			if m.err != nil {
				return got, fmt.Errorf("receive: %w", m.err)
			}
			got = true
			if err := c.apply(st, m.r); err != nil {
				return got, err
			}
			select {
			case applied <- struct{}{}:
			case <-ctx.Done():
				return got, ctx.Err()
			}
		case <-timer.C:
			c.expirePending()
			c.markReady()
		case <-wake:
			if err := c.syncDemand(st); err != nil {
				return got, err
			}
		case <-idle:
			if err := c.syncDemand(st); err != nil {
				return got, err
			}
		}
	}
}

// subscribe sends t's subscription if it has one, or an update of it.
func (c *Client) subscribe(st stream, t *typeState) error {
	if !t.wildcard && len(t.names) == 0 && !t.sentOnce {
		return nil
	}
	if err := st.send(t, nil); err != nil {
		return fmt.Errorf("send %s request: %w", t.label, err)
	}
	t.sentOnce = true
	return nil
}

// apply decodes a response, stores its valid resources, publishes the new
// routing, acknowledges it, and updates dependent subscriptions.
func (c *Client) apply(st stream, r response) error {
	t := c.byURL[r.url]
	if t == nil {
		c.log.Warn("xds response of a type weir did not ask for", "type", r.url)
		return st.send(&typeState{url: r.url}, &ackInfo{nonce: r.nonce, err: "weir does not use " + r.url})
	}
	t.nonce = r.nonce
	t.responded, t.everAnswer = true, true
	delete(t.pending, "")
	var errs []string
	changed := false
	if c.opts.Delta {
		for _, res := range r.delta {
			name := res.GetName()
			if res.GetResource() == nil {
				errs = append(errs, fmt.Sprintf("%s: no resource", name))
				continue
			}
			if _, err := c.decode(t, res.GetResource(), name); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			if c.has(t, name) {
				t.versions[name] = res.GetVersion()
				changed = true
			}
		}
		for _, name := range r.removed {
			if c.remove(t, name) {
				changed = true
			}
			delete(t.versions, name)
		}
	} else {
		// Only a wildcard type's response says what is gone.
		var inResponse map[string]bool
		if t.wildcard {
			inResponse = make(map[string]bool, len(r.resources))
		}
		for _, a := range r.resources {
			// State of the world sends every resource every time: one
			// byte for byte as accepted last time is unchanged.
			if name, ok := t.raw[string(a.GetValue())]; ok {
				if inResponse != nil {
					inResponse[name] = true
				}
				continue
			}
			name, err := c.decodeAny(t, a)
			if name != "" && inResponse != nil {
				inResponse[name] = true
			}
			if err == nil && name != "" && c.has(t, name) {
				delete(t.raw, t.rawOf[name])
				key := string(a.GetValue())
				t.raw[key], t.rawOf[name] = name, key
			}
			if err != nil {
				if name == "" {
					name = "(unnamed)"
				}
				errs = append(errs, fmt.Sprintf("%s: %v", name, err))
				continue
			}
			changed = true
		}
		if t.wildcard {
			// A state-of-the-world listener or cluster response is complete:
			// what it leaves out is gone (an invalid resource it holds keeps
			// its last good version, gRFC A46).
			for _, name := range c.names(t) {
				if !inResponse[name] && c.remove(t, name) {
					changed = true
				}
			}
		}
	}
	for name := range t.pending {
		if c.has(t, name) {
			delete(t.pending, name)
		}
	}
	if changed {
		if err := c.publish(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	c.metrics.updates.WithLabelValues(t.label).Inc()
	ack := &ackInfo{nonce: r.nonce, version: r.version}
	c.mu.Lock()
	c.status.Updates++
	if len(errs) > 0 {
		slices.Sort(errs)
		ack.err = strings.Join(errs, "; ")
		ack.version = t.version
		c.status.NACKs++
		c.status.LastError = "NACK " + t.label + ": " + ack.err
	} else {
		t.version = r.version
		if c.status.Versions == nil {
			c.status.Versions = map[string]string{}
		}
		c.status.Versions[t.label] = r.version
	}
	c.mu.Unlock()
	if ack.err != "" {
		c.metrics.nacks.WithLabelValues(t.label).Inc()
		c.log.Warn("xds NACK", "type", t.label, "version", r.version, "err", ack.err)
	} else {
		c.log.Debug("xds ACK", "type", t.label, "version", r.version, "resources", len(r.resources)+len(r.delta), "removed", len(r.removed))
	}
	if err := st.send(t, ack); err != nil {
		return fmt.Errorf("send %s ack: %w", t.label, err)
	}
	if changed {
		if err := c.follow(st, t); err != nil {
			return err
		}
	}
	c.markReady()
	c.updateStatus()
	return nil
}

// follow updates the subscription that depends on t: listeners name
// route configurations, clusters name endpoints.
func (c *Client) follow(st stream, t *typeState) error {
	var dep *typeState
	var names map[string]bool
	switch t.url {
	case ListenerType:
		dep, names = c.byURL[RouteType], c.store.routeNames()
	case ClusterType:
		dep, names = c.byURL[EndpointType], c.store.endpointNames()
	}
	if dep != nil && !maps.Equal(dep.names, names) {
		c.resubscribe(dep, names)
		if err := c.subscribe(st, dep); err != nil {
			return err
		}
		c.armPending()
	}
	return nil
}

// resubscribe replaces t's subscription and forgets resources no longer
// subscribed (the control plane stops sending them).
func (c *Client) resubscribe(t *typeState, names map[string]bool) {
	for old := range t.names {
		if !names[old] {
			c.remove(t, old)
			delete(t.versions, old)
			delete(t.absent, old)
			delete(t.pending, old)
		}
	}
	t.names = names
}

// decodeAny unwraps a state-of-the-world resource (possibly inside a
// discovery Resource) and stores it. It returns the resource's name.
func (c *Client) decodeAny(t *typeState, a *anypb.Any) (string, error) {
	if a.GetTypeUrl() == resourceType {
		var res discovery.Resource
		if err := a.UnmarshalTo(&res); err != nil {
			return "", fmt.Errorf("decode Resource wrapper: %w", err)
		}
		if res.GetResource() == nil {
			return res.GetName(), errors.New("no resource")
		}
		a = res.GetResource()
	}
	return c.decode(t, a, "")
}

// decode converts one resource of type t and stores it when valid. want,
// when set, is the name the resource must carry (delta names resources
// outside them).
func (c *Client) decode(t *typeState, a *anypb.Any, want string) (string, error) {
	if a.GetTypeUrl() != t.url {
		return "", fmt.Errorf("type %s in a %s response", a.GetTypeUrl(), t.label)
	}
	var msg interface {
		proto.Message
		GetName() string
	}
	switch t.url {
	case ListenerType:
		msg = &listenerv3.Listener{}
	case RouteType:
		msg = &routev3.RouteConfiguration{}
	case ClusterType:
		msg = &clusterv3.Cluster{}
	case EndpointType:
		cla := &endpointv3.ClusterLoadAssignment{}
		if err := a.UnmarshalTo(cla); err != nil {
			return "", fmt.Errorf("decode: %w", err)
		}
		if want != "" && cla.GetClusterName() != want {
			return cla.GetClusterName(), fmt.Errorf("resource names itself %q", cla.GetClusterName())
		}
		return cla.GetClusterName(), c.storeCLA(cla)
	}
	if err := a.UnmarshalTo(msg); err != nil {
		return "", fmt.Errorf("decode: %w", err)
	}
	name := msg.GetName()
	if name == "" {
		return "", errors.New("resource has no name")
	}
	if want != "" && name != want {
		return name, fmt.Errorf("resource names itself %q", name)
	}
	var n notes
	switch m := msg.(type) {
	case *listenerv3.Listener:
		var e *listenerEntry
		e, n = convertListener(m)
		if n.err() == "" {
			c.store.listeners[name] = e
			c.store.dirtyAll, c.store.dirtyIndex = true, true
		}
	case *routev3.RouteConfiguration:
		if !t.names[name] {
			return name, nil
		}
		var e *routeEntry
		e, n = convertRouteConfig(m)
		if n.err() == "" {
			c.store.routes[name] = e
			c.store.dirtyAll, c.store.dirtyIndex = true, true
		}
	case *clusterv3.Cluster:
		if !t.wildcard && !t.names[name] {
			// On demand and no longer wanted: a late answer.
			return name, nil
		}
		var e *clusterEntry
		e, n = convertCluster(m)
		if n.err() == "" {
			if _, ok := c.store.clusters[name]; !ok {
				c.store.clusterNames = nil
			}
			c.store.clusters[name] = e
			c.store.dirtyAll = true
		}
	}
	c.warn(t, name, n.warnings)
	if e := n.err(); e != "" {
		return name, errors.New(e)
	}
	delete(t.absent, name)
	return name, nil
}

func (c *Client) storeCLA(cla *endpointv3.ClusterLoadAssignment) error {
	t := c.byURL[EndpointType]
	name := cla.GetClusterName()
	if name == "" {
		return errors.New("cluster_name is empty")
	}
	if !t.names[name] {
		// Not (or no longer) subscribed: a late answer to an old request.
		return nil
	}
	eps, n := convertCLA(cla)
	c.warn(t, name, n.warnings)
	if e := n.err(); e != "" {
		return errors.New(e)
	}
	c.store.endpoints[name] = eps
	c.store.dirtyEDS[name] = true
	delete(t.absent, name)
	return nil
}

// warn logs a resource's warnings when they differ from the last ones
// logged for it.
func (c *Client) warn(t *typeState, name string, warnings []string) {
	key := t.label + "/" + name
	msg := strings.Join(warnings, "; ")
	if c.warned[key] == msg {
		return
	}
	if msg == "" {
		delete(c.warned, key)
		return
	}
	c.warned[key] = msg
	c.log.Warn("xds resource partly applied", "type", t.label, "name", name, "ignored", msg)
}

// remove forgets a resource; it reports whether one was held.
func (c *Client) remove(t *typeState, name string) bool {
	delete(c.warned, t.label+"/"+name)
	if key, ok := t.rawOf[name]; ok {
		delete(t.raw, key)
		delete(t.rawOf, name)
	}
	switch t.url {
	case ListenerType:
		if _, ok := c.store.listeners[name]; ok {
			delete(c.store.listeners, name)
			c.store.dirtyAll, c.store.dirtyIndex = true, true
			return true
		}
	case RouteType:
		if _, ok := c.store.routes[name]; ok {
			delete(c.store.routes, name)
			c.store.dirtyAll, c.store.dirtyIndex = true, true
			return true
		}
	case ClusterType:
		if _, ok := c.store.clusters[name]; ok {
			delete(c.store.clusters, name)
			c.store.clusterNames = nil
			c.store.dirtyAll = true
			return true
		}
	case EndpointType:
		if _, ok := c.store.endpoints[name]; ok {
			delete(c.store.endpoints, name)
			c.store.dirtyEDS[name] = true
			return true
		}
	}
	return false
}

func (c *Client) has(t *typeState, name string) bool {
	switch t.url {
	case ListenerType:
		_, ok := c.store.listeners[name]
		return ok
	case RouteType:
		_, ok := c.store.routes[name]
		return ok
	case ClusterType:
		_, ok := c.store.clusters[name]
		return ok
	case EndpointType:
		_, ok := c.store.endpoints[name]
		return ok
	}
	return false
}

// count is the number of held resources of a type.
func (c *Client) count(t *typeState) int {
	switch t.url {
	case ListenerType:
		return len(c.store.listeners)
	case RouteType:
		return len(c.store.routes)
	case ClusterType:
		return len(c.store.clusters)
	case EndpointType:
		return len(c.store.endpoints)
	}
	return 0
}

// names lists the held resources of a type.
func (c *Client) names(t *typeState) []string {
	switch t.url {
	case ListenerType:
		return slices.Collect(maps.Keys(c.store.listeners))
	case RouteType:
		return slices.Collect(maps.Keys(c.store.routes))
	case ClusterType:
		return slices.Collect(maps.Keys(c.store.clusters))
	case EndpointType:
		return slices.Collect(maps.Keys(c.store.endpoints))
	}
	return nil
}

// publish composes the routing and hands it to the agent.
func (c *Client) publish() error {
	u, problems := c.store.compose()
	if c.od != nil && c.store.demand != nil {
		idx := c.store.demand
		if c.od.gen != c.store.demandGen {
			c.od.gen = c.store.demandGen
			c.od.index.Store(&idx)
			c.od.pin(c.store.pinned)
		}
	}
	c.warn(&typeState{label: "compose"}, "", problems)
	if err := c.opts.Publish(u); err != nil {
		return fmt.Errorf("routing not applied: %w", err)
	}
	return nil
}

// armPending starts the does-not-exist clock for every subscribed
// resource not held yet (and for a wildcard type's first response).
func (c *Client) armPending() {
	deadline := time.Now().Add(c.opts.DoesNotExist)
	for _, t := range c.types {
		if t.wildcard {
			if !t.responded {
				if _, ok := t.pending[""]; !ok {
					t.pending[""] = deadline
				}
			}
			continue
		}
		for name := range t.names {
			if _, ok := t.pending[name]; !ok && !c.has(t, name) && !t.absent[name] {
				t.pending[name] = deadline
			}
		}
	}
	c.updateStatus()
}

func (c *Client) resetTimer(timer *time.Timer) {
	var next time.Time
	for _, t := range c.types {
		for _, d := range t.pending {
			if next.IsZero() || d.Before(next) {
				next = d
			}
		}
	}
	if next.IsZero() {
		timer.Reset(time.Hour)
		return
	}
	timer.Reset(max(time.Until(next), 0))
}

// expirePending declares absent what stayed unanswered past its deadline.
func (c *Client) expirePending() {
	now := time.Now()
	for _, t := range c.types {
		for name, d := range t.pending {
			if now.Before(d) {
				continue
			}
			delete(t.pending, name)
			if name == "" {
				// Counts as answered (empty) for readiness; a later
				// response is applied as usual.
				t.everAnswer = true
				c.log.Warn("xds: no response for a wildcard type; taking it as empty", "type", t.label)
				continue
			}
			t.absent[name] = true
			c.metrics.absent.WithLabelValues(t.label).Inc()
			c.log.Warn("xds resource does not exist", "type", t.label, "name", name, "after", c.opts.DoesNotExist.String())
		}
	}
	c.updateStatus()
}

func (c *Client) updateStatus() {
	c.mu.Lock()
	defer c.mu.Unlock()
	synced := true
	var absent []string
	for _, t := range c.types {
		n := c.count(t)
		c.status.Resources[t.label] = n
		c.metrics.resources.WithLabelValues(t.label).Set(float64(n))
		if t.wildcard && !t.everAnswer {
			synced = false
		}
		// Held resources of a non-wildcard type are subscribed ones, and
		// absent ones are not held: every name is accounted for when the
		// two add up.
		if !t.wildcard && n+len(t.absent) < len(t.names) {
			synced = false
		}
		for name := range t.absent {
			absent = append(absent, t.label+"/"+name)
		}
	}
	slices.Sort(absent)
	c.status.Synced, c.status.Absent = synced, absent
}

func (c *Client) setConnected(v bool) {
	c.mu.Lock()
	c.status.Connected = v
	if v {
		c.status.LastError = ""
	}
	c.mu.Unlock()
	g := 0.0
	if v {
		g = 1
	}
	c.metrics.connected.Set(g)
}

func (c *Client) setError(msg string) {
	c.mu.Lock()
	c.status.LastError = msg
	c.mu.Unlock()
}

// OnDemandStatus counts on-demand clusters.
type OnDemandStatus struct {
	Wanted    int    `json:"wanted"`
	Requested uint64 `json:"requested"`
	Dropped   uint64 `json:"dropped"`
}

// sotwStream speaks state-of-the-world ADS.
type sotwStream struct {
	s    discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node *corev3.Node
	// nodeSent: the node goes in the first request of a stream only.
	nodeSent bool
}

func (s *sotwStream) send(t *typeState, ack *ackInfo) error {
	req := &discovery.DiscoveryRequest{TypeUrl: t.url, VersionInfo: t.version, ResponseNonce: t.nonce}
	if !t.wildcard {
		req.ResourceNames = slices.Sorted(maps.Keys(t.names))
	}
	if ack != nil {
		req.VersionInfo, req.ResponseNonce = ack.version, ack.nonce
		if ack.err != "" {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: ack.err}
		}
	}
	if !s.nodeSent {
		req.Node, s.nodeSent = s.node, true
	}
	return s.s.Send(req)
}

func (s *sotwStream) recv() (response, error) {
	m, err := s.s.Recv()
	if err != nil {
		return response{}, err
	}
	return response{url: m.GetTypeUrl(), nonce: m.GetNonce(), version: m.GetVersionInfo(), resources: m.GetResources()}, nil
}

// deltaStream speaks incremental ADS.
type deltaStream struct {
	s        discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient
	node     *corev3.Node
	nodeSent bool
}

func (s *deltaStream) send(t *typeState, ack *ackInfo) error {
	req := &discovery.DeltaDiscoveryRequest{TypeUrl: t.url}
	if !s.nodeSent {
		req.Node, s.nodeSent = s.node, true
	}
	if ack != nil {
		req.ResponseNonce = ack.nonce
		if ack.err != "" {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: ack.err}
		}
		return s.s.Send(req)
	}
	if !t.sentOnce {
		// The first request of a stream: resume with what is held, so the
		// control plane sends only what changed meanwhile.
		req.InitialResourceVersions = maps.Clone(t.versions)
		if !t.wildcard {
			for name := range t.names {
				req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
				t.sent[name] = true
			}
		} else if len(t.versions) > 0 {
			// An explicit wildcard, since initial versions make the
			// request non-empty.
			req.ResourceNamesSubscribe = []string{"*"}
		}
		slices.Sort(req.ResourceNamesSubscribe)
		return s.s.Send(req)
	}
	for name := range t.names {
		if !t.sent[name] {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
			t.sent[name] = true
		}
	}
	for name := range t.sent {
		if !t.names[name] {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, name)
			delete(t.sent, name)
		}
	}
	if len(req.ResourceNamesSubscribe)+len(req.ResourceNamesUnsubscribe) == 0 {
		return nil
	}
	slices.Sort(req.ResourceNamesSubscribe)
	slices.Sort(req.ResourceNamesUnsubscribe)
	return s.s.Send(req)
}

func (s *deltaStream) recv() (response, error) {
	m, err := s.s.Recv()
	if err != nil {
		return response{}, err
	}
	return response{url: m.GetTypeUrl(), nonce: m.GetNonce(), version: m.GetSystemVersionInfo(), delta: m.GetResources(), removed: m.GetRemovedResources()}, nil
}
