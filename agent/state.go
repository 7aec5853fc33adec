package agent

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/redirect"
)

// State files in the agent's state directory. Their names and formats are an
// upgrade contract: a new agent reads what the old one wrote.
const (
	stateFile      = "state.json"
	EnablementFile = "enablement.json"
)

// savedPod is one attachment as persisted across agent restarts.
type savedPod struct {
	Attachment api.Attachment `json:"attachment"`
	Pod        api.Pod        `json:"pod"`
	Netns      string         `json:"netns"`
	NetnsID    netns.ID       `json:"netnsID"`
	IPs        []string       `json:"ips"`
	NodeMode   string         `json:"nodeMode,omitempty"`
	// Spec is set when the pod was captured.
	Spec *redirect.Spec `json:"spec,omitempty"`
}

type savedState struct {
	Version int        `json:"version"`
	Pods    []savedPod `json:"pods"`
}

// saveState writes every known attachment, atomically. Called with a.mu held.
func (a *Agent) saveState() error {
	st := savedState{Version: 1}
	for _, p := range a.pods.list() {
		sp := savedPod{Attachment: p.att, Pod: p.meta, Netns: p.netnsPath, NetnsID: p.nsID, IPs: p.cniIPs, NodeMode: string(p.nodeMode)}
		if p.ns != nil {
			spec := p.spec
			sp.Spec = &spec
		}
		st.Pods = append(st.Pods, sp)
	}
	return writeJSONFile(filepath.Join(a.cfg.StateDir, stateFile), st)
}

// restoreState reads what a previous agent left and re-captures at once the
// pods it had captured (listeners, and rules repaired if damaged), so a
// restart leaves no pod captured without a listener for longer than it
// takes. Pods whose netns is gone are dropped. The policy is consulted
// later, by reconcile.
func (a *Agent) restoreState() error {
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, stateFile))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Errorf("decode state %s: %w", filepath.Join(a.cfg.StateDir, stateFile), err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	restored, dropped := 0, 0
	for _, sp := range st.Pods {
		if a.pods.get(sp.Attachment) != nil {
			continue // known already (a second pass after a takeover)
		}
		// The guard (netns.go) too: a state file written before it existed,
		// or edited by hand, must not bring a node's namespace into capture.
		if id, err := a.admitNetns(sp.Netns, sp.Attachment, sp.Pod); err != nil || id != sp.NetnsID {
			if err != nil && !notExist(err) {
				a.log.Error("restore: namespace refused, pod dropped", "pod", sp.Pod.Namespace+"/"+sp.Pod.Name, "container", sp.Attachment.ContainerID, "err", err)
			}
			dropped++
			continue
		}
		p := &pod{att: sp.Attachment, meta: sp.Pod, netnsPath: sp.Netns, nsID: sp.NetnsID, cniIPs: sp.IPs, ips: podAddrs(sp.IPs), nodeMode: redirect.Mode(sp.NodeMode)}
		if sp.Spec != nil {
			if err := a.capture(p, *sp.Spec); err != nil {
				a.log.Error("restore: cannot re-open listeners", "pod", sp.Pod.Namespace+"/"+sp.Pod.Name, "err", err)
			} else if err := redirect.Verify(p.ns.FdPath(), p.spec); err != nil {
				if err := redirect.Apply(p.ns.FdPath(), p.spec); err != nil {
					a.log.Error("restore: cannot repair rules", "pod", sp.Pod.Namespace+"/"+sp.Pod.Name, "err", err)
				}
			}
			restored++
		}
		a.pods.swap(p)
	}
	a.afterChange()
	a.log.Info("state restored", "captured", restored, "known", a.pods.len(), "dropped", dropped)
	return nil
}

// enablement is what weir-cni reads when the agent cannot be reached: pods
// of namespaces not listed here never wait for the agent.
type enablement struct {
	Version    int      `json:"version"`
	Namespaces []string `json:"namespaces"`
}

// writeEnablement records the namespaces whose pods need the agent.
func (a *Agent) writeEnablement() error {
	var nss []string
	if a.kube != nil {
		nss = a.kube.EnabledNamespaces()
	} else {
		nss = append(nss, a.cfg.Capture.Namespaces...)
		sort.Strings(nss)
	}
	if nss == nil {
		nss = []string{}
	}
	return writeJSONFile(filepath.Join(a.cfg.StateDir, EnablementFile), enablement{Version: 1, Namespaces: nss})
}

// writeJSONFile writes v to path through a temporary file and a rename, so
// a reader never sees half a file.
func writeJSONFile(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// netnsCandidates lists network namespaces to search: the bind mounts in
// dirs, then one /proc/PID/ns/net per namespace not seen yet.
func netnsCandidates(dirs []string) []string {
	seen := map[netns.ID]bool{}
	var out []string
	add := func(path string) {
		id, err := netns.IDOf(path)
		if err != nil || seen[id] {
			return
		}
		seen[id] = true
		out = append(out, path)
	}
	for _, d := range dirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			add(filepath.Join(d, e.Name()))
		}
	}
	procs, _ := os.ReadDir("/proc")
	for _, e := range procs {
		if _, err := strconv.Atoi(e.Name()); err == nil {
			add(filepath.Join("/proc", e.Name(), "ns", "net"))
		}
	}
	return out
}
