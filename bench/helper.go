package bench

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

// helperArg, as the first argument, makes the bench binary (or the test
// binary of this package) act as one of the small programs the bench runs
// inside pods: the echo server, the ping-pong client and the plain Go relay.
// They run as their own processes, started with `ip netns exec`, so each has
// its own CPU accounting and its own network namespace.
const helperArg = "__weir-bench-helper"

// HelperMain runs a helper program when args (os.Args[1:]) ask for one and
// reports whether they did. Programs embedding the bench call it first:
//
//	if code, ok := bench.HelperMain(os.Args[1:]); ok { os.Exit(code) }
func HelperMain(args []string) (int, bool) {
	if len(args) < 2 || args[0] != helperArg {
		return 0, false
	}
	var err error
	switch args[1] {
	case "echo":
		err = echoMain(args[2:])
	case "pingpong":
		err = pingpongMain(args[2:], os.Stdout)
	case "relay":
		err = relayMain(args[2:])
	case "epoll-relay":
		err = epollRelayMain(args[2:])
	default:
		err = fmt.Errorf("unknown helper %q", args[1])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weir-bench %s: %v\n", args[1], err)
		return 1, true
	}
	return 0, true
}

// helperCommand is the program and arguments that start helper role.
func helperCommand(role string, args ...string) (string, []string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", nil, fmt.Errorf("find own executable for helper %s: %w", role, err)
	}
	return exe, append([]string{helperArg, role}, args...), nil
}

