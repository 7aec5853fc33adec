package agent

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/proxy"
)

// Connection hand-over at upgrade: the L4 connections the old agent relays
// and finds idle are given to its successor with their sockets, instead of
// being drained (proxy/handover.go has the data-path half).
//
// The channel is the takeover's own: the successor's POST /v1/handover
// carries the header HandoverHeader with its protocol version; an old agent
// that can hand connections over answers 200 with the header too, and the
// connection, hijacked, becomes the hand-over stream. Messages are frames:
// a 4-byte big-endian length (at most maxFrame) and a JSON handoverMsg; a
// "conn" frame carries the client and upstream sockets with SCM_RIGHTS.
// Every frame the sender writes waits for the receiver's answer, so the
// receiver's reads never merge two frames (nor two frames' descriptors).
//
//	successor (receiver)             old agent (sender)
//	POST /v1/handover + header  ->
//	                            <-   200 + header (hijacked from here on)
//	ready                       ->
//	                            <-   hello {version, release, pid}
//	ack {ok} | ack {ok:false}   ->   (refused: log both sides, drain as before)
//	                            <-   conn {pod, dst, cluster, endpoint, counters} + 2 fds
//	ack {ok} | ack {ok:false}   ->   (ok: release the relay; else resume it)
//	                            ...
//	                            <-   done

// HandoverHeader names the hand-over protocol in the takeover request and
// its answer.
const HandoverHeader = "Weir-Conn-Handover"

// handoverVersion is the protocol this build speaks (and sends in hello).
// A variable so a test can build a release that speaks another one:
// -ldflags "-X github.com/weir-mesh/weir/agent.handoverVersion=99".
var handoverVersion = "1"

// knownHandoverVersions are the versions a receiver takes. Release N+1 keeps
// N's version here for as long as it must take connections from N.
var knownHandoverVersions = []string{"1"}

// Release names this build in logs and in hello; set with -ldflags
// "-X github.com/weir-mesh/weir/agent.Release=...".
var Release = "dev"

// maxFrame bounds one frame: metadata of one connection is far smaller.
const maxFrame = 64 << 10

// protoHTTP1 marks a conn frame carrying an idle HTTP/1 client socket. A
// receiver that predates it refuses the frame (it wants two sockets), and
// the sender then closes that connection as it did before.
const protoHTTP1 = "http1"

// handoverMsg is every frame's body; Type says which fields matter.
type handoverMsg struct {
	Type string `json:"type"` // ready, hello, ack, conn, done
	// hello
	Version string `json:"version,omitempty"`
	Release string `json:"release,omitempty"`
	Pid     int    `json:"pid,omitempty"`
	// ack
	OK    bool   `json:"ok,omitempty"`
	Error string `json:"error,omitempty"`
	// conn
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name,omitempty"`
	Direction string `json:"direction,omitempty"`
	Dst       string `json:"dst,omitempty"`
	Cluster   string `json:"cluster,omitempty"`
	Endpoint  string `json:"endpoint,omitempty"`
	// Proto is "" for an L4 connection (client and upstream sockets) and
	// "http1" for an HTTP/1 client connection idle between requests (its
	// socket alone).
	Proto   string    `json:"proto,omitempty"`
	Up      int64     `json:"up,omitempty"`
	Down    int64     `json:"down,omitempty"`
	Started time.Time `json:"started,omitzero"`
}

