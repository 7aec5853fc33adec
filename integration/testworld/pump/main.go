// Command pump is a test program the integration tests run inside pods (in
// the pod's netns and cgroup, so eBPF capture sees it as the pod's app): a
// server and a client that move bulk streams and small messages and check
// every byte.
//
//	pump serve ADDR                 serve every connection (below)
//	pump bulk ADDR UP DOWN [QUIT]   send UP bytes, receive DOWN bytes, check
//	                                both by sha256; with QUIT > 0, exit after
//	                                QUIT bytes received (a peer that goes away
//	                                mid-stream)
//	pump msgs ADDR N SIZE           N messages of SIZE bytes, each echoed back
//	                                and compared
//	pump conns ADDR N               N connections one after the other, each
//	                                one small exchange (the server closes
//	                                first); prints the slowest
//	pump peers ADDR N               N HTTP/1.0 GETs, a connection each, to a
//	                                server that answers with its name;
//	                                prints one JSON line: how often each
//	                                peer address (getpeername) and each
//	                                answer came, and the failures (it
//	                                fails only on bad arguments)
//
// A connection starts with a 16-byte header: the bytes the server must send
// (big-endian uint64) and flags (echo: copy everything back; quit: close
// abruptly after 1 MiB). Without echo the server hashes what it receives
// until EOF and sends the sha256 after the requested bytes. Each run prints
// one line: "ok ..." or "error ...", and exits non-zero on error.
package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

const (
	flagEcho = 1
	flagQuit = 2
	// deadline bounds every connection.
	deadline = 3 * time.Minute
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: pump serve|bulk|msgs ADDR ...")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2])
	case "bulk":
		err = bulk(os.Args[2], num(3), num(4), num(5))
	case "msgs":
		err = msgs(os.Args[2], int(num(3)), int(num(4)))
	case "conns":
		err = conns(os.Args[2], int(num(3)))
	case "peers":
		err = peers(os.Args[2], int(num(3)))
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Printf("error %v\n", err)
		os.Exit(1)
	}
}

func num(i int) int64 {
	if i >= len(os.Args) {
		return 0
	}
	n, err := strconv.ParseInt(os.Args[i], 10, 64)
	if err != nil {
		fmt.Printf("error argument %d: %v\n", i, err)
		os.Exit(2)
	}
	return n
}

// pattern is a byte stream that shifts with the offset (its period is a
// prime, so no read or write size lines up with it): a lost, duplicated or
// reordered chunk changes the hash.
type pattern struct{ off int }

var period = func() []byte {
	b := make([]byte, 65521)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

func (p *pattern) Read(b []byte) (int, error) {
	n := copy(b, period[p.off:])
	p.off = (p.off + n) % len(period)
	return n, nil
}

// verifier hashes a received stream and compares it with the pattern as
// it goes, keeping where the first difference is and what came instead,
// so a failure says whether bytes were lost, repeated or reordered.
type verifier struct {
	h     hash.Hash
	off   int64 // bytes received
	first int64 // offset of the first difference, or -1 before one (set by report)
	bad   bool
	got   []byte // up to 64 bytes received from the first difference on
	runs  int64  // bytes that differ in all
}

func (v *verifier) Write(b []byte) (int, error) {
	v.h.Write(b)
	for i := 0; i < len(b); {
		p := int((v.off + int64(i)) % int64(len(period)))
		n := min(len(b)-i, len(period)-p)
		if !bytes.Equal(b[i:i+n], period[p:p+n]) {
			for j := range n {
				if b[i+j] == period[p+j] {
					continue
				}
				if !v.bad {
					v.bad, v.first = true, v.off+int64(i+j)
				}
				v.runs++
			}
		}
		i += n
	}
	if v.bad && len(v.got) < 64 {
		start := max(v.first-v.off, 0)
		if start < int64(len(b)) {
			v.got = append(v.got, b[start:min(int64(len(b)), start+int64(64-len(v.got)))]...)
		}
	}
	v.off += int64(len(b))
	return len(b), nil
}

// exactness describes a verifier's report for an error message.
func exactness(diff string) string {
	if diff == "" {
		return "every byte received exact"
	}
	return diff
}

// report is "" for an exact stream, else where it first differs and
// which offset of the stream the bytes received there belong to.
func (v *verifier) report() string {
	if !v.bad {
		return ""
	}
	s := fmt.Sprintf("first difference at byte %d of %d (%d bytes differ)", v.first, v.off, v.runs)
	if len(v.got) >= 16 {
		doubled := append(append([]byte{}, period...), period[:64]...)
		if i := bytes.Index(doubled, v.got[:16]); i >= 0 {
			want := v.first % int64(len(period))
			s += fmt.Sprintf("; the bytes there are the pattern's at period offset %d, want %d (shift %d mod %d)", i, want, int64(i)-want, len(period))
		} else {
			s += "; the bytes there are not from the pattern"
		}
	}
	return s
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo: the program reads and
// writes like an ordinary app, never splices.
type onlyWriter struct{ io.Writer }
type onlyReader struct{ io.Reader }

func serve(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			if err := serveConn(c.(*net.TCPConn)); err != nil {
				fmt.Printf("conn %s: %v\n", c.RemoteAddr(), err)
			} else {
				fmt.Printf("conn %s: done\n", c.RemoteAddr())
			}
		}()
	}
}

