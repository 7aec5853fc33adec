// Command nodetest is the one program in the test images of a real node
// (integration/nodeworld), linked statically so an image needs nothing else:
//
//	nodetest pause          the pod sandbox's process: waits for a signal
//	nodetest serve [ADDR]   an HTTP server (default :8080):
//	    GET /                    "pod=NAME\n", NAME being the pod's hostname
//	    GET /fetch?url=U         GETs U from inside this pod and relays the
//	                             answer, or 502 with the error
//	    GET /load?url=U&for=D&conns=C
//	                             starts GETting U over C connections for D
//	                             (at most 120 s and 1,000,000 requests) and
//	                             answers 202 at once
//	    GET /load/result         202 while the load runs, then JSON
//	                             {"ok":N,"failed":M,"errors":[…]}
//
// The load runs in the background because the test's own request to a
// captured pod goes through weir's inbound path, which a DaemonSet update
// may drain: only the pod's outbound requests are under test.
//
// A client pod is a server pod too: the test asks it, from the node, to make
// requests from inside its own network namespace, so the pod's traffic is
// what weir captures, not the test's.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: nodetest pause|serve [ADDR]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "pause":
		pause()
	case "serve":
		addr := ":8080"
		if len(os.Args) > 2 {
			addr = os.Args[2]
		}
		if err := serve(addr); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
	default:
		fmt.Fprintf(os.Stderr, "nodetest: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// pause is PID 1 of a pod sandbox: it reaps orphans and exits on SIGTERM or
// SIGINT.
func pause() {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			return
		}
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}

const (
	maxLoadFor      = 120 * time.Second
	maxLoadRequests = 1_000_000
	requestTimeout  = 3 * time.Second
)

func serve(addr string) error {
	host, _ := os.Hostname()
	client := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{DisableKeepAlives: false, MaxIdleConnsPerHost: 64}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "pod=%s\n", host)
	})
	mux.HandleFunc("GET /fetch", func(w http.ResponseWriter, r *http.Request) {
		resp, err := client.Get(r.URL.Query().Get("url"))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.WriteHeader(resp.StatusCode)
		io.Copy(w, io.LimitReader(resp.Body, 1<<20))
	})
	mux.HandleFunc("GET /load", func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		d, err := time.ParseDuration(q.Get("for"))
		if err != nil || d <= 0 || d > maxLoadFor {
			http.Error(w, "for: a duration in (0, 120s]", http.StatusBadRequest)
			return
		}
		conns, err := strconv.Atoi(q.Get("conns"))
		if err != nil || conns < 1 || conns > 64 {
			http.Error(w, "conns: 1..64", http.StatusBadRequest)
			return
		}
		loads.Lock()
		defer loads.Unlock()
		if loads.running {
			http.Error(w, "a load is running", http.StatusConflict)
			return
		}
		loads.running, loads.result = true, nil
		url := q.Get("url")
		go func() {
			res := load(context.Background(), url, d, conns)
			loads.Lock()
			loads.running, loads.result = false, &res
			loads.Unlock()
		}()
		w.WriteHeader(http.StatusAccepted)
	})
	mux.HandleFunc("GET /load/result", func(w http.ResponseWriter, r *http.Request) {
		loads.Lock()
		defer loads.Unlock()
		if loads.running || loads.result == nil {
			w.WriteHeader(http.StatusAccepted)
			return
		}
		json.NewEncoder(w).Encode(loads.result)
	})
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// loads is the one background load a server runs at a time.
var loads struct {
	sync.Mutex
	running bool
	result  *loadResult
}

// loadResult counts a load run; errors keeps the first few messages.
type loadResult struct {
	OK     int64    `json:"ok"`
	Failed int64    `json:"failed"`
	Errors []string `json:"errors"`
}

// load GETs url over conns keep-alive connections until d has passed or
// maxLoadRequests were sent; any transport error or non-200 is a failure.
func load(ctx context.Context, url string, d time.Duration, conns int) loadResult {
	var res loadResult
	var mu sync.Mutex
	var sent atomic.Int64
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{MaxIdleConnsPerHost: 1}}
			defer c.CloseIdleConnections()
			for time.Now().Before(deadline) && ctx.Err() == nil && sent.Add(1) <= maxLoadRequests {
				err := get(c, url)
				mu.Lock()
				if err != nil {
					res.Failed++
					if len(res.Errors) < 10 {
						res.Errors = append(res.Errors, time.Now().UTC().Format("15:04:05.000")+" "+err.Error())
					}
				} else {
					res.OK++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

func get(c *http.Client, url string) error {
	resp, err := c.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d", resp.StatusCode)
	}
	return nil
}
