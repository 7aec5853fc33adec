package proxy

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/relay"
	"github.com/weir-mesh/weir/proxy/sniff"
)

// Connection hand-over at upgrade. An agent handing over to its successor
// offers every L4 connection it relays: one that is quiet at that instant
// (offerable) is paused with no byte in the relay's hands (relay.Handle)
// and its two sockets are given to the successor, which relays them on
// (Adopt); the rest drain as before and are offered again while the drain
// lasts, so a connection busy at the first look moves at its next pause.
//
// Bytes in the kernel's queues travel with the sockets: what arrives during
// the pause waits in a receive queue for the successor to read, and what
// the relay wrote and the peer has not yet acknowledged stays in the send
// queue, sent and retransmitted by the kernel whichever process holds the
// socket. So for a relay of messages (requests and answers) a send queue
// need not be empty, and must not be required to: on a connection that
// carries them back to back, an answer leaves a socket's send queue only
// when the peer's next request acknowledges it, so both queues are never
// empty at once, and such a connection was never handed over but cut at
// the drain deadline, losing the request in flight (TestTakeoverStress
// found it). It is offered when neither socket holds an unread byte. A
// relay that carries a stream (relay.Handle.Bulk) is offered only when all
// four queues are empty, so a bulk transfer busy at the takeover drains
// rather than being paused again and again (moving it would be safe too,
// but the drain is what the hand-over promises for it). L7 connections are not moved:
// they drain at a request boundary (Connection: close, GOAWAY).

// HandOff is one paused L4 connection, or one idle HTTP/1 client
// connection (HTTP1), as the successor needs it.
type HandOff struct {
	// Client and Upstream are the relay's sockets; an HTTP/1 hand-off has
	// the client's alone (its upstream connections are pooled, not its).
	Client, Upstream *net.TCPConn
	// HTTP1: Client is idle between HTTP/1.1 requests with nothing read
	// of the next one; the successor serves it from its next request on.
	HTTP1 bool
	// Workload names the pod (Workload.Name) the connection belongs to.
	Workload  string
	Direction Direction
	// Dst is the original destination; Cluster and Endpoint where it went
	// (empty for passthrough and inbound).
	Dst      netip.AddrPort
	Cluster  string
	Endpoint netip.AddrPort
	// Up and Down are the bytes relayed so far each way; Started is when
	// the connection was accepted (by the first agent that relayed it).
	Up, Down int64
	Started  time.Time
}

// tracked is an L4 connection the engine relays.
type tracked struct {
	client, upstream *net.TCPConn
	w                *Workload
	dir              Direction
	dst              netip.AddrPort
	cluster          string
	endpoint         netip.AddrPort
	started          time.Time
	prior            [2]int64 // bytes relayed by earlier agents (adopted)
	h                relay.Handle
	clientAccel      accelOnce // whether client is accelerated, once asked
	// spliced: Engine.Splice relays it; it cannot be paused, so it drains.
	spliced atomic.Bool
}

// handOff is t as its successor needs it, with up and down bytes relayed
// here since its prior counts.
func (t *tracked) handOff(up, down int64) HandOff {
	return HandOff{
		Client: t.client, Upstream: t.upstream, Workload: t.w.Name, Direction: t.dir,
		Dst: t.dst, Cluster: t.cluster, Endpoint: t.endpoint,
		Up: t.prior[0] + up, Down: t.prior[1] + down, Started: t.started,
	}
}

// l4Set is the engine's set of relayed L4 connections.
type l4Set struct {
	mu sync.Mutex
	m  map[*tracked]struct{}
}

func (s *l4Set) add(t *tracked) {
	s.mu.Lock()
	if s.m == nil {
		s.m = map[*tracked]struct{}{}
	}
	s.m[t] = struct{}{}
	s.mu.Unlock()
}

func (s *l4Set) remove(t *tracked) {
	s.mu.Lock()
	delete(s.m, t)
	s.mu.Unlock()
}

