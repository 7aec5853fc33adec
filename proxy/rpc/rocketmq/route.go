package rocketmq

import (
	"bytes"
	"encoding/binary"
	"strconv"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// RouteRewriter returns the framework's answer hook (rpc.Upstream.Answer)
// for a client that reached the service at addr: a successful answer to
// GET_ROUTEINFO_BY_TOPIC comes back with every broker address in its
// brokerDatas replaced by addr, so the client keeps sending to the service
// address (through the agent) and never to a broker's own address; the
// agent then routes each request by the broker its header names. Every
// other answer goes back as read.
func RouteRewriter(addr string) func(req, resp rpc.Frame) []byte {
	quoted := strconv.AppendQuote(nil, addr)
	return func(req, resp rpc.Frame) []byte {
		rq, ok1 := req.(*Frame)
		rs, ok2 := resp.(*Frame)
		if !ok1 || !ok2 || rq.code != CodeGetRouteInfoByTopic || rs.code != CodeSuccess {
			return resp.Bytes()
		}
		body, ok := rewriteBrokerAddrs(rs.Body(), quoted)
		if !ok {
			return resp.Bytes()
		}
		return rebuild(rs, body)
	}
}

// rebuild is f with another body.
func rebuild(f *Frame, body []byte) []byte {
	hdr := f.raw[8:f.bodyAt]
	b := make([]byte, 8, f.bodyAt+len(body))
	binary.BigEndian.PutUint32(b, uint32(4+len(hdr)+len(body)))
	copy(b[4:8], f.raw[4:8])
	b = append(b, hdr...)
	return append(b, body...)
}

var brokerAddrsKey = []byte(`"brokerAddrs"`)

// rewriteBrokerAddrs replaces the string values of every "brokerAddrs"
// object in a route data body with quoted. The object's keys (broker ids)
// may be bare numbers, as RocketMQ's Java name server writes them. ok
// false: nothing to rewrite or a malformed object (the body then goes back
// unchanged).
func rewriteBrokerAddrs(body, quoted []byte) (out []byte, ok bool) {
	rest := body
	for {
		i := bytes.Index(rest, brokerAddrsKey)
		if i < 0 {
			break
		}
		out = append(out, rest[:i+len(brokerAddrsKey)]...)
		s := scanner{b: rest, i: i + len(brokerAddrsKey)}
		if !s.consume(':') {
			return nil, false
		}
		s.ws()
		if s.literal("null") {
			out = append(out, rest[i+len(brokerAddrsKey):s.i]...)
			rest = rest[s.i:]
			continue
		}
		if !s.consume('{') {
			return nil, false
		}
		out = append(out, rest[i+len(brokerAddrsKey):s.i]...)
		if !s.consume('}') {
			for {
				// key: a string or a bare number, up to ':'
				s.ws()
				start := s.i
				if _, isStr := s.str(); !isStr {
					s.i = start
					if _, _, _, isNum := s.integer(); !isNum {
						return nil, false
					}
				}
				if !s.consume(':') {
					return nil, false
				}
				s.ws()
				out = append(out, rest[start:s.i]...)
				if _, isStr := s.str(); !isStr {
					return nil, false
				}
				out = append(out, quoted...)
				if s.consume('}') {
					break
				}
				if !s.consume(',') {
					return nil, false
				}
				out = append(out, ',')
			}
		}
		out = append(out, '}')
		rest = rest[s.i:]
		ok = true
	}
	if !ok {
		return nil, false
	}
	return append(out, rest...), true
}