func serveConn(c *net.TCPConn) error {
	c.SetDeadline(time.Now().Add(deadline))
	var hdr [16]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return fmt.Errorf("header: %w", err)
	}
	down, flags := binary.BigEndian.Uint64(hdr[:8]), binary.BigEndian.Uint64(hdr[8:])
	if flags&flagEcho != 0 {
		_, err := io.Copy(onlyWriter{c}, onlyReader{c})
		return err
	}
	sum := make(chan []byte, 1)
	go func() {
		h := &verifier{h: sha256.New()}
		io.Copy(h, onlyReader{c})
		if d := h.report(); d != "" {
			fmt.Printf("conn %s: received stream differs: %s\n", c.RemoteAddr(), d)
		}
		sum <- h.h.Sum(nil)
	}()
	n := int64(down)
	if flags&flagQuit != 0 {
		n = min(n, 1<<20)
	}
	if _, err := io.Copy(onlyWriter{c}, io.LimitReader(&pattern{}, n)); err != nil {
		return fmt.Errorf("send: %w", err)
	}
	if flags&flagQuit != 0 {
		c.SetLinger(0)
		return errors.New("quit mid-stream as asked")
	}
	_, err := c.Write(<-sum)
	return err
}

func dial(addr string, down, flags uint64) (*net.TCPConn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(deadline))
	var hdr [16]byte
	binary.BigEndian.PutUint64(hdr[:8], down)
	binary.BigEndian.PutUint64(hdr[8:], flags)
	if _, err := c.Write(hdr[:]); err != nil {
		c.Close()
		return nil, err
	}
	return c.(*net.TCPConn), nil
}

func bulk(addr string, up, down, quit int64) error {
	flags := uint64(0)
	if quit < 0 {
		flags = flagQuit // the server quits
	}
	c, err := dial(addr, uint64(down), flags)
	if err != nil {
		return err
	}
	defer c.Close()
	type result struct {
		n        int64
		sum, ack []byte
		diff     string
		err      error
	}
	got := make(chan result, 1)
	go func() {
		h := &verifier{h: sha256.New()}
		var r result
		if quit > 0 {
			r.n, r.err = io.Copy(h, io.LimitReader(onlyReader{c}, quit))
			fmt.Printf("ok quitting after %d bytes\n", r.n)
			os.Exit(0)
		}
		r.n, r.err = io.Copy(h, io.LimitReader(onlyReader{c}, down))
		r.sum = h.h.Sum(nil)
		r.diff = h.report()
		if r.err == nil && r.n == down {
			r.ack = make([]byte, sha256.Size)
			_, r.err = io.ReadFull(c, r.ack)
		}
		got <- r
	}()
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(&pattern{}, up), h)
	if _, err := io.Copy(onlyWriter{c}, src); err != nil {
		c.Close()
		r := <-got
		return fmt.Errorf("send: %w (received %d of %d bytes, %s)", err, r.n, down, exactness(r.diff))
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	r := <-got
	if r.err != nil || r.n != down {
		return fmt.Errorf("received %d of %d bytes: %v (%s)", r.n, down, r.err, exactness(r.diff))
	}
	want := sha256.New()
	io.Copy(want, io.LimitReader(&pattern{}, down))
	if !bytes.Equal(r.sum, want.Sum(nil)) {
		return fmt.Errorf("received stream differs: sha256 %x, want %x: %s", r.sum, want.Sum(nil), r.diff)
	}
	if !bytes.Equal(r.ack, h.Sum(nil)) {
		return fmt.Errorf("server received a different stream: sha256 %x, sent %x", r.ack, h.Sum(nil))
	}
	fmt.Printf("ok up=%d down=%d sha256 up %x down %x\n", up, down, r.ack[:8], r.sum[:8])
	return nil
}