func (s *l4Set) list() []*tracked {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*tracked, 0, len(s.m))
	for t := range s.m {
		out = append(out, t)
	}
	return out
}

// HandoverMetrics count what became of L4 connections at a takeover, by
// path: handed_over (moved to the successor), drained (ended during the
// drain), cut (closed at the drain deadline), adopted (received from a
// predecessor); and of idle HTTP/1 client connections: handed_over_http1
// and adopted_http1.
type HandoverMetrics struct {
	total *prometheus.CounterVec
	// counts mirror the series for the agent's exit log (its metrics
	// endpoint is gone by then).
	mu     sync.Mutex
	counts map[string]int64
}

// NewHandoverMetrics registers weir_handover_connections_total on reg.
func NewHandoverMetrics(reg prometheus.Registerer) *HandoverMetrics {
	m := &HandoverMetrics{total: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_handover_connections_total",
		Help: "Connections at an agent takeover by path: L4 handed_over, drained, cut (sender) and adopted (receiver); idle HTTP/1 client connections handed_over_http1 (sender) and adopted_http1 (receiver).",
	}, []string{"path"})}
	reg.MustRegister(m.total)
	return m
}

func (m *HandoverMetrics) inc(path string) {
	if m == nil {
		return
	}
	m.total.WithLabelValues(path).Inc()
	m.mu.Lock()
	if m.counts == nil {
		m.counts = map[string]int64{}
	}
	m.counts[path]++
	m.mu.Unlock()
}

// Counts returns how many connections took each path so far.
func (m *HandoverMetrics) Counts() map[string]int64 {
	out := map[string]int64{}
	if m == nil {
		return out
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, v := range m.counts {
		out[k] = v
	}
	return out
}

// HandOver offers the engine's L4 connections to send until none is left
// or ctx ends, every interval: each idle one is paused and passed to send,
// then released on success or resumed on error. A send error stops the
// hand-over (the successor is gone or refused): the rest drain. It returns
// how many connections were handed over.
func (e *Engine) HandOver(ctx context.Context, interval time.Duration, send func(HandOff) error) (int, error) {
	e.init()
	handed := 0
	for {
		left := e.l4.list()
		if len(left) == 0 && e.loopState.pairs.Load() == 0 {
			return handed, nil
		}
		n, err := e.handOverLoops(send)
		handed += n
		if err != nil {
			return handed, err
		}
		for _, t := range left {
			if t.spliced.Load() || !offerable(t) || !t.h.Pause(100*time.Millisecond) {
				continue
			}
			err := send(t.handOff(t.h.Counts()))
			if err != nil {
				t.h.Resume()
				return handed, err
			}
			t.h.Release()
			handed++
		}
		select {
		case <-ctx.Done():
			return handed, ctx.Err()
		case <-time.After(interval):
		}
	}
}

// SetIdleHandOff makes send the way out for HTTP/1 client connections that
// are idle between requests while the engine drains for a successor
// (l7.Upstream.HandOff): an idle keep-alive connection that is closed
// races with a request its client is sending at that moment, which a
// client that does not retry loses. nil stops it; they are then closed
// after a grace second, as without a successor. send must serialise with
// the HandOver's own sends.
func (e *Engine) SetIdleHandOff(send func(HandOff) error) {
	e.init()
	if send == nil {
		e.idleSend.Store(nil)
		return
	}
	e.idleSend.Store(&send)
}

// handOffIdle is l7.Upstream.HandOff for HTTP/1 client connections: down
// goes to the successor if one takes it. A connection with sniffed bytes
// not yet read, or an eBPF-accelerated one (not tested), stays.
func (e *Engine) handOffIdle(down net.Conn, up *l7.Upstream) bool {
	send := e.idleSend.Load()
	if send == nil {
		return false
	}
	c, ok := down.(*net.TCPConn)
	if !ok {
		sc, isSniffed := down.(*sniff.Conn)
		if !isSniffed || len(sc.Buffered()) > 0 || sc.TCP() == nil {
			return false
		}
		c = sc.TCP()
	}
	if e.accelerated(c) {
		return false
	}
	if err := (*send)(HandOff{Client: c, HTTP1: true, Workload: up.Pod, Direction: Outbound, Dst: up.Dst}); err != nil {
		return false
	}
	e.HandoverMetrics.inc("handed_over_http1")
	return true
}

// AdoptHTTP1 serves an idle HTTP/1 client connection a predecessor handed
// over, from its next request on, as if this engine had accepted and
// sniffed it: w is this agent's workload of the same pod. It fails when
// this agent has no service route for the connection's destination.
func (e *Engine) AdoptHTTP1(h HandOff, w *Workload) error {
	e.init()
	if h.Client == nil || w == nil {
		return fmt.Errorf("adopt HTTP/1: incomplete hand-off")
	}
	select {
	case <-e.draining:
		return fmt.Errorf("adopt HTTP/1: engine is shutting down")
	default:
	}
	r := e.lookup(h.Dst)
	if r.Refused() || r.Cluster == nil {
		return fmt.Errorf("adopt HTTP/1: no service route to %s here", h.Dst)
	}
	e.HandoverMetrics.inc("adopted_http1")
	e.Metrics.accepted(Outbound)
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		defer e.Metrics.closed(Outbound)
		e.serveHTTP1(h.Client, h.Client, w, h.Dst, r)
	}()
	return nil
}

