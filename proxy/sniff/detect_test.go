package sniff

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// opts are the options of tests that do not time out on purpose: a
// deadline generous enough for a loaded machine.
var opts = Options{Timeout: 5 * time.Second}

// TestDetectReplaysOverTCP sends every sample, followed by a tail the
// sniffer never sees, over real loopback TCP in one write and in
// dribbles, and reads it back through the Conn byte for byte.
func TestDetectReplaysOverTCP(t *testing.T) {
	tail := make([]byte, 256<<10)
	for i := range tail {
		tail[i] = byte(i * 7)
	}
	for _, s := range samples(t) {
		for _, chunk := range []int{0, 1, 7, 300} {
			if chunk == 1 && len(s.in) > 64 || chunk == 7 && len(s.in) > 600 {
				continue // a pause per piece: keep the test short
			}
			t.Run(s.name+"/chunk="+chunkName(chunk), func(t *testing.T) {
				server, client := tcpPair(t)
				sent := append(bytes.Clone(s.in), tail...)
				go writeChunks(client, s.in, chunk, tail)
				res, conn, err := Detect(server, opts)
				if err != nil {
					t.Fatal(err)
				}
				if !sameResult(res, s.want) {
					t.Fatalf("got %+v, want %+v", res, s.want)
				}
				if conn.TCP() != server {
					t.Fatal("TCP() is not the accepted connection")
				}
				got, err := io.ReadAll(conn)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, sent) {
					t.Fatalf("replayed %d bytes, sent %d (first difference at %d)", len(got), len(sent), firstDiff(got, sent))
				}
			})
		}
	}
}