// echoMain serves TCP echo: every byte read is written back.
func echoMain(args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	listen := fs.String("listen", ":7000", "address to listen on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	return serveEcho(ln)
}

// serveEcho echoes on every connection ln accepts, until ln is closed.
func serveEcho(ln net.Listener) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			buf := make([]byte, 16<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					if _, werr := c.Write(buf[:n]); werr != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// pingpongResult is what the ping-pong client prints as JSON.
type pingpongResult struct {
	RoundTrips int64   `json:"roundTrips"`
	Seconds    float64 `json:"seconds"`
	P50us      float64 `json:"p50us"`
	P99us      float64 `json:"p99us"`
	Errors     int64   `json:"errors"`
	FirstError string  `json:"firstError,omitempty"`
}

// pingpongMain opens conns connections to addr; on each, it writes size
// bytes and waits for them to come back, again and again until duration has
// passed (bounded: every read and write has a deadline). It prints one
// pingpongResult as JSON.
func pingpongMain(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("pingpong", flag.ContinueOnError)
	addr := fs.String("addr", "", "echo server address")
	conns := fs.Int("conns", 16, "connections, each with one message in flight")
	size := fs.Int("size", 128, "message size in bytes")
	duration := fs.Duration("duration", 5*time.Second, "how long to run")
	newConn := fs.Bool("new", false, "a new connection for every round trip (dial, one message each way, close), timed from the dial")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *addr == "" || *conns < 1 || *size < 1 || *duration <= 0 || *duration > 10*time.Minute {
		return errors.New("need -addr, -conns ≥ 1, -size ≥ 1 and 0 < -duration ≤ 10m")
	}
	res := pingpong(*addr, *conns, *size, *duration, *newConn)
	return json.NewEncoder(out).Encode(res)
}

// roundTrip writes msg on c and reads len(back) bytes back, bounded by a
// deadline.
func roundTrip(c net.Conn, msg, back []byte) error {
	c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write(msg); err != nil {
		return err
	}
	_, err := io.ReadFull(c, back)
	return err
}

// connectRoundTrip dials addr, makes one round trip and closes.
func connectRoundTrip(addr string, msg, back []byte) error {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	return roundTrip(c, msg, back)
}

func pingpong(addr string, conns, size int, duration time.Duration, newConn bool) pingpongResult {
	var (
		mu       sync.Mutex
		all      []time.Duration
		res      pingpongResult
		wg       sync.WaitGroup
		start    = time.Now()
		deadline = start.Add(duration)
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		res.Errors++
		if res.FirstError == "" {
			res.FirstError = err.Error()
		}
	}
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msg := make([]byte, size)
			back := make([]byte, size)
			lat := make([]time.Duration, 0, 1<<16)
			if newConn {
				for time.Now().Before(deadline) {
					t0 := time.Now()
					if err := connectRoundTrip(addr, msg, back); err != nil {
						fail(err)
						time.Sleep(10 * time.Millisecond) // a refusing path is not a busy loop
						continue
					}
					lat = append(lat, time.Since(t0))
				}
			} else {
				c, err := net.DialTimeout("tcp", addr, 3*time.Second)
				if err != nil {
					fail(err)
					return
				}
				defer c.Close()
				for time.Now().Before(deadline) {
					t0 := time.Now()
					if err := roundTrip(c, msg, back); err != nil {
						fail(err)
						break
					}
					lat = append(lat, time.Since(t0))
				}
			}
			mu.Lock()
			all = append(all, lat...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Seconds = time.Since(start).Seconds()
	res.RoundTrips = int64(len(all))
	if len(all) > 0 {
		slices.Sort(all)
		res.P50us = float64(percentile(all, 0.50)) / float64(time.Microsecond)
		res.P99us = float64(percentile(all, 0.99)) / float64(time.Microsecond)
	}
	return res
}

// percentile of sorted values, nearest rank.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(q*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}

// relayMain is the plain Go relay peer: for each -pair LISTEN=UPSTREAM it
// accepts, connects upstream and copies both ways with io.Copy between
// *net.TCPConn, which the runtime turns into splice(2).
func relayMain(args []string) error {
	fs := flag.NewFlagSet("relay", flag.ContinueOnError)
	copyMode := fs.String("copy", "splice", "splice (io.Copy between TCPConns), buffer (read/write) or adaptive")
	var pairs []string
	fs.Func("pair", "LISTEN=UPSTREAM (repeatable)", func(s string) error {
		if !strings.Contains(s, "=") {
			return fmt.Errorf("want LISTEN=UPSTREAM, got %q", s)
		}
		pairs = append(pairs, s)
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(pairs) == 0 {
		return errors.New("need at least one -pair")
	}
	copyHalf, ok := copiers[*copyMode]
	if !ok {
		return fmt.Errorf("-copy: want splice, buffer or adaptive, got %q", *copyMode)
	}
	errc := make(chan error, len(pairs))
	for _, p := range pairs {
		listen, upstream, _ := strings.Cut(p, "=")
		ln, err := net.Listen("tcp", listen)
		if err != nil {
			return err
		}
		go func() { errc <- serveRelay(ln.(*net.TCPListener), upstream, copyHalf) }()
	}
	return <-errc
}

// copiers copy one direction of a relayed connection until EOF or error.
var copiers = map[string]func(dst, src *net.TCPConn){
	// splice: io.Copy sees two *net.TCPConn and the runtime splices
	// through a pipe, never copying into user space.
	"splice": func(dst, src *net.TCPConn) { io.Copy(dst, src) },
	// buffer: plain read/write through a user-space buffer.
	"buffer": func(dst, src *net.TCPConn) { copyBuffered(dst, src, make([]byte, 32<<10), -1) },
	// adaptive: read/write while messages are small, splice once a
	// direction carries bulk (two reads in a row fill the buffer).
	"adaptive": func(dst, src *net.TCPConn) {
		if copyBuffered(dst, src, make([]byte, 32<<10), 2) {
			io.Copy(dst, src)
		}
	},
}

// copyBuffered copies src to dst through buf. With switchAfter > 0 it
// stops early, returning true, once that many reads in a row filled buf.
func copyBuffered(dst, src *net.TCPConn, buf []byte, switchAfter int) bool {
	full := 0
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return false
			}
		}
		if err != nil {
			return false
		}
		if n == len(buf) {
			full++
			if switchAfter > 0 && full >= switchAfter {
				return true
			}
		} else {
			full = 0
		}
	}
}

func serveRelay(ln *net.TCPListener, upstream string, copyHalf func(dst, src *net.TCPConn)) error {
	for {
		c, err := ln.AcceptTCP()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			u, err := net.DialTimeout("tcp", upstream, 5*time.Second)
			if err != nil {
				return
			}
			up := u.(*net.TCPConn)
			defer up.Close()
			done := make(chan struct{})
			go func() {
				copyHalf(c, up)
				c.CloseWrite()
				close(done)
			}()
			copyHalf(up, c)
			up.CloseWrite()
			<-done
		}()
	}
}