// decodeFrame parses one frame's bytes (length prefix included) and checks
// what the type requires. It never panics on any input (FuzzDecodeFrame).
func decodeFrame(b []byte) (handoverMsg, error) {
	var m handoverMsg
	if len(b) < 4 {
		return m, errors.New("hand-over frame: shorter than its length prefix")
	}
	n := binary.BigEndian.Uint32(b)
	if n > maxFrame {
		return m, fmt.Errorf("hand-over frame: length %d over the %d limit", n, maxFrame)
	}
	if int(n) != len(b)-4 {
		return m, fmt.Errorf("hand-over frame: length %d, got %d bytes", n, len(b)-4)
	}
	if err := json.Unmarshal(b[4:], &m); err != nil {
		return m, fmt.Errorf("hand-over frame: %w", err)
	}
	switch m.Type {
	case "ready", "ack", "done":
	case "hello":
		if m.Version == "" {
			return m, errors.New("hand-over hello: no version")
		}
	case "conn":
		if m.Name == "" || (m.Direction != string(proxy.Outbound) && m.Direction != string(proxy.Inbound)) {
			return m, fmt.Errorf("hand-over conn: pod %q, direction %q", m.Name, m.Direction)
		}
		if m.Proto != "" && m.Proto != protoHTTP1 {
			return m, fmt.Errorf("hand-over conn: unknown proto %q", m.Proto)
		}
		if _, err := netip.ParseAddrPort(m.Dst); err != nil {
			return m, fmt.Errorf("hand-over conn: dst: %w", err)
		}
		if m.Endpoint != "" {
			if _, err := netip.ParseAddrPort(m.Endpoint); err != nil {
				return m, fmt.Errorf("hand-over conn: endpoint: %w", err)
			}
		}
	default:
		// A newer sender's frame: refused by type, not misread.
		return m, fmt.Errorf("hand-over frame: unknown type %q", m.Type)
	}
	return m, nil
}

// handoverConn is one end of the stream.
type handoverConn struct {
	c *net.UnixConn
}

// write sends m, with fds attached when given.
func (h handoverConn) write(m handoverMsg, fds ...int) error {
	body, err := json.Marshal(m)
	if err != nil {
		return err
	}
	b := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(body)), uint32(len(body)))
	b = append(b, body...)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	h.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	n, oobn, err := h.c.WriteMsgUnix(b, oob, nil)
	if err == nil && (n != len(b) || oobn != len(oob)) {
		err = io.ErrShortWrite
	}
	return err
}

// read receives one frame and the descriptors sent with it (at most two).
func (h handoverConn) read(timeout time.Duration) (handoverMsg, []*os.File, error) {
	h.c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4+maxFrame)
	oob := make([]byte, unix.CmsgSpace(2*4))
	n, oobn, flags, _, err := h.c.ReadMsgUnix(buf, oob)
	if err != nil {
		return handoverMsg{}, nil, err
	}
	files, ferr := takeFiles(oob[:oobn])
	if flags&unix.MSG_CTRUNC != 0 && ferr == nil {
		ferr = errors.New("hand-over: descriptors truncated")
	}
	if n >= 4 {
		// The rest of a frame a short read left behind (no descriptor comes
		// with it: they travel with the frame's first byte).
		if want := 4 + int(binary.BigEndian.Uint32(buf)); want <= len(buf) && n < want {
			var m int
			m, err = io.ReadFull(h.c, buf[n:want])
			n += m
		}
	}
	msg, derr := decodeFrame(buf[:n])
	if err = errors.Join(err, ferr, derr); err != nil {
		closeFiles(files)
		return handoverMsg{}, nil, err
	}
	return msg, files, nil
}

// takeFiles turns every descriptor in a control message into a file, all of
// them before looking at any, so none leaks whatever follows.
func takeFiles(oob []byte) ([]*os.File, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	cmsgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("hand-over: control message: %w", err)
	}
	var files []*os.File
	for _, cm := range cmsgs {
		fds, err := unix.ParseUnixRights(&cm)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			files = append(files, os.NewFile(uintptr(fd), "handed-over"))
		}
	}
	return files, nil
}

func closeFiles(fs []*os.File) {
	for _, f := range fs {
		f.Close()
	}
}

// handoverSender is the old agent's end of the stream. Two kinds of
// sender share it, the L4 hand-over loop and HTTP/1 connections offering
// themselves when idle: every conn frame and its answer is one exchange
// under mu.
type handoverSender struct {
	h  handoverConn
	mu sync.Mutex
	// ended: done was sent, or the stream broke.
	ended bool
}