func msgs(addr string, n, size int) error {
	c, err := dial(addr, 0, flagEcho)
	if err != nil {
		return err
	}
	defer c.Close()
	msg, back := make([]byte, size), make([]byte, size)
	p := &pattern{}
	for i := 0; i < n; i++ {
		p.Read(msg)
		if _, err := c.Write(msg); err != nil {
			return fmt.Errorf("message %d: %w", i, err)
		}
		if _, err := io.ReadFull(c, back); err != nil {
			return fmt.Errorf("echo of message %d: %w", i, err)
		}
		if !bytes.Equal(msg, back) {
			return fmt.Errorf("echo of message %d differs", i)
		}
	}
	fmt.Printf("ok %d messages of %d bytes\n", n, size)
	return nil
}

func conns(addr string, n int) error {
	var slowest time.Duration
	for i := 0; i < n; i++ {
		start := time.Now()
		if err := exchange(addr); err != nil {
			return fmt.Errorf("connection %d: %w", i, err)
		}
		slowest = max(slowest, time.Since(start))
	}
	fmt.Printf("ok %d connections, slowest %s\n", n, slowest)
	return nil
}

// exchange is one connection: 64 bytes up, 64 down and the server's
// sha256 of what it got, the server closing first.
func exchange(addr string) error {
	c, err := dial(addr, 64, 0)
	if err != nil {
		return err
	}
	defer c.Close()
	h := sha256.New()
	up := make([]byte, 64)
	(&pattern{}).Read(up)
	h.Write(up)
	if _, err := c.Write(up); err != nil {
		return err
	}
	if err := c.CloseWrite(); err != nil {
		return err
	}
	back := make([]byte, 64+sha256.Size)
	if _, err := io.ReadFull(c, back); err != nil {
		return err
	}
	if !bytes.Equal(back[:64], up) || !bytes.Equal(back[64:], h.Sum(nil)) {
		return errors.New("exchange differs")
	}
	return nil
}

// peers is the "peers" command: what the app sees of N connections to addr
// (the peer address getpeername reports: Go reads it right after connect)
// and which server answered each.
func peers(addr string, n int) error {
	res := struct {
		Peers   map[string]int `json:"peers"`
		Bodies  map[string]int `json:"bodies"`
		Errors  int            `json:"errors"`
		LastErr string         `json:"lastErr,omitempty"`
	}{Peers: map[string]int{}, Bodies: map[string]int{}}
	for i := 0; i < n; i++ {
		peer, body, err := get(addr)
		if err != nil {
			res.Errors++
			res.LastErr = err.Error()
			continue
		}
		res.Peers[peer]++
		res.Bodies[body]++
	}
	b, err := json.Marshal(res)
	if err != nil {
		return err
	}
	fmt.Println(string(b))
	return nil
}

// get is one HTTP/1.0 GET on a connection of its own: the peer address the
// socket reports and the last line of the answer.
func get(addr string) (string, string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.0\r\n\r\n"); err != nil {
		return "", "", err
	}
	b, err := io.ReadAll(c)
	if err != nil {
		return "", "", err
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return c.RemoteAddr().String(), strings.TrimSpace(lines[len(lines)-1]), nil
}
