package plugin

import (
	"bufio"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weir-mesh/weir/agent/api"
)

func TestReadResponse(t *testing.T) {
	for _, c := range []struct {
		name, in string
		status   int
		body     string
		bad      bool
	}{
		{name: "content-length", in: "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}trailing", status: 200, body: "{}"},
		{name: "to EOF", in: "HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n{\"error\":\"x\"}\n", status: 400, body: "{\"error\":\"x\"}\n"},
		{name: "bare LF", in: "HTTP/1.0 200 OK\nContent-Length: 0\n\n", status: 200, body: ""},
		{name: "no reason", in: "HTTP/1.0 204\r\n\r\n", status: 204, body: ""},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", bad: true},
		{name: "short body", in: "HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n{}", bad: true},
		{name: "two lengths", in: "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", bad: true},
		{name: "negative length", in: "HTTP/1.0 200 OK\r\nContent-Length: -1\r\n\r\n", bad: true},
		{name: "too long", in: "HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n" + strings.Repeat("x", 100), bad: true},
		{name: "too long to EOF", in: "HTTP/1.0 200 OK\r\n\r\n" + strings.Repeat("x", 65), bad: true},
		{name: "not HTTP", in: "SSH-2.0-OpenSSH\r\n\r\n", bad: true},
		{name: "bad code", in: "HTTP/1.0 2x0 OK\r\n\r\n", bad: true},
		{name: "header without colon", in: "HTTP/1.0 200 OK\r\nbroken\r\n\r\n", bad: true},
		{name: "cut in the head", in: "HTTP/1.0 200 OK\r\nContent-", bad: true},
		{name: "empty", in: "", bad: true},
		{name: "endless line", in: "HTTP/1.0 200 " + strings.Repeat("x", 2*maxHeaderLine), bad: true},
		{name: "endless header", in: "HTTP/1.0 200 OK\r\n" + strings.Repeat("X: y\r\n", maxHeaders+1) + "\r\n", bad: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			status, body, err := readResponse(bufio.NewReaderSize(strings.NewReader(c.in), 16), 64)
			if c.bad {
				if err == nil {
					t.Fatalf("accepted: %d %q", status, body)
				}
				return
			}
			if err != nil || status != c.status || string(body) != c.body {
				t.Fatalf("= %d %q %v, want %d %q", status, body, err, c.status, c.body)
			}
		})
	}
}

// FuzzReadResponse: whatever a peer on the socket sends, readResponse
// returns an error or a status and a body within the limit, never panics.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}"))
	f.Add([]byte("HTTP/1.1 400 Bad Request\r\n\r\n{\"error\":\"x\"}"))
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		status, body, err := readResponse(bufio.NewReaderSize(strings.NewReader(string(in)), 16), 64)
		if err != nil {
			return
		}
		if status < 100 || status > 999 || len(body) > 64 {
			t.Fatalf("accepted status %d with a body of %d bytes", status, len(body))
		}
	})
}

// TestCallNetHTTPServer: the client against net/http's server, as the
// agent runs it: an answer, a large one (which net/http would chunk to an
// HTTP/1.1 client), a refusal, and a socket nobody listens on.
func TestCallNetHTTPServer(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	large := strings.Repeat("r", 64<<10)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathAdd, func(w http.ResponseWriter, r *http.Request) {
		var req api.AddRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), 500)
			return
		}
		json.NewEncoder(w).Encode(api.AddResponse{Captured: true, Reason: req.Pod.Name})
	})
	mux.HandleFunc("POST "+api.PathDel, func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadRequest)
		json.NewEncoder(w).Encode(api.Error{Error: "refused: " + large[:10]})
	})
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.StatusResponse{Ready: true, Error: large})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c := &agentClient{socket: sock, timeout: 10 * time.Second}

	var add api.AddResponse
	if err := c.call(methodPost, api.PathAdd, api.AddRequest{Pod: api.Pod{Name: "p1"}}, &add); err != nil || !add.Captured || add.Reason != "p1" {
		t.Fatalf("add = %+v, %v", add, err)
	}
	var st api.StatusResponse
	if err := c.call(methodGet, api.PathStatus, nil, &st); err != nil || !st.Ready || st.Error != large {
		t.Fatalf("status: ready %v, %d bytes of error, %v", st.Ready, len(st.Error), err)
	}
	var ae *agentError
	if err := c.call(methodPost, api.PathDel, api.DelRequest{}, nil); !errors.As(err, &ae) || ae.status != 400 || ae.msg != "refused: rrrrrrrrrr" {
		t.Fatalf("del = %v, want the agent's refusal", err)
	}
	var ue *unreachableError
	gone := &agentClient{socket: filepath.Join(t.TempDir(), "none.sock"), timeout: time.Second}
	if err := gone.call(methodGet, api.PathStatus, nil, nil); !errors.As(err, &ue) {
		t.Fatalf("call to no agent = %v, want unreachable", err)
	}
}

// TestCallTimesOut: an agent that accepts and never answers, or answers
// half and stalls, fails the call at its timeout as unreachable (the
// runtime retries), instead of holding the runtime's ADD forever.
func TestCallTimesOut(t *testing.T) {
	for _, c := range []struct {
		name   string
		answer string // written, then the connection stalls
	}{
		{name: "silent"},
		{name: "half an answer", answer: "HTTP/1.0 200 OK\r\nContent-Length: 100\r\n\r\n{"},
	} {
		t.Run(c.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "agent.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			held := make(chan net.Conn, 1)
			go func() {
				conn, err := ln.Accept()
				if err != nil {
					return
				}
				conn.Write([]byte(c.answer))
				held <- conn // kept open, unanswered, until the test ends
			}()
			defer func() {
				select {
				case conn := <-held:
					conn.Close()
				default:
				}
			}()
			cl := &agentClient{socket: sock, timeout: 200 * time.Millisecond}
			start := time.Now()
			var ue *unreachableError
			err = cl.call(methodPost, api.PathAdd, api.AddRequest{}, nil)
			if !errors.As(err, &ue) || !errors.Is(err, errTimeout) {
				t.Fatalf("call to a stalled agent = %v, want unreachable with %v", err, errTimeout)
			}
			// A bound that only a hang breaks, not a timing claim.
			if took := time.Since(start); took > 30*time.Second {
				t.Fatalf("call returned after %v with a 200ms timeout", took)
			}
		})
	}
}
