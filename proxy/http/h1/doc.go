// Package h1 is weir's HTTP/1.1 proxy codec: it serves one captured
// downstream connection as a stream of requests, routing and balancing
// each on its own, over pooled upstream connections.
//
// # Pipeline
//
// Serve handles requests strictly one at a time on the connection's own
// goroutine; pipelined requests wait in the read buffer and are answered in
// order. For each request, in order:
//
//  1. read: the head is parsed in place from a pooled read buffer. The
//     parser keeps offsets into the buffer and never writes it, so field
//     names go upstream byte for byte.
//  2. route: proxy/http's Upstream.Resolve reads the head as a
//     route.RequestView and decides: a local reply (404 no rule, 500 no
//     backend, 301/302 redirect), a cluster, or passthrough to the original
//     destination.
//  3. pick: cluster.PickInto chooses an endpoint for this request alone,
//     into one of two leases the connection keeps (no allocation); an
//     idle connection to it comes from the Pool, else Lease.Dial connects.
//  4. send: the head is rebuilt in one reusable buffer (hop-by-hop fields
//     dropped, the route's header modifiers and URL rewrite applied, our own
//     Connection/TE/Upgrade added) and sent in one write together with a
//     body of up to 4 KiB, or one writev with a larger buffered body. A body
//     that has not fully arrived is streamed by a second goroutine while
//     the response is awaited, which is how Expect: 100-continue works: the
//     expectation is forwarded and the 100 relayed.
//  5. receive: interim 1xx responses are relayed (to HTTP/1.1 clients);
//     the final head gets the route's response modifiers, and the body
//     streams back as received, framing validated on the way.
//  6. release: the upstream connection returns to the pool when both
//     messages were framed cleanly and neither side asked to close; the
//     lease ends with the exchange's verdict (an error only when the
//     upstream broke the connection or the protocol; 5xx-based ejection
//     will plug into verdict); the request is counted.
//
// A 101 Switching Protocols (to a request with Connection: upgrade and
// Upgrade) or a 2xx to CONNECT turns the connection into a byte tunnel, both
// directions, half-close aware; its upstream connection is never pooled.
//
// The warm path (keep-alive, pooled upstream, body in the buffer) makes no
// allocation and starts no goroutine, through a cluster too (the pick is
// cluster.PickInto, into a lease the connection keeps). A connection
// holds an 8 KiB read buffer (grown to the head limit only for a head that
// needs it); an upstream exchange borrows a 16 KiB one.
//
// Per request it makes one read and one write on each side when the bytes
// are there: the head and a small body go upstream in one write, the
// answer's head and a small body back in one. A read that would find
// nothing yields to the other goroutines first (yieldBeforeRead), which
// saves the EAGAIN read and park most of the time under load. The client's
// idle timeout and the response header timeout are coarse (refreshed once
// per eighth of their length, see deadlineSlack): no timer update per
// request. A route's timeouts are exact.
//
// # Connection management
//
// Keep-alive follows RFC 9112 §9.3 on each side independently: HTTP/1.1
// keeps unless Connection: close, HTTP/1.0 only with Connection:
// keep-alive. HTTP/1.0 requests go upstream as HTTP/1.0 with keep-alive
// asked for; responses are sent as HTTP/1.1. A response with no length is
// read until the upstream closes, and the client connection closes after
// it. HEAD, 1xx, 204 and 304 responses have no body. When the engine drains
// (Upstream.Draining closed), an idle connection closes at once and a busy
// one answers its current request with Connection: close. A connection the
// proxy ends after an answer is half-closed and drained briefly (lingering
// close) so the client reads the answer instead of a reset.
//
// Upstream failures are answered through proxy/http's ErrorStatus: 503 no
// endpoint or circuit open, 504 no response head within
// Options.ResponseHeaderTimeout (15 s), 502 a refused connect or a broken
// response. A connect failure is retried on another endpoint
// (cluster.PickInto with the failed lease). A pooled connection the server
// closed is not the endpoint's fault: a request that can be sent again
// (idempotent method, body not streamed) skips the liveness check and, if
// the connection fails before any response byte, goes again on a fresh
// connection to the same endpoint; any other request takes a pooled
// connection only after a non-blocking peek shows it open, and is never
// sent twice.
//
// The matched rule's policy adds more (route.Action): Timeout bounds the
// exchange (504, not held against the endpoint), TryTimeout each attempt's
// response head; an idempotent request with its whole body buffered whose
// answer has a status the rule lists, or whose attempt ran out of time,
// goes to another endpoint within the rule's attempts and the cluster's
// retry budget. An upstream's 5xx answer counts as a failure for outlier
// ejection (proxy/http's Verdict).
//
// # What is refused
//
// Anything two parsers could frame differently is answered by the proxy
// with Connection: close and never forwarded (RFC 9112 §6.3, §11.2): bare
// LF or CR, obs-fold, whitespace before a colon, invalid field names or
// values, more than one Host (or none in HTTP/1.1), more than one or an
// invalid Content-Length, Content-Length with Transfer-Encoding,
// Transfer-Encoding on HTTP/1.0, more than one Transfer-Encoding field, or
// a final coding other than chunked (400); codings other than chunked (501);
// HTTP major versions other than 1 (505); malformed chunk sizes (more than
// 16 hex digits or beyond int64), extensions, data terminators or trailers
// (400). A body sent with its head is validated before anything goes
// upstream; a streamed one is cut at its first invalid byte.
// Connection options cannot make Content-Length, Transfer-Encoding or
// Host hop-by-hop, and route header modifiers cannot touch them either.
// The codec adds no Forwarded or X-Forwarded-* field: the mesh is
// transparent.
//
// # Limits
//
// Limits bound heads: the request line (8 KiB, else 414), a whole head and
// a trailer section (64 KiB, else 431) and the number of fields (100, else
// 431). Exceeding one is a *LimitError, mapped to its status in one place.
// Errors never carry bytes of the messages.
//
// # Not supported
//
// Transfer codings other than chunked (refused); h2c upgrades (sent as plain
// requests); decoding a chunked response for an HTTP/1.0 client (an
// upstream must not send one to an HTTP/1.0 request); a write timeout
// towards a client that stops reading (ctx ends it); request body size
// limits (413).
package h1
