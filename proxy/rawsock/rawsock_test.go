package rawsock

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// pair returns both ends of a loopback TCP connection.
func pair(t *testing.T) (*net.TCPConn, *net.TCPConn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	b, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a.(*net.TCPConn), b.(*net.TCPConn)
}

// TestConnMovesBytesBothWays: 8 MiB written through a Conn, more than the
// socket buffers hold (the write waits for room while the peer reads), and
// read back exact through another; then EOF once the writer closes.
func TestConnMovesBytesBothWays(t *testing.T) {
	a, b := pair(t)
	wa, err := New(a)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := New(b)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 8<<20)
	for i := range want {
		want[i] = byte(i * 7)
	}
	errc := make(chan error, 1)
	go func() {
		n, err := wa.Write(want)
		if err == nil && n != len(want) {
			err = io.ErrShortWrite
		}
		a.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(rb)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("write: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, not the %d written", len(got), len(want))
	}
}

// TestConnDeadlineAndClose: a read waiting on a silent peer ends with a
// timeout at the connection's read deadline, and with net.ErrClosed once
// the connection is closed, as a net.Conn's read does.
func TestConnDeadlineAndClose(t *testing.T) {
	a, _ := pair(t)
	ra, err := New(a)
	if err != nil {
		t.Fatal(err)
	}
	a.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	var buf [16]byte
	_, err = ra.Read(buf[:])
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read past the deadline: %v, want a timeout", err)
	}
	a.SetReadDeadline(time.Time{})
	errc := make(chan error, 1)
	go func() {
		_, err := ra.Read(buf[:])
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let the read wait (either order passes)
	a.Close()
	if err := <-errc; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("read on a closed connection: %v, want net.ErrClosed", err)
	}
}

// TestTryWriteNeverWaits: TryWrite to a peer that does not read takes
// what the socket holds and then says ErrWouldBlock at once, never
// waiting; what it took arrives in order, and once the peer reads, the
// rest goes. A TryWrite allocates nothing.
func TestTryWriteNeverWaits(t *testing.T) {
	a, b := pair(t)
	wa, err := New(a)
	if err != nil {
		t.Fatal(err)
	}
	want := make([]byte, 32<<20) // more than any loopback socket buffers
	for i := range want {
		want[i] = byte(i * 13)
	}
	n, err := wa.TryWrite(want)
	if !errors.Is(err, ErrWouldBlock) || n <= 0 || n >= len(want) {
		t.Fatalf("TryWrite of %d bytes to a peer not reading: %d, %v; want part and ErrWouldBlock", len(want), n, err)
	}
	got := make([]byte, 0, len(want))
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for len(got) < len(want) {
			m, err := b.Read(buf)
			got = append(got, buf[:m]...)
			if err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for off := n; off < len(want); {
		m, err := wa.TryWrite(want[off:])
		off += m
		if err != nil && !errors.Is(err, ErrWouldBlock) {
			t.Fatalf("TryWrite: %v", err)
		}
		if err != nil {
			time.Sleep(time.Millisecond)
		}
	}
	if err := <-done; err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("the bytes read are not the bytes written")
	}
	small := []byte("x")
	if allocs := testing.AllocsPerRun(100, func() {
		if _, err := wa.TryWrite(small); err != nil {
			t.Fatal(err)
		}
	}); allocs != 0 {
		t.Fatalf("TryWrite allocates %.1f times a call", allocs)
	}
}
