// Package sniff decides which protocol a freshly accepted client
// connection speaks, from its first bytes, without losing any of them.
//
// Detect reads from the connection under a short deadline and, after every
// read, asks the matchers in a fixed order:
//
//  1. TLS: a ClientHello, parsed far enough to return SNI and ALPN;
//  2. HTTP2: the prior-knowledge preface "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
//  3. HTTP1: a request line "METHOD SP target SP HTTP/1.x CRLF";
//  4. Redis: a RESP command "*<count> CRLF $<digit>" ("*" is a token byte,
//     so after HTTP1);
//  5. Dubbo: a Dubbo 2 request header, magic 0xda 0xbb and a request flag.
//
// A matcher is a plain function of the bytes so far with three answers:
// match, no match, or need more. A matcher is asked only after every one
// before it said no match, so the order settles overlaps; the first match
// wins; when all say no match the result is Unknown at once, so an opaque
// binary protocol is known after its first read, not at the deadline.
// Matchers check every magic byte and length as it arrives.
//
// The outcomes are a Protocol: TLS, HTTP2, HTTP1, Redis or Dubbo when one matched;
// Unknown when bytes arrived and nothing matched (also at a cap, or when
// the client closed its side first); Timeout when the client sent nothing,
// or not enough to decide, before the deadline; Skipped when the caller set
// no timeout. Only failing reads are errors.
//
// The trade-off: a client-first protocol is known as soon as the client's
// first bytes arrive, but a server-first protocol (SMTP, MySQL, FTP, …) has
// nothing to sniff and costs every connection the whole deadline, ending
// in Timeout, unless its port is declared and sniffing skipped. Package
// sniff has no policy: the listener wiring decides what Timeout and Unknown
// lead to (by default opaque TCP), and whether a port is sniffed at all.
//
// The returned Conn replays the bytes read, then reads the socket. An L4
// relay writes Conn.Buffered upstream and splices Conn.TCP; an L7 codec
// simply reads the Conn.
//
// Cost (BenchmarkDetect*, a busy 2-core VM): in memory, about 0.5 µs and
// two allocations (the Conn and the copy of the bytes read) for an HTTP/1
// request, about 3 µs and four (plus the SNI string and the ALPN slice) for
// a 1.5 KB ClientHello; on a loopback socket the two deadline syscalls and
// the read bring these to about 6 µs and 10 µs. The 16 KiB read buffer is
// pooled. Matchers rescan from the first byte after every read; a cap on
// the bytes scanned (1 MiB) keeps a client that dribbles a big first flight
// a byte at a time from making that quadratic.
//
// Adding a protocol (Dubbo, SOFABolt and RocketMQ are planned): a
// Protocol constant and its name in protocol.go, a file holding its matcher,
// and one line in the matchers table in matcher.go, placed by the order
// rule above.
package sniff
