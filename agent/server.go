package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/redirect"
)

// cniHandler serves weir-cni's calls (see package api for the protocol).
func (a *Agent) cniHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.PathAdd, handle(a, "add", a.add))
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
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

type addReq struct{ api.AddRequest }

func (r addReq) version() string { return r.Version }

type checkReq struct{ api.CheckRequest }

func (r checkReq) version() string { return r.Version }

type delReq struct{ api.DelRequest }

func (r delReq) version() string { return r.Version }

type gcReq struct{ api.GCRequest }

func (r gcReq) version() string { return r.Version }

// add decides on a pod and, when it is captured, opens its listeners before
// any rule can point at them. Repeating an ADD for the same attachment,
// namespace and spec is answered from what is already open. Uncaptured pods
// are remembered too, so that enabling their namespace later onboards them.
func (a *Agent) add(r addReq) (api.AddResponse, error) {
	if r.Attachment.ContainerID == "" {
		return api.AddResponse{}, badRequest{errors.New("attachment.containerID is empty")}
	}
	if r.Netns == "" {
		return api.AddResponse{}, badRequest{errors.New("netns is empty")}
	}
	if _, _, err := families(r.IPs); err != nil {
		return api.AddResponse{}, badRequest{err}
	}
	tm := newPhaseTimer(a.addPhases)
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
		return api.AddResponse{Captured: true, Reason: d.reason, Redirect: toWire(old.spec)}, nil
	}
	if old != nil {
		a.uncapture(old)
	}
	if err := a.capture(next, spec, tm); err != nil {
		a.pods.remove(r.Attachment)
		a.afterChange(r.Attachment)
		return api.AddResponse{}, err
	}
	a.pods.swap(next)
	a.afterChange(r.Attachment)
	tm.mark(phaseState)
	a.log.Info("pod captured", "pod", name, "container", r.Attachment.ContainerID, "netns", r.Netns, "mode", spec.Mode, "ipv4", spec.IPv4, "ipv6", spec.IPv6)
	a.recordCapture(next, true, d.reason)
	return api.AddResponse{Captured: true, Reason: d.reason, Redirect: toWire(spec), Timings: tm.done()}, nil
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
// wait (redirect.WithBackgroundRelease). When the DEL names a namespace
// that is not the one the agent holds (refused: the node's or no network
// namespace; or another one), the agent still releases the pod from its
// own and never looks into the named one; RulesRemoved is then false
// unless the named one is gone, and the plugin judges it (cni/plugin's
// netns.go).
func (a *Agent) del(r delReq) (api.DelResponse, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p := a.pods.get(r.Attachment)
	if p == nil {
		// Unknown here: the plugin removes what it finds, unless the
		// namespace is another attachment's (the guard's "reused under
		// another container id", which ADD refuses too).
		if id, err := a.vetNetns(r.Netns); err == nil {
			if err := a.notShared(r.Netns, id, r.Attachment, r.Pod); err != nil {
				a.log.Warn("DEL for an unknown container names another pod's namespace; leaving it alone", "container", r.Attachment.ContainerID, "err", err)
				return api.DelResponse{Refused: err.Error()}, nil
			}
		}
		return api.DelResponse{}, nil
	}
	sameNetns, held := false, p.ns != nil
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
	a.release(p, "cni del")
	a.deleted.add(p.nsID, p.meta.UID, time.Now())
	return api.DelResponse{Known: true, RulesRemoved: held && sameNetns}, nil
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
