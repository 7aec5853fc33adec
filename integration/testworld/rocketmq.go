package testworld

import (
	"os"
	"path/filepath"
	"sync"
)

var (
	rmqOnce sync.Once
	rmqDir  string
	rmqErr  error
)

// RocketMQClient returns the path of rmq-client, Apache's RocketMQ Go
// client built by hack/rocketmq-client.sh: from WEIR_ROCKETMQ_DIR, else the
// script is run once (it caches by the hash of its inputs). A client that
// cannot be had fails the test under CI=true.
func RocketMQClient(t T) string {
	t.Helper()
	rmqOnce.Do(func() {
		if rmqDir = os.Getenv("WEIR_ROCKETMQ_DIR"); rmqDir == "" {
			rmqDir, rmqErr = runHackDir("rocketmq-client.sh")
		}
	})
	if rmqErr != nil {
		Require(t, false, "rmq-client ("+rmqErr.Error()+")")
	}
	bin := filepath.Join(rmqDir, "rmq-client")
	_, err := os.Stat(bin)
	Require(t, err == nil, "rmq-client in "+rmqDir+" (hack/rocketmq-client.sh)")
	return bin
}
