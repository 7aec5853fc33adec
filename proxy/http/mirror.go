package http

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"time"

	"github.com/weir-mesh/weir/proxy/route"
)

// Limits of request mirroring (the RequestMirror filter), agent-wide.
const (
	// MirrorInFlight caps the copies under way at once: past it a copy is
	// skipped and counted (mirror_skipped), so a slow or dead mirror
	// backend can pile up neither goroutines nor buffered bodies.
	MirrorInFlight = 512
	// MirrorTimeout bounds one copy, from its connect to its answer's
	// head.
	MirrorTimeout = 10 * time.Second
)

var mirrorSlots = make(chan struct{}, MirrorInFlight)

// MirrorSend writes one copy of a request on c and reads the head of its
// answer, returning the answer's status. The codec that saw the request
// builds it over its own copy of the request's bytes: it runs on another
// goroutine after the request itself has moved on.
type MirrorSend func(c net.Conn) (status int, err error)

// Mirror sends a copy of one request of rule a to each of the rule's
// mirrors that samples it, fire and forget: each copy goes on a goroutine
// of its own over a new connection from the client pod's namespace to an
// endpoint of the mirror's cluster (balanced, ejected and counted as any
// cluster's), and its answer is dropped. Nothing of it reaches the
// request itself, which must not wait for it. build makes the sender, at
// most once and only if a mirror samples the request.
func (u *Upstream) Mirror(a *route.Action, build func() MirrorSend) {
	var send MirrorSend
	for _, m := range a.Mirrors {
		if !m.Sampled() {
			continue
		}
		select {
		case mirrorSlots <- struct{}{}:
		default:
			u.Metrics.policy(u.Route.Service, a, policyMirrorSkipped)
			continue
		}
		if send == nil {
			send = build()
		}
		u.Metrics.policy(u.Route.Service, a, policyMirror)
		go u.mirrorOne(a, m, send)
	}
}

// MirrorSkipped counts a copy of rule a's request not sent because the
// codec did not hold the request whole (a body larger than its buffer).
func (u *Upstream) MirrorSkipped(a *route.Action) {
	for _, m := range a.Mirrors {
		if m.Sampled() {
			u.Metrics.policy(u.Route.Service, a, policyMirrorSkipped)
		}
	}
}

func (u *Upstream) mirrorOne(a *route.Action, m *route.Mirror, send MirrorSend) {
	defer func() { <-mirrorSlots }()
	ctx, cancel := context.WithTimeout(context.Background(), MirrorTimeout)
	defer cancel()
	failed := func(err error) {
		u.Metrics.policy(u.Route.Service, a, policyMirrorFailed)
		u.Log.Debug("mirror copy failed", "service", u.Route.Service, "mirror", m.Service, "err", err)
	}
	l, err := m.Cluster.Pick(u.Key, nil)
	if err != nil {
		failed(err)
		return
	}
	c, err := l.Dial(ctx, u.Dial)
	if err != nil {
		l.Release() // the failed connect is on the endpoint already
		failed(err)
		return
	}
	c.SetDeadline(time.Now().Add(MirrorTimeout))
	status, err := send(c)
	c.Close()
	l.Done(Verdict(status, -1, err))
	if err != nil || status >= 500 {
		if err == nil {
			err = ErrStatus5xx
		}
		failed(err)
	}
}

// MirrorHTTP1 sends raw, a whole HTTP/1.1 request as it went upstream
// (head and body), and reads the answer's head.
func MirrorHTTP1(raw []byte) MirrorSend {
	return func(c net.Conn) (int, error) {
		if _, err := c.Write(raw); err != nil {
			return 0, err
		}
		res, err := http.ReadResponse(bufio.NewReaderSize(c, 4096), nil)
		if err != nil {
			return 0, err
		}
		return res.StatusCode, nil
	}
}
