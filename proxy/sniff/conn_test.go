package sniff

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
)

// relayed sends in plus a tail through Detect and hands the Conn to relay,
// which must deliver the client's stream to an upstream TCP connection;
// it returns what the upstream received.
func relayed(t *testing.T, in []byte, relay func(conn *Conn, up *net.TCPConn)) (got, sent []byte) {
	server, client := tcpPair(t)
	upOut, upIn := tcpPair(t) // the relay writes upOut; the upstream reads upIn
	tail := bytes.Repeat([]byte("0123456789abcdef"), 64<<10)
	go writeChunks(client, in, 0, tail)
	_, conn, err := Detect(server, opts)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan []byte)
	go func() {
		b, _ := io.ReadAll(upIn)
		done <- b
	}()
	relay(conn, upOut)
	upOut.CloseWrite()
	return <-done, append(bytes.Clone(in), tail...)
}

// TestConnL4Relay: the two ways an L4 relay drains a Conn deliver the
// client's bytes exactly: Buffered() then the raw socket, or io.Copy
// (Conn.WriteTo, splicing after the prefix).
func TestConnL4Relay(t *testing.T) {
	in := helloH2(t)
	for name, relay := range map[string]func(*Conn, *net.TCPConn){
		"buffered-then-tcp": func(conn *Conn, up *net.TCPConn) {
			if _, err := up.Write(conn.Buffered()); err != nil {
				t.Error(err)
			}
			if _, err := io.Copy(up, conn.TCP()); err != nil {
				t.Error(err)
			}
		},
		"io.Copy": func(conn *Conn, up *net.TCPConn) {
			if _, err := io.Copy(up, conn); err != nil {
				t.Error(err)
			}
		},
		"read-some-then-io.Copy": func(conn *Conn, up *net.TCPConn) {
			b := make([]byte, 10)
			n, _ := conn.Read(b)
			up.Write(b[:n])
			if _, err := io.Copy(up, conn); err != nil {
				t.Error(err)
			}
		},
	} {
		t.Run(name, func(t *testing.T) {
			got, sent := relayed(t, in, relay)
			if !bytes.Equal(got, sent) {
				t.Fatalf("upstream got %d bytes, client sent %d (first difference at %d)", len(got), len(sent), firstDiff(got, sent))
			}
		})
	}
}

// TestConnWriteToNonTCP: WriteTo over another kind of net.Conn copies the
// buffer and the rest.
func TestConnWriteToNonTCP(t *testing.T) {
	c := &chunkConn{data: []byte("*1\r\n$4\r\nPING\r\n"), chunks: []int{2}, end: io.EOF}
	res, conn, err := Detect(c, opts)
	if err != nil || res.Protocol != Redis {
		t.Fatal(res.Protocol, err)
	}
	var out bytes.Buffer
	n, err := conn.WriteTo(&out)
	if err != nil || n != 14 || out.String() != "*1\r\n$4\r\nPING\r\n" {
		t.Fatalf("WriteTo: %d %q %v", n, out.String(), err)
	}
	if conn.TCP() != nil || conn.NetConn() != c {
		t.Fatal("TCP() or NetConn() wrong for a non-TCP conn")
	}
	if !errors.Is(conn.CloseWrite(), errors.ErrUnsupported) || !errors.Is(conn.CloseRead(), errors.ErrUnsupported) {
		t.Fatal("half-close of a conn that cannot should be ErrUnsupported")
	}
}

// TestConnHalfClose: CloseWrite reaches the TCP connection (the client
// sees EOF), and CloseRead leaves buffered bytes readable.
func TestConnHalfClose(t *testing.T) {
	server, client := tcpPair(t)
	client.Write([]byte("GET / HTTP/1.1\r\n"))
	_, conn, err := Detect(server, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := client.Read(make([]byte, 1)); n != 0 || err != io.EOF {
		t.Fatalf("client read %d, %v; want EOF", n, err)
	}
	if err := conn.CloseRead(); err != nil {
		t.Fatal(err)
	}
	if b, err := io.ReadAll(conn); err != nil || string(b) != "GET / HTTP/1.1\r\n" {
		t.Fatalf("read %q, %v", b, err)
	}
}

// TestConnDelegates: addresses and deadlines are the socket's.
func TestConnDelegates(t *testing.T) {
	server, _ := tcpPair(t)
	conn := newConn(server)
	if conn.LocalAddr() != server.LocalAddr() || conn.RemoteAddr() != server.RemoteAddr() {
		t.Fatal("addresses differ")
	}
	for _, err := range []error{conn.SetDeadline(zeroTime), conn.SetReadDeadline(zeroTime), conn.SetWriteDeadline(zeroTime)} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := server.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after Close: %v", err)
	}
}
