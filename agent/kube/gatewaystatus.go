package kube

// Route status: which agent writes it.
//
// Every agent watches the routes (each node routes its own pods' requests)
// and every agent computes the same status from the same objects, but only
// one writes it: the holder of the Lease StatusLeaseName in the agent's
// namespace (client-go leader election). With one writer per cluster:
//   - a change costs one status write, not one per node (a 500-node cluster
//     would otherwise send 500 conflicting updates for each route edit);
//   - agents whose caches lag for a moment never flip a condition back and
//     forth against agents that are ahead;
//   - a dead writer is replaced within the lease duration (15 s), and status
//     only lags meanwhile: routing never waits for it.
// A deterministic choice without a lease (say, the lowest node name) would
// need every agent to know which agents are alive, which is what the lease
// already tells.

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/weir-mesh/weir/agent/kube/gwroute"
)

// StatusLeaseName is the Lease (in the agent's namespace) whose holder
// writes Gateway API route status.
const StatusLeaseName = "weir-route-status"

// Leader election timing: client-go's usual values.
const (
	leaseDuration = 15 * time.Second
	renewDeadline = 10 * time.Second
	retryPeriod   = 2 * time.Second
)

// everything selects all objects of a lister.
var everything = labels.Everything()

// runStatusWriter campaigns for the status lease until ctx ends and, while
// it holds it, writes route status after every change.
func (s *Source) runStatusWriter(ctx context.Context) {
	lock := &resourcelock.LeaseLock{
		LeaseMeta: metav1.ObjectMeta{Namespace: s.agentN, Name: StatusLeaseName},
		Client:    s.client.CoordinationV1(),
		// node/pid: during a takeover two agents of one node run side by
		// side, and each must see the other as another holder.
		LockConfig: resourcelock.ResourceLockConfig{Identity: s.node + "/" + strconv.Itoa(os.Getpid())},
	}
	for ctx.Err() == nil {
		le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
			Lock:            lock,
			LeaseDuration:   leaseDuration,
			RenewDeadline:   renewDeadline,
			RetryPeriod:     retryPeriod,
			ReleaseOnCancel: true,
			Name:            StatusLeaseName,
			Callbacks: leaderelection.LeaderCallbacks{
				OnStartedLeading: func(ctx context.Context) {
					s.log.Info("writing Gateway API route status", "lease", s.agentN+"/"+StatusLeaseName)
					s.writeStatusLoop(ctx)
				},
				OnStoppedLeading: func() {
					s.log.Info("stopped writing Gateway API route status", "lease", s.agentN+"/"+StatusLeaseName)
				},
			},
		})
		if err != nil {
			s.log.Error("route status leader election", "err", err)
			return
		}
		le.Run(ctx)
		select {
		case <-ctx.Done():
		case <-time.After(retryPeriod):
		}
	}
}

// writeStatusLoop writes status whenever routes or Services changed,
// retrying a failed round a second later.
func (s *Source) writeStatusLoop(ctx context.Context) {
	g := s.gw
	g.wake()
	retry := time.NewTimer(0)
	<-retry.C
	for {
		select {
		case <-ctx.Done():
			retry.Stop()
			return
		case <-g.kick:
		case <-retry.C:
		}
		s.Services() // brings the translation up to date
		if err := s.writeStatus(ctx); err != nil {
			s.log.Warn("write Gateway API route status; retrying", "err", err)
			retry.Reset(time.Second)
		}
	}
}

// writeStatus brings weir's entries in every watched route's
// status.parents to what the last translation says, leaving other
// controllers' entries alone.
func (s *Source) writeStatus(ctx context.Context) error {
	g := s.gw
	g.mu.Lock()
	hl, gl, tr := g.http, g.grpc, g.last
	g.mu.Unlock()
	var targets []statusTarget
	if hl != nil {
		list, _ := hl.List(everything)
		for _, r := range list {
			targets = append(targets, statusTarget{"HTTPRoute", r.Namespace, r.Name, r.Status.Parents, func(parents []gwv1.RouteParentStatus) error {
				up := r.DeepCopy()
				up.Status.Parents = parents
				_, err := g.client.GatewayV1().HTTPRoutes(r.Namespace).UpdateStatus(ctx, up, metav1.UpdateOptions{FieldManager: fieldManager})
				return err
			}})
		}
	}
	if gl != nil {
		list, _ := gl.List(everything)
		for _, r := range list {
			targets = append(targets, statusTarget{"GRPCRoute", r.Namespace, r.Name, r.Status.Parents, func(parents []gwv1.RouteParentStatus) error {
				up := r.DeepCopy()
				up.Status.Parents = parents
				_, err := g.client.GatewayV1().GRPCRoutes(r.Namespace).UpdateStatus(ctx, up, metav1.UpdateOptions{FieldManager: fieldManager})
				return err
			}})
		}
	}
	var errs []error
	for _, tg := range targets {
		parents, changed := gwroute.MergeParents(tg.parents, tr.Status[gwroute.Key(tg.kind, tg.namespace, tg.name)])
		if !changed {
			continue
		}
		if err := tg.update(parents); err != nil && !apierrors.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("%s %s/%s: %w", tg.kind, tg.namespace, tg.name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%d route status updates failed, first: %w", len(errs), errs[0])
	}
	return nil
}

// statusTarget is one route as the status writer sees it: its current
// status.parents and how to write new ones (an UpdateStatus carrying the
// cached resourceVersion, so a concurrent change conflicts and is retried).
type statusTarget struct {
	kind, namespace, name string
	parents               []gwv1.RouteParentStatus
	update                func(parents []gwv1.RouteParentStatus) error
}
