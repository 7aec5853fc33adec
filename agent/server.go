package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/redirect"
)

// cniHandler serves weir-cni's calls (see package api for the protocol).
func (a *Agent) cniHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathAdd, handle(a, "add", a.addTimed))
	mux.HandleFunc("POST "+api.PathCheck, handle(a, "check", a.check))
	mux.HandleFunc("POST "+api.PathDel, handle(a, "del", a.del))
	mux.HandleFunc("POST "+api.PathGC, handle(a, "gc", a.gc))
	mux.HandleFunc("POST "+api.PathHandover, a.handleHandover)
	mux.HandleFunc("GET "+api.PathStandbyWatch, a.handleStandbyWatch)
	mux.HandleFunc("GET "+api.PathStatus, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, api.StatusResponse{Ready: a.ready.Load(), Pods: a.pods.len()})
	})
	return mux
}

// badRequest marks errors the caller caused (400) rather than the agent (500).
type badRequest struct{ error }

type versioned interface{ version() string }

// handle decodes a request, checks its protocol version, calls f and writes
// the answer or an api.Error.
func handle[Req versioned, Resp any](a *Agent, verb string, f func(Req) (Resp, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			a.cniRequests.WithLabelValues(verb, "bad_request").Inc()
			writeJSON(w, http.StatusBadRequest, api.Error{Error: "decode " + verb + " request: " + err.Error()})
			return
		}
		if q, ok := any(&req).(interface{ fromQuery(rawQuery string) }); ok {
			q.fromQuery(r.URL.RawQuery)
		}
		if v := req.version(); v != api.Version {
			a.cniRequests.WithLabelValues(verb, "bad_request").Inc()
			writeJSON(w, http.StatusBadRequest, api.Error{Error: fmt.Sprintf("protocol version %q, agent speaks %q: upgrade weir-cni and weir-agent together", v, api.Version)})
			return
		}
		resp, err := f(req)
		if err != nil {
			code := http.StatusInternalServerError
			var br badRequest
			if errors.As(err, &br) {
				code = http.StatusBadRequest
			}
			a.cniRequests.WithLabelValues(verb, "error").Inc()
			a.log.Warn("cni request failed", "verb", verb, "err", err)
			writeJSON(w, code, api.Error{Error: err.Error()})
			return
		}
		a.cniRequests.WithLabelValues(verb, "ok").Inc()
		writeJSON(w, http.StatusOK, resp)
		if r, ok := any(resp).(interface{ release() }); ok {
			r.release()
		}
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

type addReq struct {
	api.AddRequest
	// apply: the plugin asked the agent to program the redirect too
	// (api.QueryApply).
	apply bool
}

func (r addReq) version() string { return r.Version }

func (r *addReq) fromQuery(rawQuery string) { r.apply = rawQuery == api.QueryApply }

type checkReq struct{ api.CheckRequest }

func (r checkReq) version() string { return r.Version }

type delReq struct{ api.DelRequest }

func (r delReq) version() string { return r.Version }

type gcReq struct{ api.GCRequest }

func (r gcReq) version() string { return r.Version }

// add decides on a pod and, when it is captured, opens its listeners before
// any rule can point at them; asked to (r.apply), it then programs the
// rules too, all or nothing. Repeating an ADD for the same attachment,
// namespace and spec is answered from what is already open (and the rules
// programmed again, when asked: Apply is idempotent). Uncaptured pods are
// remembered too, so that enabling their namespace later onboards them.
//
// Why the agent programs the rules when weir-cni asks: it already holds a
// handle on the pod's namespace and the netlink code is warm in it, while
// weir-cni, a process per ADD, would pay for linking and starting that code
// at every pod (docs/design.md, "Who programs the rules").
func (a *Agent) add(r addReq, tm *phaseTimer) (api.AddResponse, error) {
	if r.Attachment.ContainerID == "" {
		return api.AddResponse{}, badRequest{errors.New("attachment.containerID is empty")}
	}
	if r.Netns == "" {
		return api.AddResponse{}, badRequest{errors.New("netns is empty")}
	}
	if _, _, err := families(r.IPs); err != nil {
		return api.AddResponse{}, badRequest{err}
	}
	tm.begin(a.addPhases)
	// The guard first, whatever the policy would say: a node's namespace
	// is refused even for a pod that would not be captured.
	id, err := a.vetNetns(r.Netns)
	if err != nil {
		return api.AddResponse{}, badRequest{err}
	}
	tm.mark(phaseVet)
	name := r.Pod.Namespace + "/" + r.Pod.Name
	d := a.decide(a.baseCtx, r.Pod)
	if d.err != nil {
		return api.AddResponse{}, fmt.Errorf("cannot decide capture for %s: %w", name, d.err)
	}
	next := &pod{att: r.Attachment, meta: r.Pod, netnsPath: r.Netns, nsID: id, cniIPs: r.IPs, ips: podAddrs(r.IPs), nodeMode: redirect.Mode(r.Mode)}
	tm.mark(phaseDecide)

	a.mu.Lock()
	defer a.mu.Unlock()
	tm.mark(phaseLock)
	if err := a.notShared(r.Netns, id, r.Attachment, r.Pod); err != nil {
		return api.AddResponse{}, badRequest{err}
	}
	a.dropStandIns(id, r.Attachment, r.Pod)
	tm.mark(phaseShared)
	old := a.pods.get(r.Attachment)
	if !d.captured {
		if old != nil {
			a.uncapture(old)
		}
		a.pods.swap(next)
		a.afterChange(r.Attachment)
		a.log.Info("pod not captured", "pod", name, "why", d.reason)
		a.recordCapture(next, false, d.reason)
		return api.AddResponse{Captured: false, Reason: d.reason}, nil
	}
	spec, err := a.specFor(next, d)
	if err != nil {
		return api.AddResponse{}, badRequest{err}
	}
	if old != nil && old.ns != nil && old.nsID == id && equalSpec(old.spec, spec) {
		resp := api.AddResponse{Captured: true, Reason: d.reason, Redirect: toWire(old.spec)}
		if r.apply {
			if err := redirect.Apply(old.ns.FdPath(), old.spec, redirect.WithTrace(tm.trace)); err != nil {
				// The pod keeps its listeners: it was captured before
				// this repeated ADD, and a failed Apply changed nothing.
				resp.ApplyError = fmt.Sprintf("program capture in pod netns %s: %v", r.Netns, err)
				return resp, nil
			}
			resp.Applied = true
		}
		return resp, nil
	}
	if old != nil {
		a.uncapture(old)
	}
	if err := a.capture(next, spec, tm); err != nil {
		a.pods.remove(r.Attachment)
		a.afterChange(r.Attachment)
		return api.AddResponse{}, err
	}
	if r.apply {
		err := redirect.Apply(next.ns.FdPath(), spec, redirect.WithTrace(tm.trace))
		tm.mark(phaseApply)
		if err != nil {
			// Apply left nothing; neither do the listeners.
			a.uncapture(next)
			a.pods.remove(r.Attachment)
			a.afterChange(r.Attachment)
			a.log.Warn("cannot program capture; pod released", "pod", name, "container", r.Attachment.ContainerID, "netns", r.Netns, "err", err)
			return api.AddResponse{Captured: true, Reason: d.reason, Redirect: toWire(spec),
				ApplyError: fmt.Sprintf("program capture in pod netns %s: %v", r.Netns, err)}, nil
		}
	}
	a.pods.swap(next)
	a.afterChange(r.Attachment)
	tm.mark(phaseState)
	a.log.Info("pod captured", "pod", name, "container", r.Attachment.ContainerID, "netns", r.Netns, "mode", spec.Mode, "ipv4", spec.IPv4, "ipv6", spec.IPv6, "rulesByAgent", r.apply)
	a.recordCapture(next, true, d.reason)
	tm.done()
	return api.AddResponse{Captured: true, Reason: d.reason, Redirect: toWire(spec), Applied: r.apply}, nil
}

// addResp is api.AddResponse as the agent writes it: Timings, on the wire
// the same object, is written from the phase timer's list without a map
// (its field shadows the embedded one for encoding/json).
type addResp struct {
	api.AddResponse
	Timings *phaseTimes `json:"timings,omitempty"`
	tm      *phaseTimer
}

// release gives the phase timer back once the answer is written.
func (r addResp) release() {
	if r.tm != nil {
		releaseTimer(r.tm)
	}
}

// addTimed is add with its phase timer, whose phases the answer carries
// when add finished a capture.
func (a *Agent) addTimed(r addReq) (addResp, error) {
	tm := getTimer()
	resp, err := a.add(r, tm)
	out := addResp{AddResponse: resp, tm: tm}
	if err == nil && tm.reported {
		out.Timings = &tm.phases
	}
	return out, err
}

// check answers what the plugin must verify. The namespace guard runs first,
// as for ADD: the plugin looks into the namespace after this answer, and a
// node's namespace must not be looked into.
func (a *Agent) check(r checkReq) (api.CheckResponse, error) {
	if _, err := a.vetNetns(r.Netns); err != nil {
		return api.CheckResponse{}, badRequest{err}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods.get(r.Attachment)
	if p == nil || p.ns == nil {
		d := a.decide(a.baseCtx, r.Pod)
		return api.CheckResponse{Captured: d.captured, Listening: false}, nil
	}
	return api.CheckResponse{Captured: true, Listening: len(p.listeners) > 0, Redirect: toWire(p.spec)}, nil
}

// del forgets an attachment and takes its rules out of the namespace the
// agent holds for it, before closing its listeners, so the plugin need not
// enter the namespace (RulesRemoved). The agent does it because it lives
// on: deleting a pod's nftables table leaves the kernel work that any
// process releasing an nftables socket waits for (about 10 ms), and the
// agent releases its sockets in the background where a plugin's exit would
// wait (redirect.WithBackgroundRelease).
//
// When the agent holds no namespace for the attachment (a pod it did not
// capture, or never saw), or the DEL names another namespace than the one
// it holds, it judges the named one with the same guard as ADD and, if it
// may, removes whatever weir left there itself, after releasing its lock:
// then weir-cni, which links no rule code on its hot path, never has to
// start its rules helper for a DEL while the agent is up. A namespace the
// guard refuses (the node's, no network namespace, another pod's) is never
// looked into, and the answer says so (Refused).
func (a *Agent) del(r delReq) (api.DelResponse, error) {
	resp, removeNamed := a.delLocked(r)
	if !removeNamed {
		return resp, nil
	}
	if err := redirect.Remove(r.Netns, redirect.WithPinPath(a.cfg.pinPath()), redirect.WithBackgroundRelease()); err != nil {
		if notExist(err) {
			resp.RulesRemoved = true // the namespace is gone, and its rules with it
			return resp, nil
		}
		a.log.Warn("remove rules from the namespace a DEL names", "container", r.Attachment.ContainerID, "netns", r.Netns, "err", err)
		return resp, nil // the plugin tries
	}
	resp.RulesRemoved = true
	return resp, nil
}

// delLocked is del's part under the agent's lock. removeNamed asks the
// caller to remove weir's rules from the namespace r names, which the guard
// let through.
func (a *Agent) delLocked(r delReq) (resp api.DelResponse, removeNamed bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods.get(r.Attachment)
	held, sameNetns := p != nil && p.ns != nil, false
	if held {
		id, err := a.vetNetns(r.Netns)
		switch {
		case err == nil:
			sameNetns = id == p.nsID
		case r.Netns == "" || notExist(err):
			sameNetns = true // nothing left to look into but ours
		default:
			a.log.Warn("DEL names a namespace weir never captures; releasing the pod from the namespace it was added in", "container", r.Attachment.ContainerID, "err", err)
		}
		if err := redirect.Remove(p.ns.FdPath(), redirect.WithPinPath(a.cfg.pinPath()), redirect.WithBackgroundRelease()); err != nil {
			a.log.Warn("remove rules", "container", r.Attachment.ContainerID, "err", err)
			sameNetns = false // let the plugin try
		}
	}
	if p != nil {
		a.release(p, "cni del")
		a.deleted.add(p.nsID, p.meta.UID, time.Now())
		resp.Known = true
	}
	if held && sameNetns {
		resp.RulesRemoved = true
		return resp, false
	}
	if r.Netns == "" {
		return resp, false
	}
	id, err := a.vetNetns(r.Netns)
	switch {
	case err != nil && notExist(err):
		resp.RulesRemoved = true // gone: nothing of weir can be left there
		return resp, false
	case err != nil:
		// The node's namespace, or no network namespace: refused. One that
		// cannot be opened for another reason is the plugin's to try.
		var nr *netnsRefusal
		if errors.As(err, &nr) && (nr.err == nil || isNotNetns(nr.err)) {
			resp.Refused = nr.Error()
		}
		return resp, false
	}
	// p (if any) is released: only other attachments can claim the
	// namespace now.
	if err := a.notShared(r.Netns, id, r.Attachment, r.Pod); err != nil {
		a.log.Warn("DEL names another pod's namespace; leaving it alone", "container", r.Attachment.ContainerID, "err", err)
		resp.Refused = err.Error()
		return resp, false
	}
	return resp, true
}

func isNotNetns(err error) bool {
	var ne *netns.NotNetnsError
	return errors.As(err, &ne)
}

func (a *Agent) gc(r gcReq) (api.GCResponse, error) {
	valid := make(map[api.Attachment]bool, len(r.Valid))
	for _, v := range r.Valid {
		valid[v] = true
	}
	n := 0
	for _, p := range a.pods.list() {
		if valid[p.att] {
			continue
		}
		// The runtime no longer knows this attachment: take the rules out
		// too, since no DEL will come to do it.
		if a.forget(p.att, "cni gc", true) {
			n++
		}
	}
	return api.GCResponse{Released: n}, nil
}

func toWire(s redirect.Spec) *api.Redirect {
	return &api.Redirect{
		Mode:                 string(s.Mode),
		OutboundPort:         s.OutboundPort,
		InboundPort:          s.InboundPort,
		Mark:                 s.Mark,
		Mask:                 s.Mask,
		IPv4:                 s.IPv4,
		IPv6:                 s.IPv6,
		ExcludeInboundPorts:  s.ExcludeInboundPorts,
		IncludeInboundPorts:  s.IncludeInboundPorts,
		ExcludeOutboundPorts: s.ExcludeOutboundPorts,
		ExcludeOutboundCIDRs: s.ExcludeOutboundCIDRs,
		Backend:              s.Backend,
		TPROXYMark:           s.TPROXYMark,
		TPROXYMask:           s.TPROXYMask,
		RouteTable:           s.RouteTable,
		RulePriority:         s.RulePriority,
		PinPath:              s.PinPath,
	}
}
