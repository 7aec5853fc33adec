package agent

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/weir-mesh/weir/agent/xds"
	"github.com/weir-mesh/weir/proxy/route"
)

// XDS points the agent at an xDS control plane (key xds). Its services are
// merged with the static or Kubernetes ones as Precedence says.
type XDS struct {
	// Address is the control plane's host:port; empty turns xDS off.
	Address string `json:"address"`
	// Mode is delta (default, incremental xDS) or sotw (state of the world).
	Mode string `json:"mode"`
	// NodeID identifies this agent to the control plane; default: the
	// node name (kubernetes.nodeName), else the host name.
	NodeID string `json:"nodeId"`
	// Cluster is the node's cluster as the control plane groups nodes.
	Cluster string `json:"cluster"`
	// Locality is the node's zone sent to the control plane; default: zone.
	Locality string `json:"locality"`
	// Metadata is the node metadata sent to the control plane, as a JSON
	// object: what a control plane needs to place the node (istiod reads
	// ISTIO_VERSION, CLUSTER_ID, NAMESPACE, INSTANCE_IPS, LABELS).
	Metadata map[string]any `json:"metadata"`
	// TLS secures the connection; no files means plaintext.
	TLS XDSTLS `json:"tls"`
	// Precedence is both (default: xDS and the other source, xDS winning
	// per service name and address), xds (xDS services only) or kubernetes
	// (the other source only; xDS is fetched and shown in /config_dump
	// but does not route).
	Precedence string `json:"precedence"`
	// OnDemand subscribes an xDS cluster (and its endpoints) only when a
	// connection to a listener address that needs it arrives, holding the
	// connection up to OnDemandTimeout (default 5s) for it, and drops it
	// from the subscription once unused for OnDemandIdle (default 5m).
	// Listeners and route configurations are still fetched up front: they
	// say which destinations need which clusters. Delta mode only.
	OnDemand        bool     `json:"onDemand"`
	OnDemandTimeout Duration `json:"onDemandTimeout"`
	OnDemandIdle    Duration `json:"onDemandIdle"`
}

// XDSTLS holds the files for TLS to the control plane.
type XDSTLS struct {
	// CAFile verifies the control plane's certificate; empty means the
	// system roots.
	CAFile string `json:"caFile"`
	// CertFile and KeyFile are the agent's client certificate, both or
	// neither.
	CertFile string `json:"certFile"`
	KeyFile  string `json:"keyFile"`
}

// Precedence values.
const (
	PrecedenceBoth       = "both"
	PrecedenceXDS        = "xds"
	PrecedenceKubernetes = "kubernetes"
)

// xdsInitialWait bounds how long start-up waits for the first complete
// xDS routing before the agent reports ready: a control plane that is
// down must not keep pods of the node from starting.
const xdsInitialWait = 5 * time.Second