// greetSuccessor opens the stream: the successor's ready, this agent's
// hello, the successor's ack. Nil (and the stream closed) when the
// successor did not start it or refused: connections then drain.
func (a *Agent) greetSuccessor(c *net.UnixConn) *handoverSender {
	h := handoverConn{c}
	if m, _, err := h.read(10 * time.Second); err != nil || m.Type != "ready" {
		a.log.Warn("connection hand-over: the successor did not start it; connections drain", "err", err)
		c.Close()
		return nil
	}
	if err := h.write(handoverMsg{Type: "hello", Version: handoverVersion, Release: Release, Pid: os.Getpid()}); err != nil {
		a.log.Warn("connection hand-over: hello", "err", err)
		c.Close()
		return nil
	}
	if m, _, err := h.read(10 * time.Second); err != nil || !m.OK {
		a.log.Warn("connection hand-over refused by the successor; connections drain", "version", handoverVersion, "reason", m.Error, "err", err)
		c.Close()
		return nil
	}
	return &handoverSender{h: h}
}

// send gives one connection to the successor and waits for its answer. A
// refusal leaves the stream usable; a broken stream ends it.
func (s *handoverSender) send(o proxy.HandOff) error {
	fds := make([]int, 0, 2)
	for _, c := range []*net.TCPConn{o.Client, o.Upstream} {
		if c == nil {
			continue
		}
		fd, err := fdOf(c)
		if err != nil {
			return err
		}
		fds = append(fds, fd)
	}
	ns, name, _ := strings.Cut(o.Workload, "/")
	msg := handoverMsg{Type: "conn", Namespace: ns, Name: name, Direction: string(o.Direction), Dst: o.Dst.String(),
		Cluster: o.Cluster, Up: o.Up, Down: o.Down, Started: o.Started}
	if o.HTTP1 {
		msg.Proto = protoHTTP1
	}
	if o.Endpoint.IsValid() {
		msg.Endpoint = o.Endpoint.String()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return errors.New("hand-over stream ended")
	}
	if err := s.h.write(msg, fds...); err != nil {
		s.ended = true
		return fmt.Errorf("send connection: %w", err)
	}
	ack, _, err := s.h.read(10 * time.Second)
	if err != nil {
		s.ended = true
		return fmt.Errorf("successor's answer: %w", err)
	}
	if !ack.OK {
		return fmt.Errorf("successor refused a connection: %s", ack.Error)
	}
	return nil
}

// end sends done, once, and closes the stream.
func (s *handoverSender) end() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ended {
		s.ended = true
		s.h.write(handoverMsg{Type: "done"})
	}
	s.h.c.Close()
}

// sendConnections is the old agent's side, run during its drain on a
// greeted stream: it hands over every idle L4 connection until none is
// left or ctx ends, and keeps the stream open for idle HTTP/1 connections
// (Engine.SetIdleHandOff) until the engine has drained (drained closed).
func (a *Agent) sendConnections(ctx context.Context, s *handoverSender, drained <-chan struct{}) {
	start := time.Now()
	n, err := a.engine.HandOver(ctx, 10*time.Millisecond, s.send)
	select {
	case <-drained:
	case <-ctx.Done():
	}
	a.engine.SetIdleHandOff(nil)
	s.end()
	a.log.Info("connection hand-over finished", "handedOver", n, "took", time.Since(start).String(), "err", err)
}

// fdOf is the descriptor of c, valid while c is open (the sender closes
// its copy only after the receiver acknowledged).
func fdOf(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd, nil
}

