// Package dubbo is the Dubbo 2 protocol (the "dubbo://" protocol of Apache
// Dubbo and dubbo-go) for weir's RPC framework (proxy/rpc).
//
// Every message is a 16-byte header and a body:
//
//	0-1   magic 0xda 0xbb
//	2     flags: 0x80 request, 0x40 two-way (a response is expected),
//	      0x20 event (heartbeat, or the readonly goaway), low 5 bits the
//	      serialization id (2: hessian2)
//	3     status of a response (20 OK, 30/31 timeouts, 40 bad request,
//	      50 bad response, 60 service not found, 70 service error,
//	      80 server error, 90 client error, 100 thread pool exhausted)
//	4-11  request id, big endian: the framework rewrites it per upstream
//	      connection
//	12-15 body length, big endian
//
// Framing reads only the header: the body goes through as bytes. A
// request's routing attributes are decoded from a hessian2 body on first
// use, and only as far as asked: the dubbo version, service path, service
// version and method name are the body's first four strings; the
// attachments (group, interface, and any other key) come after the
// arguments, which are skipped value by value (their count comes from the
// parameter type descriptor) without being built. Bodies in another
// serialization frame and forward, but expose no attributes.
//
// Heartbeats (event requests) are answered by the agent; on drain the
// agent sends the readonly event ("R"), after which Dubbo clients send no
// new request on the connection. Errors the agent makes (no endpoint,
// upstream lost, response timeout) go back as a response with status 80
// (server error) or 31 (server timeout) and the reason as a hessian2
// string, which clients surface as the call's error.
package dubbo
