package agent

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weir-mesh/weir/redirect"
)

// adminHandler serves metrics, health and a dump of what the agent holds.
// It listens on the node (127.0.0.1 by default), never inside a pod, so it
// is never captured.
func (a *Agent) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n" + a.xdsReadyLine()))
	})
	mux.HandleFunc("GET /config_dump", func(w http.ResponseWriter, r *http.Request) {
		type podView struct {
			Namespace   string   `json:"namespace"`
			Name        string   `json:"name"`
			ContainerID string   `json:"containerID"`
			Netns       string   `json:"netns"`
			NetnsID     string   `json:"netnsID"`
			Captured    bool     `json:"captured"`
			Reason      string   `json:"reason,omitempty"`
			Listeners   []string `json:"listeners"`
			Redirect    any      `json:"redirect,omitempty"`
		}
		pods := []podView{}
		for _, p := range a.pods.list() {
			reason := a.reasonFor(r.Context(), p)
			a.mu.Lock()
			v := podView{Namespace: p.meta.Namespace, Name: p.meta.Name, ContainerID: p.att.ContainerID,
				Netns: p.netnsPath, NetnsID: p.nsID.String(), Captured: p.ns != nil, Reason: reason}
			if p.ns != nil {
				v.Redirect = toWire(p.spec)
			}
			for _, l := range p.listeners {
				v.Listeners = append(v.Listeners, string(l.Direction)+" "+l.TCP.Addr().String())
			}
			a.mu.Unlock()
			pods = append(pods, v)
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"config": a.cfg,
			"routes": a.routes.Load().Dump(),
			"pods":   pods,
			"xds":    a.xdsStatus(),
		})
	})
	mux.HandleFunc("GET /pods/{namespace}/{name}/rules", a.serveRules)
	return mux
}

// reasonFor is why the policy captures the pod or not, as it would decide
// now (for weirctl pods).
func (a *Agent) reasonFor(ctx context.Context, p *pod) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return a.decide(ctx, p.meta).reason
}

// serveRules shows what weir has installed in a pod's netns and whether it
// is exactly what the pod's capture needs (redirect.Verify), for weirctl
// rules.
func (a *Agent) serveRules(w http.ResponseWriter, r *http.Request) {
	ns, name := r.PathValue("namespace"), r.PathValue("name")
	type view struct {
		Namespace string   `json:"namespace"`
		Name      string   `json:"name"`
		Netns     string   `json:"netns"`
		Captured  bool     `json:"captured"`
		Mode      string   `json:"mode,omitempty"`
		Backend   string   `json:"backend,omitempty"`
		Reason    string   `json:"reason,omitempty"`
		Rules     []string `json:"rules"`
		Verified  bool     `json:"verified"`
		Problems  []string `json:"problems,omitempty"`
		Error     string   `json:"error,omitempty"`
	}
	for _, p := range a.pods.list() {
		if p.meta.Namespace != ns || p.meta.Name != name {
			continue
		}
		v := view{Namespace: ns, Name: name, Netns: p.netnsPath, Rules: []string{}, Reason: a.reasonFor(r.Context(), p)}
		a.mu.Lock()
		if p.ns == nil {
			a.mu.Unlock()
			writeJSON(w, http.StatusOK, v)
			return
		}
		v.Captured, v.Mode = true, string(p.spec.Mode)
		if p.spec.Mode != redirect.ModeEBPF {
			v.Backend = p.spec.Backend
		}
		rules, err := redirect.Rules(p.ns.FdPath(), p.spec)
		if rules != nil {
			v.Rules = rules
		}
		verr := redirect.Verify(p.ns.FdPath(), p.spec)
		a.mu.Unlock()
		var ve *redirect.VerifyError
		switch {
		case err != nil:
			v.Error = err.Error()
		case errors.As(verr, &ve):
			v.Problems = ve.Problems
		case verr != nil:
			v.Error = verr.Error()
		default:
			v.Verified = true
		}
		writeJSON(w, http.StatusOK, v)
		return
	}
	http.Error(w, "no pod "+ns+"/"+name+" on this node", http.StatusNotFound)
}
