package testworld

import (
	"os"
	"path/filepath"
	"sync"
)

var (
	rpcPeersOnce sync.Once
	rpcPeersDir  string
	rpcPeersErr  error
)

// RPCPeers returns the directory of the real RPC peers built by
// hack/rpc-peers.sh (dubbo-peer, a dubbo-go provider and consumer; and
// node_modules with sofa-bolt-node): WEIR_RPC_PEERS_DIR, else the script is
// run once (it caches by the hash of its inputs). A peer that cannot be
// had fails the test under CI=true.
func RPCPeers(t T) string {
	t.Helper()
	rpcPeersOnce.Do(func() {
		if rpcPeersDir = os.Getenv("WEIR_RPC_PEERS_DIR"); rpcPeersDir == "" {
			rpcPeersDir, rpcPeersErr = runHackDir("rpc-peers.sh")
		}
	})
	if rpcPeersErr != nil {
		Require(t, false, "RPC peers ("+rpcPeersErr.Error()+")")
	}
	_, err := os.Stat(filepath.Join(rpcPeersDir, "dubbo-peer"))
	Require(t, err == nil, "dubbo-peer in "+rpcPeersDir+" (hack/rpc-peers.sh)")
	return rpcPeersDir
}
