// Package rpc is weir's framework for request/response protocols other
// than HTTP (Redis, Dubbo, SOFABolt, RocketMQ remoting): a
// protocol is a Codec, the framework does the proxying.
//
// A Codec frames a byte stream into Frames: Decode returns one frame and
// its length, or ErrNeedMore with a lower bound of the frame's length (the
// framework reads that much before asking again, so a large frame is not
// rescanned at every read), or ErrFrameTooLarge as soon as a header
// declares more than the protocol's maximum, before its body is buffered.
// A Frame says what it is (Kind), carries its original bytes, gets and
// sets its request id at the width the codec declares (IDWidth; 0 for
// protocols without ids, whose responses come in request order), and
// exposes routing attributes by name, decoded on demand.
//
// Optional capabilities are interfaces a codec may implement, resolved
// once by Register: Heartbeater (heartbeats answered by the agent),
// Hijacker (the protocol's own error reply, e.g. Redis "-ERR …"), GoAwayer
// (the frame sent to clients on drain), Keyer (the balancing key of a
// request, e.g. a Redis key's hash), Pinner (requests that cannot be
// balanced on their own) and ServerRequester (the agent's answer to a
// request a server sends on a shared connection, e.g. a RocketMQ broker's
// notification).
//
// The framework owns the rest. Serve reads one downstream connection's
// requests and balances each with cluster.Pick; a Pool per workload and
// protocol keeps ConnsPerEndpoint shared upstream connections per
// endpoint (dialled with Lease.Dial), each carrying the requests of any
// number of downstream connections: multiplexed with fresh upstream ids
// when the protocol has ids (the id is patched back into the response),
// pipelined and matched first in, first out when it has none. A request
// goes upstream as its original bytes, only its id patched. Answers go
// back to each downstream connection as they complete when the protocol
// has ids (the client matches them; a slow call holds no other), in its
// request order when it has none, written by the goroutine that completed
// them (the upstream connection's reader, one non-blocking write per
// client per read), and by the session's writer goroutine only when the
// client's socket is full. Errors (no
// cluster, no endpoint, circuit open, connect failure, an upstream
// connection lost with requests on it) are answered with the Hijacker's
// error reply; a protocol without one closes the downstream connection.
// On drain (Upstream.Draining) Serve sends the GoAwayer's frame if any,
// stops reading, answers every request already read, then closes. A
// request the Pinner names moves the downstream connection to an upstream
// connection of its own, relayed as bytes from that request on.
//
// A reader handles a read's worth of frames as one batch (up to 128 of
// them: what one read brought, all in one buffer and with one clock
// reading). A session's reader registers a batch's requests for their
// answers under one hold of the answer lock, picks them with one call
// (cluster.PickRun: the balancer still decides for each request, only
// the cluster-wide counts are updated once) unless the cluster picks by
// key, and writes each run of them bound for one upstream connection
// under one hold of its locks, with one flush. An upstream connection's
// reader matches a read's worth of responses to their requests under one
// hold of its lock, ends their leases together (cluster.DoneRun) and adds
// their "ok" counts and latencies (a histogram kept as atomic counts per
// bucket) once per batch. Order, pinning, heartbeats, retries and
// timeouts are per request as before: a pinned request puts the frames
// read after it back as bytes to relay.
//
// Per request the hot path allocates nothing of its own: pending requests
// and answer slots are a session's spares, reused under the answer lock
// that registering and answering a request take anyway; the pick goes
// into a lease the pending request holds (cluster.PickInto), and the key
// is computed only for clusters that hash it (cluster.UsesKey); a
// session's reader finds the shared connection to an endpoint and the
// metrics of a method in small caches of its last few; a codec that is a
// Recycler gets its frames back once no one holds them, and one that is
// also a Reuser (Redis, Dubbo) gets them back as the next frames its
// reader fills; and a read buffer goes back to a pool once
// every frame it lent is released, so pipelined commands and replies
// cost no buffer garbage either.
//
// Attribute routes: Upstream.Route, when set, picks each request's
// cluster from its attributes (proxy/route's RPCRouter); otherwise every
// request goes to Upstream.Cluster. Metrics (weir_rpc_requests_total by
// protocol, service, method and status; a latency histogram; heartbeats
// answered) are counted when Upstream.Metrics is set.
//
// Timeouts and retries (Policy, per route or per service, from
// Upstream.Route or Upstream.Policy): a request past its Timeout is
// answered with the Hijacker's timeout error (ErrRequestTimeout) by a
// timer per upstream connection over a heap of deadlines; the connection
// and its other requests go on, and the late answer is recognised (by id,
// or by its place in the order) and dropped. PoolOptions.ResponseTimeout
// still closes a connection that answers nothing at all. A failed request
// goes to another endpoint through cluster.Pick with the failed attempt's
// lease (so the outlier, breaker and retry budget state is HTTP's) when
// the policy lists the failure: RetryConnect (never sent; on by default),
// RetryReset (the connection broke before an answer), RetryBusy (the
// Busier's "server busy" answer), within Policy.Attempts and the deadline.
// One-way requests, requests the Keyer keys (a Redis key lives on one
// shard) and those the Retrier vetoes (a RocketMQ request naming its
// broker) are never retried. Retries are counted in
// weir_rpc_retries_total{reason}, timeouts as status "timeout".
package rpc
