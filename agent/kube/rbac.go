package kube

import rbacv1 "k8s.io/api/rbac/v1"

// PolicyRules are the ClusterRole rules a Source needs, and no more: the
// informers list and watch namespaces, pods (of every namespace: RBAC cannot
// restrict a watch to one node), services and endpointslices; Decide's
// fallback gets pods and namespaces; RecordCapture patches pods; the event
// recorder creates events and patches them when it aggregates repeats;
// SetNodeReady gets and patches nodes; the Gateway API half lists and
// watches HTTPRoutes and GRPCRoutes and updates their status subresource
// (only the status lease holder writes; see gatewaystatus.go). weir's
// manifests must grant at least these; the tests run the Source as a
// ServiceAccount bound to exactly them (and LeaseRules).
func PolicyRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list", "watch", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"events"}, Verbs: []string{"create", "patch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "patch"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes", "grpcroutes"}, Verbs: []string{"list", "watch"}},
		{APIGroups: []string{"gateway.networking.k8s.io"}, Resources: []string{"httproutes/status", "grpcroutes/status"}, Verbs: []string{"update"}},
	}
}

// LeaseRules are the Role rules, in the agent's own namespace, for the
// route status lease (StatusLeaseName): leader election gets it, creates
// it the first time and updates it to renew or take it over. RBAC cannot
// limit create to one name; get and update are.
func LeaseRules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{StatusLeaseName}, Verbs: []string{"get", "update"}},
	}
}
