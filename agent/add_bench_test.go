package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// BenchmarkAddHandler measures the agent's side of a CNI ADD as weir-cni
// asks for it (api.QueryApply): the request decoded, the namespace guard,
// the listeners opened in a fresh pod netns, the nftables rules programmed
// there, the state file written, the answer encoded. With -benchmem it
// shows what an ADD leaves for the agent's GC to collect, which a busy
// node pays during later ADDs:
//
//	go test -run - -bench AddHandler -benchmem ./agent/
//
// Creating each pod netns and the DEL after each ADD are not timed.
func BenchmarkAddHandler(b *testing.B) {
	a := benchAgent(b)
	h := a.cniHandler()
	benchAddLoop(b, func(path string, req any, timed bool) (int, []byte) {
		body, err := json.Marshal(req)
		if err != nil {
			b.Fatal(err)
		}
		r := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		rec := httptest.NewRecorder()
		if timed {
			b.StartTimer() // the handler alone
		}
		h.ServeHTTP(rec, r)
		if timed {
			b.StopTimer()
		}
		return rec.Code, rec.Body.Bytes()
	})
}

// BenchmarkAddOverSocket is BenchmarkAddHandler through the agent's real
// transport: an http.Server on a unix socket, and a new connection per
// request as weir-cni (a process per CNI call) makes. The client's side is
// timed too; with -memprofile, -focus 'net/http.\(\*conn\)' shows the
// server's share, which a profile of BenchmarkAddHandler does not have.
func BenchmarkAddOverSocket(b *testing.B) {
	a := benchAgent(b)
	sock := filepath.Join(b.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: a.cniHandler(), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	post := func(path string, req any) (int, []byte) {
		body, err := json.Marshal(req)
		if err != nil {
			b.Fatal(err)
		}
		resp, err := client.Post("http://agent"+path, "application/json", bytes.NewReader(body))
		if err != nil {
			b.Fatal(err)
		}
		defer resp.Body.Close()
		out, err := io.ReadAll(resp.Body)
		if err != nil {
			b.Fatal(err)
		}
		return resp.StatusCode, out
	}
	benchAddLoop(b, func(path string, req any, timed bool) (int, []byte) {
		if timed {
			b.StartTimer() // the client's side too
			defer b.StopTimer()
		}
		return post(path, req)
	})
}

// benchAddLoop runs one ADD (with api.QueryApply) per iteration through
// post, each in a fresh pod netns, then its DEL. post times what it should
// of a call with timed set (the ADD); the netns, the DEL and the netns's
// removal are not timed.
func benchAddLoop(b *testing.B, post func(path string, req any, timed bool) (int, []byte)) {
	i := 0
	for b.Loop() {
		b.StopTimer()
		n, err := testutils.NewNS()
		if err != nil {
			b.Fatal(err)
		}
		att := api.Attachment{ContainerID: fmt.Sprintf("bench-%d", i), IfName: "eth0"}
		add := api.AddRequest{Version: api.Version, Attachment: att, Netns: n.Path(),
			Pod: api.Pod{Namespace: "demo", Name: fmt.Sprintf("p%d", i)}, IPs: []string{"10.9.0.2/24"}}
		i++
		code, body := post(api.PathAdd+"?"+api.QueryApply, add, true)
		var resp api.AddResponse
		if code != http.StatusOK || json.Unmarshal(body, &resp) != nil || !resp.Applied {
			b.Fatalf("ADD answered %d: %s", code, body)
		}
		if code, body := post(api.PathDel, api.DelRequest{Version: api.Version, Attachment: att, Netns: n.Path()}, false); code != http.StatusOK {
			b.Fatalf("DEL answered %d: %s", code, body)
		}
		closeNS(b, n)
		b.StartTimer()
	}
}

func closeNS(b *testing.B, n ns.NetNS) {
	b.Helper()
	n.Close()
	if err := testutils.UnmountNS(n); err != nil {
		b.Fatal(err)
	}
}

// benchAgent is an agent that captures namespace demo with nftables and owns
// its state, as the ADD benchmarks need.
func benchAgent(b *testing.B) *Agent {
	b.Helper()
	testworld.RequireRoot(b)
	perr := redirect.ProbeNFTables()
	testworld.Require(b, perr == nil, fmt.Sprintf("a kernel that takes weir's nftables rules: %v", perr))
	cfg := DefaultConfig()
	cfg.StateDir = b.TempDir()
	cfg.Capture.Namespaces = []string{"demo"}
	cfg.Capture.Backend = redirect.BackendNFTables
	a, err := New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	a.ownsState.Store(true)
	return a
}