// writeChunks writes in then tail, in pieces of chunk bytes (all at once if
// 0) with a pause between pieces so they arrive as separate reads, then
// half-closes.
func writeChunks(c *net.TCPConn, in []byte, chunk int, tail []byte) {
	for len(in) > 0 {
		n := len(in)
		if chunk > 0 {
			n = min(chunk, n)
		}
		if _, err := c.Write(in[:n]); err != nil {
			return
		}
		in = in[n:]
		if chunk > 0 {
			time.Sleep(time.Millisecond)
		}
	}
	c.Write(tail)
	c.CloseWrite()
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func chunkName(n int) string {
	if n == 0 {
		return "all"
	}
	return strconv.Itoa(n)
}

// TestDetectSilentClient: a client that waits for the server to speak
// first ends in Timeout after about the deadline, and the connection is
// then an ordinary one: the server's greeting goes out, and a read blocks
// with no deadline left until the client answers long after.
func TestDetectSilentClient(t *testing.T) {
	server, client := tcpPair(t)
	const timeout = 100 * time.Millisecond
	res, conn, err := Detect(server, Options{Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	if res.Protocol != Timeout || len(conn.Buffered()) != 0 {
		t.Fatalf("got %+v with %d bytes buffered, want Timeout with none", res, len(conn.Buffered()))
	}
	if res.Elapsed < timeout || res.Elapsed > timeout+400*time.Millisecond {
		t.Fatalf("Timeout after %v, want about %v", res.Elapsed, timeout)
	}

	// Server-first: the upstream's greeting reaches the client.
	if _, err := conn.Write([]byte("220 smtp.example.test ESMTP\r\n")); err != nil {
		t.Fatal(err)
	}
	greeting := make([]byte, 64)
	if n, err := client.Read(greeting); err != nil || !bytes.HasPrefix(greeting[:n], []byte("220 ")) {
		t.Fatalf("client read %q, %v", greeting[:n], err)
	}

	// The deadline is gone: a read outlives it by far and gets the answer.
	got := make(chan []byte)
	go func() {
		b := make([]byte, 64)
		n, err := conn.Read(b)
		if err != nil {
			t.Error(err)
		}
		got <- b[:n]
	}()
	select {
	case b := <-got:
		t.Fatalf("read returned %q before the client wrote", b)
	case <-time.After(3 * timeout):
	}
	client.Write([]byte("EHLO client.test\r\n"))
	if b := <-got; string(b) != "EHLO client.test\r\n" {
		t.Fatalf("read %q", b)
	}
}

// TestDetectPartialThenSilent: a request line cut short ends in Timeout
// with what arrived buffered; the rest, sent later, follows it.
func TestDetectPartialThenSilent(t *testing.T) {
	server, client := tcpPair(t)
	client.Write([]byte("GET /slow HT"))
	res, conn, err := Detect(server, Options{Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if res.Protocol != Timeout || string(conn.Buffered()) != "GET /slow HT" {
		t.Fatalf("got %v with %q buffered", res.Protocol, conn.Buffered())
	}
	client.Write([]byte("TP/1.1\r\n\r\n"))
	client.CloseWrite()
	if b, err := io.ReadAll(conn); err != nil || string(b) != "GET /slow HTTP/1.1\r\n\r\n" {
		t.Fatalf("read %q, %v", b, err)
	}
}

// TestDetectEOF: a client that half-closes before anything matched is
// Unknown at once, not a Timeout, and the Conn gives its bytes then EOF.
func TestDetectEOF(t *testing.T) {
	for _, in := range []string{"", "GET", "\x16\x03\x01"} {
		server, client := tcpPair(t)
		client.Write([]byte(in))
		client.CloseWrite()
		res, conn, err := Detect(server, opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Protocol != Unknown || res.Elapsed > time.Second {
			t.Fatalf("%q: got %v after %v, want Unknown at once", in, res.Protocol, res.Elapsed)
		}
		if b, err := io.ReadAll(conn); err != nil || string(b) != in {
			t.Fatalf("%q: read %q, %v", in, b, err)
		}
	}
}

// TestDetectCap: undecided at MaxBytes is Unknown, and nothing is lost.
func TestDetectCap(t *testing.T) {
	in := []byte("GET /" + string(bytes.Repeat([]byte("a"), 200)) + " HTTP/1.1\r\n\r\n")
	c := &chunkConn{data: bytes.Clone(in), chunks: []int{10}, end: io.EOF}
	res, conn, err := Detect(c, Options{Timeout: time.Second, MaxBytes: 64})
	if err != nil || res.Protocol != Unknown || len(conn.Buffered()) != 64 {
		t.Fatalf("got %v with %d buffered, %v; want Unknown with 64", res.Protocol, len(conn.Buffered()), err)
	}
	if b, _ := io.ReadAll(conn); !bytes.Equal(b, in) {
		t.Fatalf("replayed %q", b)
	}
	// Above the pooled size the buffer is allocated, with the same result.
	big := append(defaultSpec().bytes(), make([]byte, 40<<10)...)
	c = &chunkConn{data: bytes.Clone(big), chunks: []int{4096}, end: io.EOF}
	res, conn, err = Detect(c, Options{Timeout: time.Second, MaxBytes: 64 << 10})
	if err != nil || res.Protocol != TLS {
		t.Fatalf("got %v, %v", res.Protocol, err)
	}
	if b, _ := io.ReadAll(conn); !bytes.Equal(b, big) {
		t.Fatal("replay differs")
	}
}

// TestDetectSkipped: no timeout means no read at all.
func TestDetectSkipped(t *testing.T) {
	c := &chunkConn{data: []byte("GET / HTTP/1.1\r\n"), end: io.EOF}
	res, conn, err := Detect(c, Options{})
	if err != nil || res.Protocol != Skipped || c.reads != 0 || conn.Buffered() != nil {
		t.Fatalf("got %v, %d reads, %v", res.Protocol, c.reads, err)
	}
	if b, _ := io.ReadAll(conn); string(b) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("read %q", b)
	}
}

// TestDetectReadError: a failing read is an error, not an outcome, and the
// bytes before it still replay.
func TestDetectReadError(t *testing.T) {
	c := &chunkConn{data: []byte("GET /"), end: errReset}
	res, conn, err := Detect(c, opts)
	if !errors.Is(err, errReset) || res.Protocol != Unknown {
		t.Fatalf("got %v, %v", res.Protocol, err)
	}
	if string(conn.Buffered()) != "GET /" {
		t.Fatalf("buffered %q", conn.Buffered())
	}

	// A real reset, over TCP.
	server, client := tcpPair(t)
	client.SetLinger(0)
	client.Close()
	if _, _, err := Detect(server, opts); err == nil {
		t.Fatal("no error after a reset")
	}
}

// TestDetectDeadlineErrorFromConn: a conn that reports its deadline passed
// gives Timeout, whatever kind of net.Conn it is.
func TestDetectDeadlineErrorFromConn(t *testing.T) {
	c := &chunkConn{data: []byte("\x16\x03"), end: os.ErrDeadlineExceeded}
	res, conn, err := Detect(c, opts)
	if err != nil || res.Protocol != Timeout || string(conn.Buffered()) != "\x16\x03" {
		t.Fatalf("got %v, %q, %v", res.Protocol, conn.Buffered(), err)
	}
}

// TestDetectChunkingDoesNotMatter: however the bytes are split into reads,
// the result is the same as from a single read.
func TestDetectChunkingDoesNotMatter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, s := range samples(t) {
		for range 20 {
			chunks := make([]int, 1+rng.IntN(5))
			for i := range chunks {
				chunks[i] = 1 + rng.IntN(len(s.in))
			}
			c := &chunkConn{data: bytes.Clone(s.in), chunks: chunks, end: io.EOF}
			res, conn, err := Detect(c, opts)
			if err != nil || !sameResult(res, s.want) {
				t.Fatalf("%s chunks %v: got %+v, %v", s.name, chunks, res, err)
			}
			if b, _ := io.ReadAll(conn); !bytes.Equal(b, s.in) {
				t.Fatalf("%s: replay differs", s.name)
			}
		}
	}
}

// TestDetectScanCap: a client dribbling a big first flight a byte per read
// ends Unknown once the matchers have scanned maxScanned bytes, long before
// the byte cap, and its bytes still replay.
func TestDetectScanCap(t *testing.T) {
	in := append([]byte("GET /"), bytes.Repeat([]byte("a"), 20000)...)
	c := &chunkConn{data: bytes.Clone(in), chunks: []int{1}, end: io.EOF}
	res, conn, err := Detect(c, opts)
	if err != nil || res.Protocol != Unknown || c.reads > 1500 {
		t.Fatalf("got %v after %d reads, %v", res.Protocol, c.reads, err)
	}
	if b, _ := io.ReadAll(conn); !bytes.Equal(b, in) {
		t.Fatal("replay differs")
	}
	// Small first flights decide however they are cut.
	c = &chunkConn{data: []byte(benchRequest), chunks: []int{1}, end: io.EOF}
	if res, _, _ := Detect(c, opts); res.Protocol != HTTP1 {
		t.Fatalf("request a byte at a time: %v", res.Protocol)
	}
	h := helloH2(t)
	c = &chunkConn{data: bytes.Clone(h), chunks: []int{16}, end: io.EOF}
	if res, _, _ := Detect(c, opts); res.Protocol != TLS {
		t.Fatalf("hello in 16-byte reads: %v", res.Protocol)
	}
}
