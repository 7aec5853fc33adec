// Package bolt is SOFABolt, the RPC transport of SOFARPC (Ant Group), for
// weir's RPC framework (proxy/rpc): protocol versions 1 and 2.
//
//	v1 request  (22 bytes): proto=1 type cmdcode(2) ver2 id(4) codec timeout(4)
//	                        classLen(2) headerLen(2) contentLen(4)
//	v1 response (20 bytes): proto=1 type cmdcode(2) ver2 id(4) codec status(2)
//	                        classLen(2) headerLen(2) contentLen(4)
//	v2 adds ver1 after proto and a switch byte after codec (24 and 22
//	bytes); with ver1 >= 2 and the switch's CRC bit, a CRC32 of the whole
//	frame follows the content.
//
// type is 0 response, 1 request, 2 one-way request; cmdcode 0 heartbeat, 1
// request, 2 response. Then come the class name, the header and the
// content. The content (hessian2 or protobuf) is passed through as bytes;
// the header is SOFA's simple map (int32 length and bytes, for each key and
// value) and is decoded on the first Attr: "service" (the service header,
// e.g. "com.example.HelloService:1.0", else sofa_head_target_service),
// "method" (sofa_head_method_name, sent with protobuf; a hessian2 request
// carries its method in the content only), "class" (the class name), and
// any other header by name.
//
// The framework rewrites the 32-bit request id per upstream connection
// (recomputing the CRC32 when there is one). Heartbeats are answered by the
// agent. Bolt has no goaway: on drain the agent answers what it has read
// and closes. Errors the agent makes go back as a response with status 2
// (server exception), or 7 (timeout), and no content.
package bolt
