package agent

import (
	"time"

	"github.com/weir-mesh/weir/proxy/netns"
)

// deletedTTL is how long a CNI DEL keeps discovery away from the pod's
// namespace. The rest of the chain (the main plugin's DEL removes the
// interface, then the runtime removes the namespace) runs right after
// weir-cni's DEL; a minute covers a slow node many times over, and a
// pod's new sandbox has a new namespace, which this never hides.
const deletedTTL = time.Minute

// deletedPods are the (namespace, pod UID) pairs of recent CNI DELs.
//
// Why: chained DELs run in reverse order, so weir-cni's DEL comes while
// the pod's namespace still holds its address. The pod object is still
// enabled in the API (a deleted pod lingers until its containers stop; a
// restarted sandbox keeps the object). A reconcile in that window would
// "discover" the namespace as a pod added while the agent was away and
// capture it again: rules programmed into a dying namespace, its
// listeners holding it open until the next reconcile found it gone, and
// a capture recorded on the pod object. Guarded by Agent.mu.
type deletedPods map[deletedKey]time.Time

type deletedKey struct {
	ns  netns.ID
	uid string
}

// add records a DEL at now and forgets the ones older than deletedTTL.
func (d *deletedPods) add(ns netns.ID, uid string, now time.Time) {
	if *d == nil {
		*d = deletedPods{}
	}
	for k, at := range *d {
		if now.Sub(at) > deletedTTL {
			delete(*d, k)
		}
	}
	(*d)[deletedKey{ns, uid}] = now
}

// has says whether the pod uid's namespace ns was DELeted within deletedTTL.
// A DEL that named no pod UID (a runtime that does not pass
// K8S_POD_UID) hides the namespace from every pod.
func (d deletedPods) has(ns netns.ID, uid string, now time.Time) bool {
	for _, k := range []deletedKey{{ns, uid}, {ns, ""}} {
		if at, ok := d[k]; ok && now.Sub(at) <= deletedTTL {
			return true
		}
	}
	return false
}