// receiveConnections is the successor's side: it checks the old agent's
// protocol version and relays every connection it is given.
func (a *Agent) receiveConnections(c *net.UnixConn) {
	defer c.Close()
	h := handoverConn{c}
	if err := h.write(handoverMsg{Type: "ready"}); err != nil {
		a.log.Warn("connection hand-over: ready", "err", err)
		return
	}
	hello, files, err := h.read(30 * time.Second)
	closeFiles(files)
	if err != nil || hello.Type != "hello" {
		a.log.Warn("connection hand-over: no hello from the predecessor", "err", err)
		return
	}
	if hello.Version != handoverVersion && !slices.Contains(knownHandoverVersions, hello.Version) {
		reason := fmt.Sprintf("unknown hand-over protocol version %q (this agent, release %s, speaks %q)", hello.Version, Release, append([]string{handoverVersion}, knownHandoverVersions...))
		a.log.Warn("refused the predecessor's connection hand-over; its connections drain", "predecessorRelease", hello.Release, "reason", reason)
		h.write(handoverMsg{Type: "ack", Error: reason})
		return
	}
	if err := h.write(handoverMsg{Type: "ack", OK: true}); err != nil {
		return
	}
	a.log.Info("taking connections over", "predecessorRelease", hello.Release, "predecessorPid", hello.Pid, "version", hello.Version)
	adopted := 0
	for {
		m, files, err := h.read(time.Duration(a.cfg.DrainTimeout) + 10*time.Second)
		if err != nil {
			a.log.Warn("connection hand-over ended early", "adopted", adopted, "err", err)
			return
		}
		if m.Type == "done" {
			closeFiles(files)
			a.log.Info("connection hand-over done", "adopted", adopted)
			return
		}
		if err := a.adopt(m, files); err != nil {
			a.log.Warn("cannot take a connection over; the predecessor keeps it", "pod", m.Namespace+"/"+m.Name, "err", err)
			if h.write(handoverMsg{Type: "ack", Error: err.Error()}) != nil {
				return
			}
			continue
		}
		adopted++
		if h.write(handoverMsg{Type: "ack", OK: true}) != nil {
			return
		}
	}
}

// adopt relays one handed-over connection; files are closed whatever
// happens (the engine holds its own descriptors on success).
func (a *Agent) adopt(m handoverMsg, files []*os.File) error {
	defer closeFiles(files)
	if m.Type == "conn" && m.Proto == protoHTTP1 {
		return a.adoptHTTP1(m, files)
	}
	if m.Type != "conn" || len(files) != 2 {
		return fmt.Errorf("want a conn frame with 2 sockets, got %q with %d", m.Type, len(files))
	}
	w := a.workloadOf(m.Namespace, m.Name)
	if w == nil {
		return fmt.Errorf("pod %s/%s is not captured here", m.Namespace, m.Name)
	}
	var conns [2]*net.TCPConn
	for i, f := range files {
		c, err := net.FileConn(f)
		if err != nil {
			closeConns(conns[:i])
			return fmt.Errorf("socket %d: %w", i, err)
		}
		tc, ok := c.(*net.TCPConn)
		if !ok {
			c.Close()
			closeConns(conns[:i])
			return fmt.Errorf("socket %d is not TCP", i)
		}
		conns[i] = tc
	}
	dst, _ := netip.ParseAddrPort(m.Dst)
	ep, _ := netip.ParseAddrPort(m.Endpoint)
	err := a.engine.Adopt(proxy.HandOff{Client: conns[0], Upstream: conns[1], Workload: w.Name, Direction: proxy.Direction(m.Direction),
		Dst: dst, Cluster: m.Cluster, Endpoint: ep, Up: m.Up, Down: m.Down, Started: m.Started}, w)
	if err != nil {
		closeConns(conns[:])
	}
	return err
}

// adoptHTTP1 serves one handed-over idle HTTP/1 client connection; its
// caller closes files.
func (a *Agent) adoptHTTP1(m handoverMsg, files []*os.File) error {
	if len(files) != 1 {
		return fmt.Errorf("want an HTTP/1 conn frame with 1 socket, got %d", len(files))
	}
	w := a.workloadOf(m.Namespace, m.Name)
	if w == nil {
		return fmt.Errorf("pod %s/%s is not captured here", m.Namespace, m.Name)
	}
	c, err := net.FileConn(files[0])
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		c.Close()
		return fmt.Errorf("socket is not TCP")
	}
	dst, _ := netip.ParseAddrPort(m.Dst)
	if err := a.engine.AdoptHTTP1(proxy.HandOff{Client: tc, HTTP1: true, Workload: w.Name, Direction: proxy.Outbound, Dst: dst}, w); err != nil {
		tc.Close()
		return err
	}
	return nil
}

// workloadOf is this agent's workload of a captured pod; nil if none.
func (a *Agent) workloadOf(namespace, name string) *proxy.Workload {
	for _, p := range a.pods.list() {
		if p.meta.Namespace == namespace && p.meta.Name == name && p.workload != nil {
			return p.workload
		}
	}
	return nil
}

func closeConns(cs []*net.TCPConn) {
	for _, c := range cs {
		if c != nil {
			c.Close()
		}
	}
}
