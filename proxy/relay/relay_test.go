package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// loopPair returns the two ends of a loopback TCP connection.
func loopPair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() { c, _ := ln.Accept(); accepted <- c }()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	t.Cleanup(func() { c.Close(); s.Close() })
	return c.(*net.TCPConn), s.(*net.TCPConn)
}

// A conversation of small messages, then a bulk upload (which switches that
// direction to splice, or under NoSplice to the bulk buffer), then a
// half-close: every byte arrives, in order, and the counts match.
func TestRelaySmallThenBulkThenHalfClose(t *testing.T) {
	t.Run("splice", func(t *testing.T) { testSmallThenBulk(t, nil) })
	h := &Handle{}
	h.NoSplice()
	t.Run("nosplice", func(t *testing.T) { testSmallThenBulk(t, h) })
}

func testSmallThenBulk(t *testing.T, h *Handle) {
	client, relayDown := loopPair(t)
	relayUp, server := loopPair(t)
	done := make(chan Result, 1)
	go func() { done <- RelayWith(context.Background(), relayDown, relayUp, h) }()

	deadline := time.Now().Add(30 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)
	buf := make([]byte, 64)
	for i := 0; i < 100; i++ {
		msg := []byte{byte(i), 'p', 'i', 'n', 'g'}
		if _, err := client.Write(msg); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf[:len(msg)]); err != nil || !bytes.Equal(buf[:len(msg)], msg) {
			t.Fatalf("message %d upstream: %q %v", i, buf[:len(msg)], err)
		}
		if _, err := server.Write(msg[:1]); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf[:1]); err != nil || buf[0] != byte(i) {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
	bulk := make([]byte, 8<<20)
	rand.Read(bulk)
	go func() {
		client.Write(bulk)
		client.CloseWrite()
	}()
	got, err := io.ReadAll(server) // until the client's FIN passes the relay
	if err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk upload: %d bytes, equal %v, err %v", len(got), bytes.Equal(got, bulk), err)
	}
	// The other direction still works after the half-close.
	if _, err := server.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	server.CloseWrite()
	res := <-done
	// The last FIN is the caller's Close, as the engine closes both sides.
	relayDown.Close()
	relayUp.Close()
	rest, err := io.ReadAll(client)
	if err != nil || string(rest) != "bye" {
		t.Fatalf("after half-close: %q %v", rest, err)
	}
	if res.Err() != nil {
		t.Fatalf("relay error: %v", res.Err())
	}
	if want := int64(100*5 + len(bulk)); res.Up != want || res.Down != 100+3 {
		t.Fatalf("counted up %d down %d, want %d and %d", res.Up, res.Down, want, 103)
	}
}

// Cancelling the context closes both sides and ends the relay.
func TestRelayCancel(t *testing.T) {
	_, relayDown := loopPair(t)
	relayUp, _ := loopPair(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan Result, 1)
	go func() { done <- Relay(ctx, relayDown, relayUp) }()
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not end after cancel")
	}
}

// Small messages into a receiver that does not read: the relay's writes
// fill the upstream socket and must wait (EAGAIN, partial writes) without
// losing or reordering a byte.
func TestRelaySmallMessagesWaitForRoom(t *testing.T) {
	client, relayDown := loopPair(t)
	relayUp, server := loopPair(t)
	relayUp.SetWriteBuffer(4096)
	server.SetReadBuffer(16 << 10)
	done := make(chan Result, 1)
	go func() { done <- Relay(context.Background(), relayDown, relayUp) }()
	deadline := time.Now().Add(30 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)

	var want bytes.Buffer
	msg := make([]byte, 3000)
	go func() {
		for i := range 100 {
			rand.Read(msg)
			msg[0] = byte(i)
			want.Write(msg)
			if _, err := client.Write(msg); err != nil {
				return
			}
		}
		client.CloseWrite()
	}()
	time.Sleep(100 * time.Millisecond) // let the relay's writes block
	got, err := io.ReadAll(server)
	if err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("got %d bytes (equal %v), want %d: %v", len(got), bytes.Equal(got, want.Bytes()), want.Len(), err)
	}
	server.CloseWrite()
	res := <-done
	if res.Err() != nil || res.Up != int64(want.Len()) {
		t.Fatalf("relay: up %d err %v, want %d bytes", res.Up, res.Err(), want.Len())
	}
}
