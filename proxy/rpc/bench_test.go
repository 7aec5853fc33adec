package rpc_test

import (
	"bufio"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// echoToy answers every toy request at once, in order, with its own
// payload: the cheapest server, so the benchmark times the proxy.
var timeoutPolicy = &rpc.Policy{Timeout: time.Minute, On: rpc.RetryConnect}

func echoToy(b *testing.B) *toyServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r, w := bufio.NewReader(c), bufio.NewWriter(c)
				var h [9]byte
				for {
					if _, err := io.ReadFull(r, h[:]); err != nil {
						return
					}
					p := make([]byte, binary.BigEndian.Uint32(h[:])-5)
					if _, err := io.ReadFull(r, p); err != nil {
						return
					}
					h[4] = kResp
					w.Write(h[:])
					w.Write(p)
					if r.Buffered() == 0 {
						w.Flush()
					}
				}
			}()
		}
	}()
	return &toyServer{name: "echo", addr: l.Addr().(*net.TCPAddr).AddrPort()}
}

// echoClient is a client connection through Serve (with pol and m) to
// echoToy, a reader on it and a toy request to send.
func echoClient(b *testing.B, pol *rpc.Policy, m *rpc.Metrics) (net.Conn, *bufio.Reader, []byte) {
	addr, _, _ := toyProxyWith(b, pol, m, echoToy(b))
	c, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c), toyBytes(kReq, 0, "0123456789abcdef0123456789abcdef")
}

// BenchmarkServeMultiplexed: calls pipelined through Serve over one client
// connection (at most the session's 1024 in flight) to one server: the
// framework's cost per call (allocations, hand-offs), with and without a
// request timeout.
func BenchmarkServeMultiplexed(b *testing.B) {
	for _, tc := range []struct {
		name    string
		pol     *rpc.Policy
		metrics bool
	}{{"default", nil, false}, {"timeout", timeoutPolicy, false}, {"metrics", nil, true}} {
		b.Run(tc.name, func(b *testing.B) {
			var m *rpc.Metrics
			if tc.metrics {
				m, _ = newMetrics()
			}
			c, r, req := echoClient(b, tc.pol, m)
			done := make(chan error, 1)
			go func() {
				for range b.N {
					if err := skipAnswer(r); err != nil {
						done <- err
						return
					}
				}
				done <- nil
			}()
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				binary.BigEndian.PutUint32(req[5:], uint32(i+1))
				if _, err := c.Write(req); err != nil {
					b.Fatal(err)
				}
			}
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkServeOneAtATime: one call in flight, as a client waiting for
// each answer makes them, so every answer is a write of its own: the
// framework's cost per call when nothing batches.
func BenchmarkServeOneAtATime(b *testing.B) {
	c, r, req := echoClient(b, nil, nil)
	b.ReportAllocs()
	b.ResetTimer()
	for i := range b.N {
		binary.BigEndian.PutUint32(req[5:], uint32(i+1))
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if err := skipAnswer(r); err != nil {
			b.Fatal(err)
		}
	}
}

// skipAnswer reads one answer of the toy codec (a 9-byte head whose first
// four bytes count what follows its fifth) and drops its body.
func skipAnswer(r *bufio.Reader) error {
	var h [9]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return err
	}
	_, err := r.Discard(int(binary.BigEndian.Uint32(h[:])) - 5)
	return err
}
