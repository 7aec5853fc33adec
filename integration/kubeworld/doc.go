// Package kubeworld runs a real Kubernetes control plane for weir's
// integration tests: etcd 3.5 and kube-apiserver v1.32.13, built from the
// Go module proxy by hack/kube-binaries.sh, listening on 127.0.0.1 only.
//
// There is no controller-manager, scheduler or kubelet, so the world is what
// the agent sees through its watches and nothing more:
//   - a namespace gets its "default" ServiceAccount from [World.Namespace],
//     not from a controller, and is finalized by the harness on cleanup;
//   - a pod is bound to a node by spec.nodeName at creation and never runs;
//     its IP and readiness are written to the status subresource with
//     [World.SetPodReady], and it is removed with [World.ForceDeletePod];
//   - EndpointSlices are written by the test ([World.EndpointSlice]), since no
//     endpointslice controller exists.
//
// Authentication is by client certificate: the harness user is in
// system:masters, so it bypasses authorization. The apiserver runs with
// --authorization-mode=RBAC, so a client for a ServiceAccount
// ([World.ServiceAccountClient], a real bound token) is held to the
// ClusterRoles a test (or weir's manifests, via [World.Kubectl]) grants it.
// That is what lets tests prove the agent's RBAC is sufficient and no wider.
//
// One world is shared by every test of a test binary when its TestMain calls
// [Main]; each test still gets its own namespaces and uniquely named nodes.
// Without [Main], [Start] gives each test a private world (several seconds
// each, and about 300 MB of memory while it runs).
//
// [StartWith] places a private world elsewhere ([Options]: a command
// wrapper such as nsenter, an address, a dialer, the authorization mode):
// integration/nodeworld runs it inside a real node's netns, beside a kubelet
// that authenticates with a certificate from [World.WriteKubeconfig].
//
// The binaries are found through WEIR_KUBE_BIN_DIR or, when that is unset, by
// running hack/kube-binaries.sh (a cold build takes minutes; later runs reuse
// its cache). When they cannot be had the test is skipped, or fails when
// CI=true, because a skipped test proves nothing in CI.
package kubeworld
