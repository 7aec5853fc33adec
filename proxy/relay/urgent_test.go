package relay

import (
	"context"
	"crypto/rand"
	"io"
	"testing"
	"time"

	"github.com/weir-mesh/weir/internal/tcptest"
)

// TestRelayUrgentData: in each mode, the bytes behind a TCP urgent mark
// are relayed (the urgent byte itself is out of band and is not), and so
// is a FIN queued behind the mark; a spliced direction does not stall
// there.
func TestRelayUrgentData(t *testing.T) {
	for _, mode := range []string{"small", "splice", "nosplice"} {
		t.Run(mode, func(t *testing.T) {
			client, relayDown := loopPair(t)
			relayUp, server := loopPair(t)
			var h *Handle
			if mode == "nosplice" {
				h = &Handle{}
				h.NoSplice()
			}
			done := make(chan Result, 1)
			go func() { done <- RelayWith(context.Background(), relayDown, relayUp, h) }()
			deadline := time.Now().Add(10 * time.Second)
			client.SetDeadline(deadline)
			server.SetDeadline(deadline)
			var want []byte
			if mode != "small" {
				big := make([]byte, 1<<20) // fills the small buffer: bulk mode
				rand.Read(big)
				go client.Write(big)
				if _, err := io.ReadFull(server, make([]byte, len(big))); err != nil {
					t.Fatal(err)
				}
				want = append(want, big...)
			}
			client.Write([]byte("a"))
			if err := tcptest.SendUrgent(client, []byte("bX")); err != nil {
				t.Fatal(err)
			} // X is urgent
			client.Write([]byte("cd"))
			buf := make([]byte, 4)
			if _, err := io.ReadFull(server, buf); err != nil || string(buf) != "abcd" {
				t.Fatalf("relayed %q, %v; want \"abcd\" (the urgent byte out of band)", buf, err)
			}
			// An urgent byte with the FIN right behind it.
			client.Write([]byte("e"))
			if err := tcptest.SendUrgent(client, []byte("Y")); err != nil {
				t.Fatal(err)
			}
			client.CloseWrite()
			rest, err := io.ReadAll(server)
			if err != nil || string(rest) != "e" {
				t.Fatalf("after the last mark: %q, %v; want \"e\" and the FIN", rest, err)
			}
			server.CloseWrite()
			res := <-done
			want = append(want, "abcde"...)
			if res.Err() != nil || res.Up != int64(len(want)) {
				t.Fatalf("result %+v, want %d bytes up and no error", res, len(want))
			}
		})
	}
}
