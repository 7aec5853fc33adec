package agent

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
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
			Listeners   []string `json:"listeners"`
			Redirect    any      `json:"redirect,omitempty"`
		}
		pods := []podView{}
		for _, p := range a.pods.list() {
			a.mu.Lock()
			v := podView{Namespace: p.meta.Namespace, Name: p.meta.Name, ContainerID: p.att.ContainerID,
				Netns: p.netnsPath, NetnsID: p.nsID.String(), Captured: p.ns != nil}
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
	return mux
}
