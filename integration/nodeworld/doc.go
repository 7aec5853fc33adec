// Package nodeworld runs one real Kubernetes node for weir's end-to-end
// tests: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
// (v1.32.13, built by hack/kube-binaries.sh), containerd and runc from
// Debian's packages, and a kubelet with a node client certificate, so that
// the shipped DaemonSet runs as it would on a cluster: kubelet starts its
// pods, containerd wires them through the CNI chain its installer wrote.
//
// Isolation. Everything runs inside a node network namespace the test
// creates (nothing attached to the root netns; the node's address is
// 192.0.2.10 on a veth pair whose both ends stay there) and inside a mount namespace of its own, a
// slave of the host's, where the test's directories are bind-mounted over
// the host paths the manifest and the components use (/etc/cni/net.d,
// /opt/cni/bin, /run/weir, /run/netns, /run/containerd, /var/lib/kubelet,
// /var/lib/containerd, /var/lib/cni, /var/log). Mounts made there never
// reach the host. Programs are started with nsenter --net= --mount=, not
// ip netns exec, whose private mount namespace and /sys remount break the
// mount propagation a hostPath with mountPropagation needs.
//
// What a real cluster has and this node lacks: kube-proxy and cluster DNS.
// Only the "kubernetes" Service is translated, by one DNAT rule in the node
// netns (the agent is a hostNetwork pod and reaches the apiserver through
// its in-cluster config); any other ClusterIP works only through weir.
//
// Pitfalls found on this machine, each answered in the configuration here:
// root lacks CAP_SYS_RESOURCE (containerd: restrict_oom_score_adj); PID 1
// is not systemd and cgroups are v1 (kubelet: cgroupDriver cgroupfs,
// failCgroupV1 false); swap is allowed (failSwapOn false); images come from
// local OCI archives (image GC thresholds that never collect them).
//
// Teardown leaves the machine as it was: every process the node started
// (kubelet, containerd, its shims and containers, control plane) is killed,
// kubelet's cgroups (under a cgroup root of the node's own) removed, the
// global sysctls kubelet sets restored, and host directories created only to
// be mount points removed.
package nodeworld
