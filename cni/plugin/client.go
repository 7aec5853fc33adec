package plugin

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/weir-mesh/weir/agent/api"
)

// agentClient calls the agent over its unix socket: one HTTP/1.0 request
// per connection, written in one piece, and the answer read to its end.
//
// Why not net/http: weir-cni is a process per CNI call, and the runtime
// waits for it. net/http's client costs its package initialisation at every
// start (it and crypto/tls are most of what the binary links) and hands each
// request between goroutines (a connection's reader and writer) that a busy
// node must schedule one by one. A request this plugin makes is one small
// JSON body to one server it knows; the answer is read to EOF.
type agentClient struct {
	socket  string
	timeout time.Duration
}

func newAgentClient(c *Conf) *agentClient {
	return &agentClient{socket: c.AgentSocket, timeout: c.timeout}
}

// unreachableError means the agent could not be reached at all, as opposed
// to an agent that answered with an error.
type unreachableError struct {
	socket string
	err    error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("weir-agent unreachable at %s: %v", e.socket, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// agentError is an error the agent answered with.
type agentError struct {
	status int
	msg    string
}

func (e *agentError) Error() string {
	return fmt.Sprintf("weir-agent refused (%d): %s", e.status, e.msg)
}

// maxAnswer bounds what the plugin reads of an answer.
const maxAnswer = 1 << 20

// Methods the plugin uses.
const (
	methodGet  = "GET"
	methodPost = "POST"
)

func (a *agentClient) call(method, path string, req, resp any) error {
	var body []byte
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		body = b
	}
	conn, err := dialAgent(a.socket, a.timeout)
	if err != nil {
		return &unreachableError{socket: a.socket, err: err}
	}
	defer conn.Close()
	var w bytes.Buffer
	fmt.Fprintf(&w, "%s %s HTTP/1.0\r\nHost: weir-agent\r\n", method, path)
	if body != nil {
		fmt.Fprintf(&w, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(body))
	}
	w.WriteString("\r\n")
	w.Write(body)
	if _, err := conn.Write(w.Bytes()); err != nil {
		return &unreachableError{socket: a.socket, err: err}
	}
	status, b, err := readResponse(bufio.NewReader(conn), maxAnswer)
	if err != nil {
		return &unreachableError{socket: a.socket, err: fmt.Errorf("read answer to %s: %w", path, err)}
	}
	if status != 200 {
		var e api.Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = string(bytes.TrimSpace(b))
		}
		return &agentError{status: status, msg: e.Error}
	}
	if resp != nil {
		if err := json.Unmarshal(b, resp); err != nil {
			return fmt.Errorf("decode agent answer to %s: %w", path, err)
		}
	}
	return nil
}

// Limits of readResponse on what precedes the body.
const (
	maxHeaderLine = 4096
	maxHeaders    = 64
)

var errBadResponse = errors.New("malformed HTTP response")

// readResponse reads an HTTP/1.x response: the status line, the header
// fields and a body that runs to Content-Length or, without one, to EOF,
// of at most limit bytes. A chunked body is refused: the plugin asks in
// HTTP/1.0, to which no server answers chunked.
func readResponse(r *bufio.Reader, limit int) (int, []byte, error) {
	line, err := readLine(r)
	if err != nil {
		return 0, nil, err
	}
	proto, rest, _ := strings.Cut(line, " ")
	code, _, _ := strings.Cut(rest, " ")
	if (proto != "HTTP/1.0" && proto != "HTTP/1.1") || len(code) != 3 {
		return 0, nil, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	status, err := strconv.Atoi(code)
	if err != nil || status < 100 {
		return 0, nil, fmt.Errorf("%w: status line %q", errBadResponse, line)
	}
	length := -1
	for i := 0; ; i++ {
		if i == maxHeaders {
			return 0, nil, fmt.Errorf("%w: more than %d header fields", errBadResponse, maxHeaders)
		}
		line, err := readLine(r)
		if err != nil {
			return 0, nil, err
		}
		if line == "" {
			break
		}
		name, value, ok := strings.Cut(line, ":")
		if !ok {
			return 0, nil, fmt.Errorf("%w: header line %q", errBadResponse, line)
		}
		value = strings.TrimSpace(value)
		switch {
		case strings.EqualFold(name, "Content-Length"):
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 || (length >= 0 && n != length) {
				return 0, nil, fmt.Errorf("%w: Content-Length %q", errBadResponse, value)
			}
			length = n
		case strings.EqualFold(name, "Transfer-Encoding") && !strings.EqualFold(value, "identity"):
			return 0, nil, fmt.Errorf("%w: Transfer-Encoding %q to an HTTP/1.0 request", errBadResponse, value)
		}
	}
	if length > limit {
		return 0, nil, fmt.Errorf("%w: body of %d bytes, more than %d", errBadResponse, length, limit)
	}
	if length >= 0 {
		body := make([]byte, length)
		if _, err := io.ReadFull(r, body); err != nil {
			return 0, nil, fmt.Errorf("read body: %w", err)
		}
		return status, body, nil
	}
	body, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return 0, nil, fmt.Errorf("read body: %w", err)
	}
	if len(body) > limit {
		return 0, nil, fmt.Errorf("%w: body longer than %d bytes", errBadResponse, limit)
	}
	return status, body, nil
}

// readLine reads one CRLF-terminated line (a bare LF is taken too) of at
// most maxHeaderLine bytes, without its end.
func readLine(r *bufio.Reader) (string, error) {
	var b []byte
	for {
		frag, err := r.ReadSlice('\n')
		b = append(b, frag...)
		if len(b) > maxHeaderLine {
			return "", fmt.Errorf("%w: line longer than %d bytes", errBadResponse, maxHeaderLine)
		}
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return "", fmt.Errorf("read header: %w", err)
		}
	}
	return strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r"), nil
}
