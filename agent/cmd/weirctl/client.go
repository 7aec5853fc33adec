package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"
)

// hint is appended to every error about reaching the agent.
const hint = "(--admin / WEIR_ADMIN)"

// client talks to one agent's admin endpoint: a TCP host:port, or a unix
// socket given as unix:/path or /path.
type client struct {
	addr string
	base string
	http *http.Client
}

func newClient(addr string, timeout time.Duration) *client {
	c := &client{addr: addr, base: "http://" + addr}
	tr := &http.Transport{Proxy: nil, DisableKeepAlives: true}
	if path, ok := unixPath(addr); ok {
		c.base = "http://weir-agent"
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}
	}
	c.http = &http.Client{Transport: tr, Timeout: timeout}
	return c
}

func unixPath(addr string) (string, bool) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return p, true
	}
	return addr, strings.HasPrefix(addr, "/")
}

// notFoundError is the agent's 404 for a thing it does not have (a pod),
// as opposed to a path it does not serve.
type notFoundError struct{ msg string }

func (e *notFoundError) Error() string { return e.msg }

// get fetches path and returns the body of a 200 answer. Errors say what
// to do about them.
func (c *client) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.base+path, nil)
	if err != nil {
		return nil, fmt.Errorf("bad admin address %q: %v: want host:port or unix:/path %s", c.addr, err, hint)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, c.explain(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("read the answer of %s to %s: %v", c.addr, path, err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return body, nil
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		return nil, fmt.Errorf("%s refused %s (%s): permission denied; run weirctl on the node as root or in the weir-agent pod (kubectl exec -n weir-system ds/weir-agent -- weirctl ...)", c.addr, path, resp.Status)
	case resp.StatusCode == http.StatusNotFound && strings.HasPrefix(string(body), "no pod "):
		return nil, &notFoundError{strings.TrimSpace(string(body))}
	case resp.StatusCode == http.StatusNotFound:
		return nil, fmt.Errorf("%s does not serve %s: is it a weir-agent admin endpoint, and is the agent as new as weirctl? %s", c.addr, path, hint)
	}
	msg := strings.TrimSpace(string(body))
	if len(msg) > 200 {
		msg = msg[:200] + "…"
	}
	return nil, fmt.Errorf("%s answered %s to %s: %s", c.addr, resp.Status, path, msg)
}

// getJSON fetches path and decodes it into v.
func (c *client) getJSON(ctx context.Context, path string, v any) error {
	body, err := c.get(ctx, path)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s answered %s with something that is not a weir-agent's JSON (%v): wrong address? %s", c.addr, path, err, hint)
	}
	return nil
}

// explain turns a transport error into what the operator should do.
func (c *client) explain(err error) error {
	var dnsErr *net.DNSError
	var netErr net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, os.ErrNotExist) && isUnix(c.addr):
		return fmt.Errorf("no weir-agent answers at %s: is it running? %s", c.addr, hint)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("permission denied connecting to %s: run weirctl as root on the node or in the weir-agent pod (kubectl exec -n weir-system ds/weir-agent -- weirctl ...)", c.addr)
	case errors.As(err, &dnsErr):
		return fmt.Errorf("cannot resolve the admin address %s (%v): wrong address? %s", c.addr, dnsErr.Err, hint)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Errorf("nothing answered at %s within the timeout: wrong address, or the agent is stuck? %s", c.addr, hint)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EADDRNOTAVAIL):
		return fmt.Errorf("cannot reach %s: wrong address? %s", c.addr, hint)
	}
	if strings.Contains(err.Error(), "malformed HTTP") {
		return fmt.Errorf("%s does not speak HTTP: wrong address (the agent's CNI socket is not its admin endpoint)? %s", c.addr, hint)
	}
	return fmt.Errorf("cannot talk to the weir-agent at %s: %v: wrong address? %s", c.addr, err, hint)
}

func isUnix(addr string) bool {
	_, ok := unixPath(addr)
	return ok
}
