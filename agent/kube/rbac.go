package kube

import rbacv1 "k8s.io/api/rbac/v1"

// PolicyRules are the ClusterRole rules a Source needs, and no more: the
// informers list and watch namespaces, pods (of every namespace: RBAC cannot
// restrict a watch to one node), services and endpointslices; Decide's
// fallback gets pods and namespaces; RecordCapture patches pods; the event
// recorder creates events and patches them when it aggregates repeats;
// SetNodeReady gets and patches nodes. weir's manifests must grant at least
// these; the tests run the Source as a ServiceAccount bound to exactly them.
func PolicyRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
	}
}
