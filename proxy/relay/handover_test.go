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

// A relay paused in the middle of a bulk transfer and released, then
// relayed on by a second relay over the same sockets (what the agent that
// adopts a handed-over connection does), delivers every byte in order: a
// pause holds none. Resume leaves a relay working as before.
func TestPauseReleaseResume(t *testing.T) {
	client, relayDown := loopPair(t)
	relayUp, server := loopPair(t)
	deadline := time.Now().Add(60 * time.Second)
	client.SetDeadline(deadline)
	server.SetDeadline(deadline)

	payload := make([]byte, 32<<20)
	rand.Read(payload)
	sent := make(chan error, 1)
	go func() {
		// Written in pieces, so some pauses meet an idle relay and some a
		// busy one.
		for off := 0; off < len(payload); off += 1 << 20 {
			if _, err := client.Write(payload[off : off+1<<20]); err != nil {
				sent <- err
				return
			}
			time.Sleep(time.Millisecond)
		}
		sent <- client.CloseWrite()
	}()
	got := make(chan []byte, 1)
	go func() { b, _ := io.ReadAll(server); got <- b }()

	handed, resumed := 0, 0
	var res Result
	for gen := 0; ; gen++ {
		h := &Handle{}
		done := make(chan Result, 1)
		go func() { done <- RelayWith(context.Background(), relayDown, relayUp, h) }()
		// A handle the relay has not bound yet refuses to pause; on a loaded
		// machine the goroutine may not have started after a fixed sleep.
		waitBound(t, h)
		time.Sleep(5 * time.Millisecond)
		if gen%2 == 1 && h.Pause(pauseWait) {
			h.Resume()
			resumed++
			time.Sleep(5 * time.Millisecond)
		}
		if gen < 6 && h.Pause(pauseWait) {
			h.Release()
			res = <-done
			if !res.HandedOver {
				t.Fatalf("released relay: %+v, want HandedOver", res)
			}
			handed++
			// What the adopting agent holds: new descriptors of the same
			// sockets (SCM_RIGHTS there, dup here); the old ones close.
			relayDown, relayUp = redescribe(t, relayDown), redescribe(t, relayUp)
			continue
		}
		// The last relay runs to the end: the server answers EOF with EOF.
		go func() { server.CloseWrite() }()
		res = <-done
		relayDown.Close() // the caller's Close sends the last FIN
		relayUp.Close()
		break
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	if b := <-got; !bytes.Equal(b, payload) {
		t.Fatalf("server got %d bytes, want the %d sent, in order (first difference at %d)", len(b), len(payload), firstDiff(b, payload))
	}
	if handed < 4 || resumed < 1 {
		t.Fatalf("handed over %d times, resumed %d: the test did not exercise pauses", handed, resumed)
	}
	t.Logf("%d hand-overs, %d resumes, last relay %+v", handed, resumed, res)
}

// pauseWait bounds how long a test's Pause waits for both directions to
// park: generous, because a loaded machine may not run them for a while,
// and free when they park at once.
const pauseWait = 10 * time.Second

// waitBound waits until RelayWith has bound h, so that a refused Pause
// means what the test checks and not that the goroutine had not run yet.
func waitBound(t *testing.T, h *Handle) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); h.r.Load() == nil; {
		if time.Now().After(end) {
			t.Fatal("the relay did not bind its handle within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}

// A relay that already saw EOF one way is not paused (half-closed
// connections drain), and a Handle never bound refuses.
func TestPauseRefusals(t *testing.T) {
	if (&Handle{}).Pause(time.Millisecond) {
		t.Fatal("an unbound handle paused")
	}
	client, relayDown := loopPair(t)
	relayUp, server := loopPair(t)
	h := &Handle{}
	done := make(chan Result, 1)
	go func() { done <- RelayWith(context.Background(), relayDown, relayUp, h) }()
	client.CloseWrite()
	server.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := server.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("server read %v, want EOF", err)
	}
	if h.Pause(100 * time.Millisecond) {
		t.Fatal("paused a half-closed relay")
	}
	server.CloseWrite()
	if res := <-done; res.HandedOver || res.Err() != nil {
		t.Fatalf("relay %+v", res)
	}
}

// redescribe returns a new *net.TCPConn on c's socket and closes c.
func redescribe(t *testing.T, c *net.TCPConn) *net.TCPConn {
	t.Helper()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	c.Close()
	nc, err := net.FileConn(f)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc.(*net.TCPConn)
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
