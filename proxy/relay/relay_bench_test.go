package relay

import (
	"context"
	"io"
	"net"
	"testing"
)

// pair is a client connection whose bytes go through Relay (client → front
// listener → Relay → back server) or, for the baseline, straight to the back
// server. Loopback only.
type pair struct {
	client *net.TCPConn
	// server is the back end's side of the connection.
	server *net.TCPConn
	done   chan Result
}

func listen(b *testing.B) *net.TCPListener {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func dial(b *testing.B, ln *net.TCPListener) (*net.TCPConn, *net.TCPConn) {
	b.Helper()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		b.Fatal(err)
	}
	s, err := ln.AcceptTCP()
	if err != nil {
		b.Fatal(err)
	}
	return c, s
}

// newPair connects a client to a back-end server, through Relay when relayed.
func newPair(b *testing.B, front, back *net.TCPListener, relayed bool) *pair {
	b.Helper()
	if !relayed {
		c, s := dial(b, back)
		return &pair{client: c, server: s}
	}
	c, in := dial(b, front)
	up, s := dial(b, back)
	p := &pair{client: c, server: s, done: make(chan Result, 1)}
	go func() {
		res := Relay(context.Background(), in, up)
		in.Close()
		up.Close()
		p.done <- res
	}()
	return p
}

func (p *pair) close() {
	p.client.Close()
	p.server.Close()
	if p.done != nil {
		<-p.done
	}
}

var modes = []struct {
	name    string
	relayed bool
}{{"direct", false}, {"relay", true}}

// BenchmarkBulk is one-way throughput through the splice path: the client
// writes 64 KiB chunks, the back end discards them. Compare relay with
// direct for what the extra hop costs.
func BenchmarkBulk(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			front, back := listen(b), listen(b)
			p := newPair(b, front, back, m.relayed)
			defer p.close()
			drained := make(chan int64, 1)
			go func() {
				n, _ := io.Copy(io.Discard, p.server)
				drained <- n
			}()
			chunk := make([]byte, 64<<10)
			b.SetBytes(int64(len(chunk)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.client.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			p.client.CloseWrite()
			if n := <-drained; n != int64(b.N)*int64(len(chunk)) {
				b.Fatalf("back end got %d bytes, want %d", n, int64(b.N)*int64(len(chunk)))
			}
		})
	}
}

// BenchmarkPingPong is small-message latency: one op is a 128-byte message
// to an echoing back end and back.
func BenchmarkPingPong(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			front, back := listen(b), listen(b)
			p := newPair(b, front, back, m.relayed)
			defer p.close()
			go func() {
				buf := make([]byte, 4096)
				for {
					n, err := p.server.Read(buf)
					if err != nil {
						return
					}
					if _, err := p.server.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
			msg, back2 := make([]byte, 128), make([]byte, 128)
			b.SetBytes(int64(len(msg)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.client.Write(msg); err != nil {
					b.Fatal(err)
				}
				if _, err := io.ReadFull(p.client, back2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkConnection is a relayed connection's whole life: connect, one
// small request and answer, close both ways. It shows Relay's per-connection
// cost (goroutine, half-closes) on top of the loopback connects.
func BenchmarkConnection(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			front, back := listen(b), listen(b)
			msg, got := make([]byte, 128), make([]byte, 128)
			b.ReportAllocs()
			for b.Loop() {
				p := newPair(b, front, back, m.relayed)
				if _, err := p.client.Write(msg); err != nil {
					b.Fatal(err)
				}
				p.client.CloseWrite()
				if _, err := io.ReadFull(p.server, got); err != nil {
					b.Fatal(err)
				}
				if _, err := p.server.Write(msg); err != nil {
					b.Fatal(err)
				}
				p.server.CloseWrite()
				if _, err := io.ReadFull(p.client, got); err != nil {
					b.Fatal(err)
				}
				p.close()
			}
		})
	}
}
