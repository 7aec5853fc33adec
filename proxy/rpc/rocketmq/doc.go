// Package rocketmq is Apache RocketMQ's remoting protocol (the one its
// clients, name servers and brokers speak) for weir's RPC framework
// (proxy/rpc).
//
//	length(4) | serialize type(1) header length(3) | header | body
//
// length counts everything after itself. The header is JSON (serialize
// type 0: {"code":…,"flag":…,"opaque":…,"remark":…,"extFields":{…},…}) or
// ROCKETMQ binary (type 1: code(2) language(1) version(2) opaque(4)
// flag(4) remarkLen(4) remark extLen(4) ext, ext being keyLen(2) key
// valueLen(4) value pairs). flag bit 0 marks a response, bit 1 a one-way
// request. opaque is the request id, echoed by the response. The body
// (messages, route data) is passed through as bytes, except route replies
// (RewriteRoute).
//
// Attributes (Frame.Attr), read from the header when asked (no copy):
// "service" and "topic" (the topic field; "b" in SEND_MESSAGE_V2 and
// batch headers), "group" (consumerGroup, producerGroup, or "a"), "method"
// (the request code's name: SEND_MESSAGE, PULL_MESSAGE, POP_MESSAGE,
// ACK_MESSAGE, …; an unknown code as its number), "code" (the number),
// "brokerName" (the broker a request names: the "bname" field RocketMQ 5
// headers carry, else "brokerName", else "n" of a V2 send, else the
// broker field of an ACK or CHANGE_MESSAGE_INVISIBLETIME's extraInfo, which
// the broker that served the pop wrote, else the first "brokerName" in the
// JSON body of LOCK_BATCH_MQ, UNLOCK_BATCH_MQ and BATCH_ACK_MESSAGE), and
// any other header field by name.
//
// The framework rewrites opaque per upstream connection. A JSON header's
// opaque is decimal text: a shorter id is padded with spaces (JSON
// whitespace), a longer one rebuilds the frame. RocketMQ's HEART_BEAT is
// not a liveness probe but the client's registration with a broker (its
// groups and subscriptions), so it is forwarded like any request; the
// protocol has no goaway. Errors the agent makes go back as a response
// with code 1 (SYSTEM_ERROR) and the error as remark.
package rocketmq
