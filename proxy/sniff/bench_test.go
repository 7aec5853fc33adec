package sniff

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const benchRequest = "GET /api/v1/items?limit=10 HTTP/1.1\r\nHost: items.default.svc\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"

// replayConn serves the same bytes to every Detect, in one read, without
// syscalls: it measures Detect itself.
type replayConn struct {
	chunkConn
	in []byte
}

func (c *replayConn) reset() { c.data = c.in }

// benchDetect runs Detect over in, held in memory.
func benchDetect(b *testing.B, in []byte, want Protocol) {
	c := &replayConn{in: in, chunkConn: chunkConn{end: io.EOF}}
	o := Options{Timeout: time.Second, Metrics: nil}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		c.reset()
		res, _, err := Detect(c, o)
		if err != nil || res.Protocol != want {
			b.Fatal(res.Protocol, err)
		}
	}
}

func BenchmarkDetectHTTP1(b *testing.B) { benchDetect(b, []byte(benchRequest), HTTP1) }
func BenchmarkDetectHTTP2(b *testing.B) { benchDetect(b, []byte(http2Preface), HTTP2) }
func BenchmarkDetectTLS(b *testing.B)   { benchDetect(b, helloH2(b), TLS) }
func BenchmarkDetectTLSCurl(b *testing.B) {
	benchDetect(b, testdataHello(b, "curl-clienthello.bin"), TLS)
}
func BenchmarkDetectUnknown(b *testing.B) {
	benchDetect(b, []byte("\xda\xbb\xc2\x00\x00\x00\x00\x01\x00\x00\x00\x10"), Unknown)
}

// BenchmarkDetectLoopback is the cost on a real socket: set the deadline,
// read, clear the deadline (plus the client's write, which the benchmark
// cannot separate).
func BenchmarkDetectLoopback(b *testing.B) {
	for _, bc := range []struct {
		name string
		in   []byte
		want Protocol
	}{
		{"http1", []byte(benchRequest), HTTP1},
		{"tls", helloH2(b), TLS},
	} {
		b.Run(bc.name, func(b *testing.B) {
			server, client := tcpPair(b)
			o := Options{Timeout: time.Second}
			b.SetBytes(int64(len(bc.in)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := client.Write(bc.in); err != nil {
					b.Fatal(err)
				}
				res, conn, err := Detect(server, o)
				if err != nil || res.Protocol != bc.want || len(conn.Buffered()) != len(bc.in) {
					b.Fatal(res.Protocol, len(conn.Buffered()), err)
				}
			}
		})
	}
}

// TestDetectAllocations pins what a Detect allocates: the Conn and the
// copy of the bytes read (both outlive the call and belong to the caller),
// and for TLS the SNI string and the ALPN slice (common names are
// constants). The sniff buffer is pooled.
func TestDetectAllocations(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []byte
		want float64
	}{
		{"http1", []byte(benchRequest), 2},
		{"http2", []byte(http2Preface), 2},
		{"tls", helloH2(t), 4},
		{"unknown", []byte("\x00\x01"), 2},
	} {
		c := &replayConn{in: tc.in, chunkConn: chunkConn{end: io.EOF}}
		o := Options{Timeout: time.Second, Metrics: NewMetrics(nopRegisterer{})}
		got := testing.AllocsPerRun(200, func() {
			c.reset()
			Detect(c, o)
		})
		if got != tc.want {
			t.Errorf("%s: %v allocations per Detect, want %v", tc.name, got, tc.want)
		}
	}
}

// nopRegisterer accepts every collector, for tests that want live
// Metrics without a registry.
type nopRegisterer struct{}

func (nopRegisterer) Register(prometheus.Collector) error  { return nil }
func (nopRegisterer) MustRegister(...prometheus.Collector) {}
func (nopRegisterer) Unregister(prometheus.Collector) bool { return true }

// TestDetectLoopbackReplays is the loopback benchmark's loop as a test:
// Detect after Detect on one connection, each replaying its own bytes.
func TestDetectLoopbackReplays(t *testing.T) {
	server, client := tcpPair(t)
	for i := range 50 {
		msg := []byte(benchRequest)
		msg[5] = byte('a' + i%26)
		client.Write(msg)
		_, conn, err := Detect(server, opts)
		if err != nil || !bytes.Equal(conn.Buffered(), msg) {
			t.Fatalf("round %d: %q, %v", i, conn.Buffered(), err)
		}
	}
}