// validate checks the xds keys, naming the key at fault.
func (x XDS) validate() error {
	if x.Address == "" {
		if x.Mode != "" || x.NodeID != "" || x.Precedence != "" || x.TLS != (XDSTLS{}) || x.Cluster != "" || x.Locality != "" || x.Metadata != nil || x.OnDemand || x.OnDemandTimeout != 0 || x.OnDemandIdle != 0 {
			return errors.New("xds.address: required when other xds keys are set")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(x.Address)
	if err != nil || host == "" {
		return fmt.Errorf("xds.address: want host:port, got %q", x.Address)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return fmt.Errorf("xds.address: port %q is not a port", port)
	}
	switch x.Mode {
	case "", "delta", "sotw":
	default:
		return fmt.Errorf("xds.mode: want delta or sotw, got %q", x.Mode)
	}
	switch x.Precedence {
	case "", PrecedenceBoth, PrecedenceXDS, PrecedenceKubernetes:
	default:
		return fmt.Errorf("xds.precedence: want both, xds or kubernetes, got %q", x.Precedence)
	}
	if _, err := x.metadata(); err != nil {
		return err
	}
	if x.OnDemand && x.Mode == "sotw" {
		return errors.New("xds.onDemand: needs xds.mode delta (state of the world cannot subscribe clusters one by one)")
	}
	for _, d := range []struct {
		key string
		v   Duration
	}{{"xds.onDemandTimeout", x.OnDemandTimeout}, {"xds.onDemandIdle", x.OnDemandIdle}} {
		switch {
		case d.v < 0:
			return fmt.Errorf("%s: must not be negative, got %s", d.key, time.Duration(d.v))
		case d.v != 0 && !x.OnDemand:
			return fmt.Errorf("%s: set only with xds.onDemand: true", d.key)
		}
	}
	if timeout := cmp.Or(time.Duration(x.OnDemandTimeout), xds.DefaultOnDemandTimeout); x.OnDemandIdle != 0 && time.Duration(x.OnDemandIdle) < timeout {
		return fmt.Errorf("xds.onDemandIdle: %s is shorter than xds.onDemandTimeout %s", time.Duration(x.OnDemandIdle), timeout)
	}
	if _, err := x.TLS.config(); err != nil {
		return err
	}
	return nil
}

// metadata converts xds.metadata into the node's metadata; nil when unset.
func (x XDS) metadata() (*structpb.Struct, error) {
	if x.Metadata == nil {
		return nil, nil
	}
	m, err := structpb.NewStruct(x.Metadata)
	if err != nil {
		return nil, fmt.Errorf("xds.metadata: %w", err)
	}
	return m, nil
}

// config loads the TLS files; nil means plaintext.
func (t XDSTLS) config() (*tls.Config, error) {
	if t == (XDSTLS{}) {
		return nil, nil
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return nil, errors.New("xds.tls.certFile and xds.tls.keyFile: set both or neither")
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CAFile != "" {
		b, err := os.ReadFile(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("xds.tls.caFile: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("xds.tls.caFile: no PEM certificate in %s", t.CAFile)
		}
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("xds.tls.certFile/keyFile: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// xdsSource runs the xDS client and merges what it delivers with the
// agent's other source (static services or Kubernetes).
type xdsSource struct {
	a          *Agent
	client     *xds.Client
	precedence string
	log        *slog.Logger

	mu     sync.Mutex
	last   *xds.Update  // nil until the first update
	other  route.Config // the other source's latest routing
	synced chan struct{}
	once   sync.Once

	// built is the last snapshot this source stored and builtFrom the
	// update it merged (nil: none); both change under the agent's
	// reloadMu. While built is the agent's snapshot, an endpoint push
	// on builtFrom's services changes only the clusters it names.
	built     *route.Snapshot
	builtFrom *xds.Update
}

// newXDSSource builds the source when xds.address is set; nil otherwise.
func newXDSSource(cfg Config, a *Agent, reg prometheus.Registerer, log *slog.Logger) (*xdsSource, error) {
	x := cfg.XDS
	if x.Address == "" {
		return nil, nil
	}
	tlsCfg, err := x.TLS.config()
	if err != nil {
		return nil, err
	}
	meta, err := x.metadata()
	if err != nil {
		return nil, err
	}
	node := &corev3.Node{Id: x.NodeID, Cluster: x.Cluster, UserAgentName: "weir-agent", Metadata: meta}
	if node.Id == "" {
		node.Id = cfg.Kubernetes.NodeName
	}
	if node.Id == "" {
		if node.Id, err = os.Hostname(); err != nil {
			return nil, fmt.Errorf("xds.nodeId: not set and no host name: %w", err)
		}
	}
	if zone := x.Locality; zone != "" || cfg.Zone != "" {
		if zone == "" {
			zone = cfg.Zone
		}
		node.Locality = &corev3.Locality{Zone: zone}
	}
	s := &xdsSource{a: a, precedence: x.Precedence, log: log, synced: make(chan struct{})}
	if s.precedence == "" {
		s.precedence = PrecedenceBoth
	}
	if !cfg.Kubernetes.Enabled {
		if s.other, err = staticRoutes(cfg); err != nil {
			return nil, err
		}
	}
	s.client, err = xds.New(xds.Options{
		Target: x.Address, TLS: tlsCfg, Delta: x.Mode != "sotw", Node: node,
		Publish: s.publish, Log: log, Registerer: reg,
		OnDemand: x.OnDemand, OnDemandTimeout: time.Duration(x.OnDemandTimeout), OnDemandIdle: time.Duration(x.OnDemandIdle),
	})
	if err != nil {
		return nil, fmt.Errorf("xds: %w", err)
	}
	if x.OnDemand && s.precedence != PrecedenceKubernetes {
		// Outbound connections ask the client before routing, so a
		// cluster held only on demand arrives first.
		a.engine.OnDemand = s.client
	}
	return s, nil
}

// start runs the client until ctx ends and waits (bounded) for its first
// complete routing.
func (s *xdsSource) start(ctx context.Context) {
	if s == nil {
		return
	}
	go s.client.Run(ctx)
	go func() {
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if s.client.Status().Synced {
					s.once.Do(func() { close(s.synced) })
					return
				}
			}
		}
	}()
	select {
	case <-s.synced:
		s.log.Info("xds routing synced", "address", s.client.Status().Target)
	case <-time.After(xdsInitialWait):
		s.log.Warn("xds routing not complete at start; serving what arrived and continuing", "status", fmt.Sprintf("%+v", s.client.Status()))
	case <-ctx.Done():
	}
}

// publish is the client's callback: merge and swap in the new routing.
func (s *xdsSource) publish(u xds.Update) error {
	s.a.reloadMu.Lock()
	defer s.a.reloadMu.Unlock()
	start := time.Now()
	prev := s.a.routes.Load()
	s.mu.Lock()
	s.last = &u
	var snap *route.Snapshot
	if s.precedence != PrecedenceKubernetes && prev != nil && prev == s.built && u.EndpointsOnly(s.builtFrom) {
		// xDS services win over the other source's of the same name, so
		// the merged routing changes exactly as the xDS one does.
		snap, _ = prev.WithEndpoints(u.Endpoints) // on error, a full build names the problem
	}
	how := "endpoints"
	if snap == nil {
		how = "full"
		rc := s.mergeLocked()
		s.mu.Unlock()
		var err error
		if snap, err = route.Build(rc, prev); err != nil {
			return fmt.Errorf("build routes: %w", err)
		}
	} else {
		s.mu.Unlock()
	}
	s.a.routes.Store(snap)
	s.built, s.builtFrom = snap, &u
	s.log.Debug("routes from xds", "services", len(u.Services), "changed", how, "build", time.Since(start).String())
	return nil
}

// mergeLocked applies the precedence to the other source and xDS.
func (s *xdsSource) mergeLocked() route.Config {
	rc := s.other
	if s.last == nil || s.precedence == PrecedenceKubernetes {
		return rc
	}
	u := s.last
	xdsServices := u.AllServices()
	if s.precedence == PrecedenceXDS || (len(rc.Services) == 0 && len(rc.CIDRs) == 0) {
		rc.Services, rc.CIDRs = xdsServices, u.CIDRs
		return rc
	}
	names := make(map[string]bool, len(xdsServices))
	addrs := map[netip.AddrPort]bool{}
	for _, svc := range xdsServices {
		names[svc.Name] = true
		for _, a := range svc.Addresses {
			addrs[a] = true
		}
	}
	services := make([]route.Service, 0, len(xdsServices)+len(rc.Services))
	services = append(services, xdsServices...)
	for _, svc := range rc.Services {
		if names[svc.Name] {
			continue
		}
		keep := svc.Addresses[:0:0]
		for _, a := range svc.Addresses {
			if !addrs[a] {
				keep = append(keep, a)
			}
		}
		if len(keep) != len(svc.Addresses) {
			svc.Addresses = keep
		}
		services = append(services, svc)
	}
	type ck struct {
		p    netip.Prefix
		port uint16
	}
	cidrs := append([]route.CIDRRoute(nil), u.CIDRs...)
	seen := map[ck]bool{}
	for _, r := range u.CIDRs {
		seen[ck{r.Prefix, r.Port}] = true
	}
	for _, r := range rc.CIDRs {
		if !seen[ck{r.Prefix, r.Port}] {
			cidrs = append(cidrs, r)
		}
	}
	rc.Services, rc.CIDRs = services, cidrs
	return rc
}

// publishRoutes swaps in routing from the other source (static services
// or Kubernetes), merged with xDS when it is on. Callers hold reloadMu.
func (a *Agent) publishRoutes(rc route.Config) error {
	var from *xds.Update
	if a.xds != nil {
		a.xds.mu.Lock()
		a.xds.other = rc
		rc = a.xds.mergeLocked()
		from = a.xds.last
		a.xds.mu.Unlock()
	}
	snap, err := route.Build(rc, a.routes.Load())
	if err != nil {
		return fmt.Errorf("build routes: %w", err)
	}
	a.routes.Store(snap)
	if a.xds != nil {
		a.xds.built, a.xds.builtFrom = snap, from
	}
	a.setKernelServices(rc.Services)
	a.syncKernelLB()
	return nil
}

// xdsStatus is the readiness detail for /readyz and /config_dump; nil
// when xDS is off.
func (a *Agent) xdsStatus() *xds.Status {
	if a.xds == nil {
		return nil
	}
	st := a.xds.client.Status()
	return &st
}

// xdsReadyLine says in one line whether routing follows the control plane.
func (a *Agent) xdsReadyLine() string {
	st := a.xdsStatus()
	switch {
	case st == nil:
		return ""
	case st.Connected && st.Synced:
		return "xds: connected, synced\n"
	case st.Connected:
		return "xds: connected, syncing\n"
	}
	return "xds: disconnected, serving the last routing (" + st.LastError + ")\n"
}
