package h2

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"golang.org/x/net/http2"

	l7 "github.com/weir-mesh/weir/proxy/http"
	"github.com/weir-mesh/weir/proxy/route"
)

// FuzzServe feeds arbitrary bytes after the client preface into Serve,
// whose streams go to a real upstream: Serve must not panic, must return
// once the client hangs up, and must leave no goroutine behind. The seed
// corpus (testdata/fuzz/FuzzServe) holds well-formed requests (GET, POST
// with a body, gRPC, trailers, CONTINUATION) and control frames.
//
// After a connection error the HTTP/2 server lingers a second before it
// closes (so the client can read its GOAWAY), which would cap fuzzing at
// one input a second: an input's Serve that has not returned within a few
// milliseconds is left to finish in the background, and the checks run on
// every later input: no Serve may run longer than 10s, and whenever none
// runs, the goroutine count must come back to where it started.
func FuzzServe(f *testing.F) {
	web, _ := echoServer(f, "web")
	snap := mustBuild(f, route.Config{Services: []route.Service{{
		Name: "front", Addresses: []netip.AddrPort{svcAddr}, Endpoints: eps(web),
		HTTPRoutes: []route.HTTPRoute{{Rules: []route.HTTPRouteRule{
			{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/"}}}, Backends: []route.BackendRef{{Service: "front"}}},
			{Matches: []route.HTTPRouteMatch{{Path: &route.PathMatch{Value: "/old"}}}, Filters: []route.HTTPRouteFilter{
				{Type: route.FilterRequestRedirect, RequestRedirect: &route.Redirect{Hostname: "new.test"}},
			}},
		}}},
	}}})
	up := &l7.Upstream{Route: snap.Lookup(svcAddr), Dst: svcAddr, Dial: tcpDial, Log: slog.New(slog.DiscardHandler)}

	type running struct {
		done  chan struct{}
		pool  *Pool
		start time.Time
	}
	var pending []running
	baseline := -1
	// check reaps the Serves that returned and fails if one hangs or, when
	// none runs, if goroutines were left behind.
	check := func(t testing.TB, wait bool) {
		kept := pending[:0]
		for _, r := range pending {
			select {
			case <-r.done:
				r.pool.Close()
				continue
			default:
			}
			if wait || time.Since(r.start) > 10*time.Second || len(pending) > 100 {
				select {
				case <-r.done:
					r.pool.Close()
					continue
				case <-time.After(10*time.Second - time.Since(r.start)):
					buf := make([]byte, 1<<20)
					t.Fatalf("Serve did not return 10s after its client hung up:\n%s", buf[:runtime.Stack(buf, true)])
				}
			}
			kept = append(kept, r)
		}
		pending = kept
		if len(pending) > 0 {
			return
		}
		if baseline < 0 {
			baseline = runtime.NumGoroutine()
			return
		}
		deadline := time.Now().Add(5 * time.Second)
		for runtime.NumGoroutine() > baseline {
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				t.Fatalf("%d goroutines at the start, %d with no connection left:\n%s", baseline, runtime.NumGoroutine(), buf[:runtime.Stack(buf, true)])
			}
			time.Sleep(time.Millisecond)
		}
	}
	f.Cleanup(func() { check(f, true) })

	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		check(t, false)
		r := running{done: make(chan struct{}), pool: NewPool(withEngine(Options{})), start: time.Now()}
		client, server := net.Pipe()
		go func() {
			defer close(r.done)
			Serve(context.Background(), server, up, r.pool)
		}()
		go io.Copy(io.Discard, client)
		// The server stops reading after a connection error: write from
		// another goroutine, which the Close below releases.
		go func() {
			client.Write([]byte(http2.ClientPreface))
			client.Write(data)
		}()
		time.Sleep(5 * time.Millisecond) // let the streams reach the upstream
		client.Close()
		select {
		case <-r.done:
			r.pool.Close()
		case <-time.After(5 * time.Millisecond):
			pending = append(pending, r)
		}
	})
}
