package plugin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/weir-mesh/weir/agent/api"
)

// agentClient calls the agent over its unix socket.
type agentClient struct {
	socket string
	http   *http.Client
}

func newAgentClient(c *Conf) *agentClient {
	return &agentClient{
		socket: c.AgentSocket,
		http: &http.Client{
			Timeout: c.timeout,
			Transport: &http.Transport{
				DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
					var d net.Dialer
					return d.DialContext(ctx, "unix", c.AgentSocket)
				},
				DisableKeepAlives: true,
			},
		},
	}
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

func (a *agentClient) call(method, path string, req, resp any) error {
	var body io.Reader
	if req != nil {
		b, err := json.Marshal(req)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	hreq, err := http.NewRequest(method, "http://weir-agent"+path, body)
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	hresp, err := a.http.Do(hreq)
	if err != nil {
		return &unreachableError{socket: a.socket, err: err}
	}
	defer hresp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(hresp.Body, 1<<20))
	if err != nil {
		return &unreachableError{socket: a.socket, err: err}
	}
	if hresp.StatusCode != http.StatusOK {
		var e api.Error
		if json.Unmarshal(b, &e) != nil || e.Error == "" {
			e.Error = string(bytes.TrimSpace(b))
		}
		return &agentError{status: hresp.StatusCode, msg: e.Error}
	}
	if resp != nil {
		if err := json.Unmarshal(b, resp); err != nil {
			return fmt.Errorf("decode agent answer to %s: %w", path, err)
		}
	}
	return nil
}