// offerable reports whether t is quiet enough to pause now: no unread
// byte on either socket, and for a stream no unsent or unacknowledged one
// either.
func offerable(t *tracked) bool {
	bulk := t.h.Bulk()
	for _, c := range []*net.TCPConn{t.client, t.upstream} {
		in, out := queues(c)
		if in != 0 || (bulk && out != 0) {
			return false
		}
	}
	return true
}

// queues returns the bytes in c's receive queue (unread) and send queue
// (unsent or unacknowledged), SIOCINQ and SIOCOUTQ; -1 if unknown.
func queues(c *net.TCPConn) (in, out int) {
	in, out = -1, -1
	rc, err := c.SyscallConn()
	if err != nil {
		return
	}
	rc.Control(func(fd uintptr) {
		in, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		out, _ = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
	})
	return
}

// Adopt relays a connection a predecessor handed over, as if this engine
// had accepted it: w is this agent's workload of the same pod.
func (e *Engine) Adopt(h HandOff, w *Workload) error {
	e.init()
	if h.Client == nil || h.Upstream == nil || w == nil {
		return fmt.Errorf("adopt: incomplete hand-off")
	}
	select {
	case <-e.draining:
		return fmt.Errorf("adopt: engine is shutting down")
	default:
	}
	e.HandoverMetrics.inc("adopted")
	e.Metrics.accepted(h.Direction)
	if e.adoptOnLoop(h, w) {
		h.Client.Close()
		h.Upstream.Close()
		return nil
	}
	e.wg.Add(1)
	e.relayAdopted(adoptedTracked(h, w))
	return nil
}

// adoptedTracked is h as this engine relays it.
func adoptedTracked(h HandOff, w *Workload) *tracked {
	return &tracked{client: h.Client, upstream: h.Upstream, w: w, dir: h.Direction, dst: h.Dst,
		cluster: h.Cluster, endpoint: h.Endpoint, started: h.Started, prior: [2]int64{h.Up, h.Down}}
}

// relayAdopted relays an adopted connection on a new goroutine, which
// ends its count in e.wg and closes it.
func (e *Engine) relayAdopted(t *tracked) {
	go func() {
		defer e.wg.Done()
		defer e.Metrics.closed(t.dir)
		defer t.client.Close()
		defer t.upstream.Close()
		e.relayTracked(t, nil)
	}()
}
