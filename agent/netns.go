package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy/netns"
)

// The namespace guard. weir captures pods, never a node: a capture listener
// on 0.0.0.0:15006 and a REDIRECT of all outbound traffic in the node's own
// namespace would take the whole node into the mesh (kubelet, the API
// server's traffic, SSH). A runtime bug, a hostNetwork pod wired through CNI
// or a typo in a path must not get there, so every way into capture (a CNI
// ADD, restoring the state file, discovery, onboarding) passes this guard
// before any listener is opened or any rule is programmed. It refuses a path
// that is
//   - not a network namespace at all (a mount namespace, a plain file, …),
//   - the agent's own network namespace (the node's),
//   - the host's (PID 1's; on a real node the same as the agent's, in the
//     test world a different one),
//   - the namespace of another container's attachment: one namespace is
//     never captured twice under two container ids.
//
// Namespaces are compared by identity (device, inode), never by path.
//
// A refused ADD is answered 400; weir-cni reports it with its code 100
// (the agent refused), the message naming the path and the reason.

// hostNetnsPath is PID 1's network namespace: the host's on a real node.
const hostNetnsPath = "/proc/1/ns/net"

// discoveredPrefix starts the container id discovery gives a pod it found
// without an ADD (see discover); a later ADD of the same pod supersedes it.
const discoveredPrefix = "discovered-"

// nodeNamespaces are the network namespaces the agent never captures, by
// identity, each with the reason given when one is refused.
type nodeNamespaces map[netns.ID]string

// findNodeNamespaces lists the agent's own network namespace and the one of
// PID 1 at hostPath. The agent's own must be known (without it the guard
// would be blind); PID 1's may be unreadable (a container without the host's
// PID namespace, or without the right to inspect PID 1), which is logged: the
// agent's own namespace is the node's in a hostNetwork DaemonSet anyway.
func findNodeNamespaces(hostPath string, log *slog.Logger) (nodeNamespaces, error) {
	own, err := netns.Host()
	if err != nil {
		return nil, fmt.Errorf("open own network namespace: %w", err)
	}
	out := nodeNamespaces{own.ID(): "it is the agent's own network namespace (the node's)"}
	host, err := netns.IDOf(hostPath)
	switch {
	case err != nil:
		log.Warn("cannot read PID 1's network namespace; the guard compares namespaces with the agent's own only", "path", hostPath, "err", err)
	case host != own.ID():
		out[host] = "it is the host's network namespace (PID 1's, " + hostPath + ")"
	}
	return out, nil
}

// netnsRefusal is the guard's answer: path may not be captured, and why.
type netnsRefusal struct {
	path string
	why  string
	err  error // the cause, when the path could not be opened or inspected
}

func (e *netnsRefusal) Error() string {
	return fmt.Sprintf("netns %s refused: %s; weir captures the network namespaces of pods only", e.path, e.why)
}

func (e *netnsRefusal) Unwrap() error { return e.err }

// vetNetns is the half of the guard that needs no lock: path must be a
// network namespace and not a node's. It returns the namespace's identity.
func (a *Agent) vetNetns(path string) (netns.ID, error) {
	id, err := netns.Inspect(path)
	if err != nil {
		var ne *netns.NotNetnsError
		if errors.As(err, &ne) {
			return netns.ID{}, &netnsRefusal{path: path, why: "not a network namespace: it is " + ne.Is, err: err}
		}
		return netns.ID{}, &netnsRefusal{path: path, why: "cannot be opened: " + err.Error(), err: err}
	}
	if err := a.notNode(path, id); err != nil {
		return netns.ID{}, err
	}
	return id, nil
}

// notNode refuses the node's namespaces.
func (a *Agent) notNode(path string, id netns.ID) error {
	if why, ok := a.nodeNetns[id]; ok {
		return &netnsRefusal{path: path, why: why + "; weir never captures a node"}
	}
	return nil
}

// notShared refuses namespace id for att when another container's
// attachment is already known in it (captured or not): a namespace reused
// under another container id is a runtime bug, and capturing it again would
// take over the first pod's traffic. Another interface of the same
// container is no reuse; nor is the stand-in discovery made for the same
// pod. An entry whose namespace is gone (its number may then be reused) is
// no owner either: the sweep forgets it. Called with a.mu held.
func (a *Agent) notShared(path string, id netns.ID, att api.Attachment, meta api.Pod) error {
	for _, p := range a.pods.inNetns(id) {
		if p.att.ContainerID == att.ContainerID || supersedes(att, meta, p) {
			continue
		}
		if p.ns == nil {
			// No handle keeps its namespace alive: check it still is.
			if cur, err := netns.IDOf(p.netnsPath); err != nil || cur != id {
				continue
			}
		}
		return &netnsRefusal{path: path, why: fmt.Sprintf("it is already the network namespace of pod %s/%s (container %s, %s); a namespace is never captured under a second container id",
			p.meta.Namespace, p.meta.Name, p.att.ContainerID, p.netnsPath)}
	}
	return nil
}

// supersedes reports whether an attachment of pod meta replaces p, a stand-in
// discovery made for the same pod (same namespace and name, and same UID
// where both are known: a pod recreated under its old name is another pod).
func supersedes(att api.Attachment, meta api.Pod, p *pod) bool {
	return strings.HasPrefix(p.att.ContainerID, discoveredPrefix) && !strings.HasPrefix(att.ContainerID, discoveredPrefix) &&
		p.meta.Namespace == meta.Namespace && p.meta.Name == meta.Name &&
		(p.meta.UID == "" || meta.UID == "" || p.meta.UID == meta.UID)
}

// admitNetns runs the whole guard for an attachment the agent is about to
// know: path must be a pod's network namespace, not a node's, not another
// container's. Called with a.mu held.
func (a *Agent) admitNetns(path string, att api.Attachment, meta api.Pod) (netns.ID, error) {
	id, err := a.vetNetns(path)
	if err != nil {
		return netns.ID{}, err
	}
	if err := a.notShared(path, id, att, meta); err != nil {
		return netns.ID{}, err
	}
	return id, nil
}

// dropStandIns forgets what discovery found for the pod an ADD now names in
// namespace id, taking its rules out: the ADD decides afresh and the plugin
// programs what it answers. Called with a.mu held.
func (a *Agent) dropStandIns(id netns.ID, att api.Attachment, meta api.Pod) {
	for _, p := range a.pods.inNetns(id) {
		if !supersedes(att, meta, p) {
			continue
		}
		if err := a.offboard(p); err != nil {
			a.log.Warn("superseded discovered pod: release failed", "pod", meta.Namespace+"/"+meta.Name, "err", err)
			a.uncapture(p)
		}
		a.pods.remove(p.att)
		a.log.Info("discovered pod superseded by an ADD", "pod", meta.Namespace+"/"+meta.Name, "container", att.ContainerID)
	}
}

// notExist reports whether err says a namespace path is gone (not a
// refusal worth shouting about).
func notExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
