package rpc

import (
	"fmt"
	"time"
)

// RetryOn is a set of failures a request may be retried on, always on
// another endpoint (cluster.Pick with the failed attempt's lease, within
// the cluster's retry.maxRetries and retry budget).
type RetryOn uint8

// Failures a route can retry on.
const (
	// RetryConnect: the request was never sent (the connect to the
	// endpoint failed, or its connection died before taking the request).
	// Always safe, so on by default, as for HTTP.
	RetryConnect RetryOn = 1 << iota
	// RetryReset: the request was sent and its connection broke before an
	// answer; the server may have run it, so only for idempotent calls.
	RetryReset
	// RetryBusy: the server answered that it is too busy to run the call
	// (Dubbo SERVER_THREADPOOL_EXHAUSTED_ERROR, SOFABolt
	// SERVER_THREADPOOL_BUSY, RocketMQ SYSTEM_BUSY): it did not run it.
	RetryBusy
)

// retryNames are the config names of RetryOn's bits, in bit order.
var retryNames = [...]string{"connect-failure", "reset", "busy"}

// ParseRetryOn reads one failure name of a route's retry.on.
func ParseRetryOn(name string) (RetryOn, error) {
	for i, n := range retryNames {
		if n == name {
			return 1 << i, nil
		}
	}
	return 0, fmt.Errorf("%q is not one of connect-failure, reset, busy", name)
}

// Policy is the per-request timeout and retry policy of an RPC route (or a
// service's default). A nil *Policy is DefaultPolicy.
type Policy struct {
	// Timeout bounds a request from its arrival to its answer: past it the
	// client gets the protocol's timeout error (Hijacker), the late answer
	// is dropped, and the upstream connection and the other requests on it
	// go on. 0: none (PoolOptions.ResponseTimeout still bounds a stalled
	// connection).
	Timeout time.Duration
	// Attempts is the most retries of one request after it was sent
	// (RetryReset, RetryBusy). Retries of requests never sent
	// (RetryConnect) are bounded by the cluster's retry.maxRetries only.
	Attempts int
	// On is the set of failures retried.
	On RetryOn
}

// DefaultPolicy is the policy of a request no route gives one: no
// timeout beyond the pool's, and only requests never sent are retried.
var DefaultPolicy = &Policy{On: RetryConnect}

// Retry reasons counted in weir_rpc_retries_total.
const (
	reasonConnect = "connect-failure"
	reasonReset   = "reset"
	reasonBusy    = "busy"
)
