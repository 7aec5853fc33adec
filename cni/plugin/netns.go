package plugin

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The plugin's half of the namespace guard (the agent's is in
// agent/netns.go). An ADD and a CHECK are judged by the agent, which knows
// every namespace it enrolled; a DEL must work with the agent down, and it
// enters the namespace it names to take rules out, so weir-cni judges that
// namespace itself first: a DEL naming the node's network namespace, or
// something that is no network namespace at all, must not look inside it.
// Nothing of weir can be there (an ADD for it was refused), so such a DEL
// succeeds without touching it: failing it would stop the runtime's DEL
// chain before the primary plugin releases the pod's address.

// nodeNetnsPaths are the node's network namespaces as weir-cni sees them:
// its own (a runtime runs CNI plugins in the node's namespace) and PID 1's
// (the host's). A variable so a unit test can point it elsewhere.
var nodeNetnsPaths = []string{"/proc/self/ns/net", "/proc/1/ns/net"}

// netnsRefusal says why weir-cni must not enter a namespace path: "" when
// it may. A path that does not exist may be entered (DEL of a sandbox that
// is gone succeeds there anyway).
func netnsRefusal(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fd := int(f.Fd())
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil || fs.Type != unix.NSFS_MAGIC {
		return "it is not a network namespace (not a namespace file)"
	}
	typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
	if err != nil || typ != unix.CLONE_NEWNET {
		return "it is not a network namespace"
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "it cannot be inspected: " + err.Error()
	}
	for _, node := range nodeNetnsPaths {
		var ns unix.Stat_t
		if unix.Stat(node, &ns) != nil {
			continue // PID 1's may be hidden; weir-cni's own never is
		}
		if ns.Dev == st.Dev && ns.Ino == st.Ino {
			return fmt.Sprintf("it is the node's network namespace (the same as %s)", node)
		}
	}
	return ""
}
