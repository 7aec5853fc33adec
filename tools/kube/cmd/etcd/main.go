// Command etcd is etcd 3.5's own server entry point, built from the Go module
// proxy so weir's integration tests get the etcd version kube-apiserver 1.32
// is tested with (Debian ships 3.4, whose fresh watches can time out).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
