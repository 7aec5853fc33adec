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
// Approach: two engines behind Serve, chosen by Options.Engine.
//
// EngineFrames (the default) is a frame-level proxy built on
// golang.org/x/net/http2's Framer (frame parsing and validation,
// CONTINUATION, header list limits) and hpack, with its own connection
// state machines (fserve.go for the client side, fupstream.go for the
// upstream side, fstream.go for one request, fwrite.go for writing). Each
// connection, client or upstream, has one goroutine that reads and
// dispatches its frames; what it produces for one read of the socket
// (forwarded HEADERS and DATA, WINDOW_UPDATEs, SETTINGS and PING answers)
// is queued per connection and leaves in one write, made without
// blocking by the reader itself when it next waits for input, the rest
// by the connection's writer goroutine, so a peer that stops reading
// stalls nobody else. A client stream maps to a stream on a multiplexed
// upstream connection per endpoint (Pool, dialled from the pod's network
// namespace through Upstream.Dial), opened only under the server's
// SETTINGS_MAX_CONCURRENT_STREAMS (one stream until its SETTINGS arrive);
// the client's own streams are bounded by MaxConcurrentStreams
// (REFUSED_STREAM beyond). Header blocks are decoded and encoded again on
// each hop, so the proxy can filter fields, rewrite and apply routes; a
// writer sends its last block again, without the encoder, when the same
// fields follow a block that left the table unchanged (hpackmemo.go).
// Flow control is end to end but decoupled: each side is offered fixed
// windows (256 KiB per stream, 1 MiB per connection), and window goes
// back to one side only as the other side's windows let the bytes out, so
// the proxy holds at most those windows per stream and connection however
// slow either peer reads. No goroutine per request: timers exist only for
// the rule's timeouts, and a goroutine only while a new upstream
// connection is dialled. In the project's bench (docs/benchmarks.md) it
// costs about a seventh of the x/net engine's CPU per h2c request, with
// about one syscall per request.
//
// EngineXNet, the first implementation, parses and writes the streams with
// x/net/http2 on both sides, its Server over the client's connection and
// its Transport over connections this package dials itself
// (Transport.ConnPool is the Pool, so the transport's own retry of
// refused streams comes back to the balancer). Every request costs a
// goroutine on each side, an http.Request and http.Response with their
// header maps, and about three writes each way per unary call. It stays
// as a fallback while the frame engine is new.
//
// Not supported: TLS (h2 over TLS is relayed as L4 TLS or terminated
// elsewhere), CONNECT and extended CONNECT (answered 501), HTTP/1.1
// Upgrade: h2c (the sniffer hands over prior knowledge only), server push
// (never forwarded: the upstream connections disable it), PRIORITY
// (ignored), and forwarding an upstream's RST_STREAM code: a broken
// upstream stream resets the client's with INTERNAL_ERROR, or, for gRPC,
// ends it with grpc-status UNAVAILABLE. The x/net engine also drops
// request trailers the client did not declare in a Trailer field (gRPC
// clients send none) and 1xx answers other than 100-continue, which the
// frame engine forwards.
package h2
