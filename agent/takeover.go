package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/agent/api"
)

// Takeover, so an upgrade drops no connection:
//
//  1. the successor finds the predecessor answering on the CNI socket and
//     keeps a connection to it;
//  2. it re-captures every pod from the state file, its SO_REUSEPORT
//     listeners joining the predecessor's in each pod netns;
//  3. it binds its own CNI socket and renames it over the path (new CNI
//     calls reach it), binds the admin address with SO_REUSEPORT;
//  4. once ready it sends POST /v1/handover over the kept connection: the
//     predecessor stops writing the state file, closes its listeners (with
//     net.ipv4.tcp_migrate_req=1 in each pod netns the connections in its
//     accept queues move to the successor's listeners), drains what it
//     relays for drainTimeout, and exits;
//  5. the successor reads the state file once more for pods the predecessor
//     added in between, and owns it from then on.

// predecessor is a running agent found on the CNI socket.
type predecessor struct {
	conn net.Conn
}

// findPredecessor connects to a live agent on path; nil if none answers
// (no file, or a stale one).
func findPredecessor(path string) (*predecessor, error) {
	st, err := os.Lstat(path)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if st.Mode()&os.ModeSocket == 0 {
		return nil, fmt.Errorf("socket %s: exists and is not a socket", path)
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, nil
	}
	return &predecessor{conn: c}, nil
}

func (p *predecessor) close() {
	if p != nil {
		p.conn.Close()
	}
}

// handOver asks the predecessor to stop and waits for its answer. When the
// predecessor can hand its connections over (handover.go), the connection
// is returned as the hand-over stream; otherwise it is closed and nil.
func (p *predecessor) handOver() (*net.UnixConn, error) {
	p.conn.SetDeadline(time.Now().Add(10 * time.Second))
	req, _ := http.NewRequest(http.MethodPost, "http://weir-agent"+api.PathHandover, nil)
	req.Header.Set(HandoverHeader, handoverVersion)
	if err := req.Write(p.conn); err != nil {
		p.conn.Close()
		return nil, fmt.Errorf("send handover: %w", err)
	}
	// The predecessor writes nothing after its answer before this side
	// speaks, so the reader buffers nothing of the stream.
	resp, err := http.ReadResponse(bufio.NewReader(p.conn), req)
	if err != nil {
		p.conn.Close()
		return nil, fmt.Errorf("read handover answer: %w", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		p.conn.Close()
		return nil, fmt.Errorf("handover refused: %s", resp.Status)
	}
	uc, ok := p.conn.(*net.UnixConn)
	if resp.Header.Get(HandoverHeader) == "" || !ok {
		p.conn.Close()
		return nil, nil
	}
	p.conn.SetDeadline(time.Time{})
	return uc, nil
}

// handleHandover is the predecessor's side: from now on it writes nothing
// and leaves; in-flight CNI calls finish first (they hold a.mu). A
// successor that asks for the connection hand-over gets this connection as
// its stream (sendConnections runs it during the drain).
func (a *Agent) handleHandover(w http.ResponseWriter, r *http.Request) {
	a.mu.Lock()
	// The successor reads the state once more after this answer; an older
	// successor reads the stateFile only, so bring the mirror up to date
	// first.
	if pods, ok := a.mirrorLocked(false, nil); ok {
		if err := writeFileAtomic(filepath.Join(a.cfg.StateDir, stateFile), mirrorJSON(pods)); err != nil {
			a.log.Error("write state mirror for the successor", "err", err)
		}
	}
	a.ownsState.Store(false)
	// The successor joins the admin address once it is ready; from then
	// on only it answers the node's HTTP probes (this agent's drain must
	// not answer them "not ready", nor its idle wait at all).
	if ln := a.adminLn.Load(); ln != nil {
		(*ln).Close()
	}
	a.ready.Store(false)
	a.mu.Unlock()
	if r.Header.Get(HandoverHeader) != "" {
		if stream := hijackStream(w); stream != nil {
			a.handoverStream = stream
			a.handoverOnce.Do(func() { close(a.handover) })
			return
		}
	}
	a.handoverOnce.Do(func() { close(a.handover) })
	writeJSON(w, http.StatusOK, map[string]bool{"handedOver": true})
}

// hijackStream answers the handover with the hand-over header and takes the
// connection from the HTTP server; nil if it cannot.
func hijackStream(w http.ResponseWriter) *net.UnixConn {
	hj, ok := w.(http.Hijacker)
	if !ok {
		return nil
	}
	c, _, err := hj.Hijack()
	if err != nil {
		return nil
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil
	}
	body := `{"handedOver":true}` + "\n"
	fmt.Fprintf(uc, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%s: %s\r\nContent-Length: %d\r\n\r\n%s", HandoverHeader, handoverVersion, len(body), body)
	return uc
}

// listenUnix binds the CNI socket, root-only. A socket file left by a dead
// agent is replaced; with replace set (a takeover), a live one is too: the
// new socket is bound beside it and renamed over the path, so the path is
// never missing.
func listenUnix(path string, replace bool) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if !replace {
		if _, err := os.Lstat(path); err == nil {
			if err := os.Remove(path); err != nil {
				return nil, fmt.Errorf("remove stale socket %s: %w", path, err)
			}
		}
	}
	tmp := path + ".new" + strconv.Itoa(os.Getpid())
	os.Remove(tmp)
	old := umask(0o077)
	ln, err := net.Listen("unix", tmp)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	// The listener must not unlink the path when closed: it is a successor's
	// once renamed away, or the rename target here.
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("install socket %s: %w", path, err)
	}
	return ln, nil
}

// listenAdmin binds the admin address with SO_REUSEPORT so a successor can
// bind it while this agent still runs.
func listenAdmin(addr string) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1) })
		return serr
	}}
	return lc.Listen(context.Background(), "tcp", addr)
}
