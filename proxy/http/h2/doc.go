// Package h2 is weir's HTTP/2 and gRPC half of the L7 proxy: it serves a
// captured h2c connection (prior knowledge; TLS is not terminated) and
// routes, balances and forwards every stream on its own, so the requests
// of one long-lived client connection spread over all endpoints.
//
// What a stream goes through: its pseudo-headers and fields feed
// route.RequestView; Upstream.Resolve picks a local reply (404, 500,
// 301/302; for gRPC requests an HTTP 200 with a trailers-only grpc-status
// instead of an error status) or a cluster, or passthrough to the original
// destination. Cluster.Pick chooses the endpoint; the Pool gives a stream
// on an HTTP/2 connection to it (one connection multiplexes many requests;
// another is dialled when all are at the peer's MAX_CONCURRENT_STREAMS);
// the request goes out with the rule's header filters and URL rewrite
// applied, connection-specific fields stripped (RFC 9113 §8.2.2), nothing
// added (no X-Forwarded-*, no User-Agent, no Accept-Encoding) and
// :authority kept. Bodies stream both ways chunk by chunk with HTTP/2 flow
// control end to end, so gRPC client, server and bidirectional streaming
// stay real time; response trailers (grpc-status, grpc-message) and
// trailers-only answers pass unchanged. A stream the upstream refused
// before processing it (REFUSED_STREAM, above a GOAWAY's last stream id,
// a failed connect) is retried on another endpoint, within the cluster's
// retry budget, if its body so far fits Options.MaxReplayBytes. The
// matched rule's policy adds more (route.Action): Timeout and a gRPC
// client's grpc-timeout (the shorter) bound the exchange, the rest sent
// upstream as grpc-timeout, an expired call answered DEADLINE_EXCEEDED at
// once and never retried; TryTimeout bounds each attempt's response head;
// an idempotent request, or a gRPC call answered trailers-only with a code
// the rule lists, whose body was wholly received and kept, goes again to
// another endpoint. A 5xx or grpc-status UNAVAILABLE answer counts as a
// failure for outlier ejection. When the
// agent drains, the client gets a barrier PING (the server's frames wait
// for its answer, so no stream ends just before the GOAWAY, which clients
// like h2load would pay for with a request), then the two-step GOAWAY
// (highest stream id and a PING, then the last stream id), and streams in
// flight finish.
//
// Approach: the streams are parsed and written by golang.org/x/net/http2
// on both sides, its Server over the client's connection and its
// Transport over connections this package dials itself (Transport.ConnPool
// is the Pool, so the transport's own retry of refused streams comes back
// to the balancer). That buys correct flow control, stream states,
// SETTINGS, CONTINUATION, header limits and trailers from a well-kept
// implementation, at net/http's price: every request costs a goroutine
// on each side, an http.Request and http.Response with their header maps,
// and one more goroutine while a request body is read (so an abandoned
// attempt can be interrupted), and about three writes each way per unary
// call. BenchmarkGRPCUnary and BenchmarkH2C measure it over loopback: a
// small unary gRPC call costs about 116 allocations (12 KB) more through
// the proxy than direct, a small h2c GET about 76 (8 KB), and each goes
// from about 50µs to 120-250µs on a busy 2-core machine. A frame-level
// proxy (http2.Framer and hpack, forwarding frames with ids patched) could
// do the same work for a fraction, behind the same API.
//
// Not supported: TLS (h2 over TLS is relayed as L4 TLS or terminated
// elsewhere), CONNECT and extended CONNECT (answered 501), HTTP/1.1
// Upgrade: h2c (the sniffer hands over prior knowledge only), server push
// (never forwarded: the upstream connections disable it), request
// trailers the client did not declare
// in a Trailer field (x/net's server drops them; gRPC clients send none),
// 1xx informational answers other than 100-continue, and forwarding an
// upstream's RST_STREAM code: a broken upstream stream resets the client's
// with INTERNAL_ERROR, or, for gRPC, ends it with grpc-status UNAVAILABLE.
package h2
