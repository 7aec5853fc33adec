package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/weir-mesh/weir/agent/api"
	"github.com/weir-mesh/weir/proxy/netns"
	"github.com/weir-mesh/weir/redirect"
)

// State in the agent's state directory. Names and formats are an upgrade
// contract: a new agent reads what the old one wrote.
//
// Each attachment the agent knows lives in a file of its own under
// podsDir, written (through a temporary file and a rename) only when that
// pod changes, so a CNI ADD costs one small write however many pods the
// node runs. stateFile is the single file agents before per-pod files
// rewrote whole at every change; a new agent still reads it, moves its pods
// to podsDir and deletes it.
const (
	podsDir        = "pods"
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

// savedState is the format of stateFile.
type savedState struct {
	Version int        `json:"version"`
	Pods    []savedPod `json:"pods"`
}

// savedMark is what a pod's file was written from: the pod, its namespace
// handle (capture and release replace it) and its touch count (a spec
// changed in place). Comparing marks costs three word compares, so finding
// the pods to write is cheap at any node size.
type savedMark struct {
	p       *pod
	ns      *netns.Handle
	touched uint64
}

// podFile is the file holding one attachment: named by a hash of it, since
// a container ID is the runtime's string and may hold anything.
func (a *Agent) podFile(att api.Attachment) string {
	h := sha256.Sum256([]byte(att.ContainerID + "\x00" + att.IfName))
	return filepath.Join(a.cfg.StateDir, podsDir, hex.EncodeToString(h[:16])+".json")
}

// saveState writes the files of the pods that changed since they were last
// written and deletes those of pods no longer known. Called with a.mu held.
func (a *Agent) saveState() error {
	if a.saved == nil {
		a.saved = map[api.Attachment]savedMark{}
	}
	var errs []error
	live := a.pods.snapshot()
	for att, p := range live {
		mark := savedMark{p: p, ns: p.ns, touched: p.touched.Load()}
		if a.saved[att] == mark {
			continue
		}
		sp := savedPod{Attachment: p.att, Pod: p.meta, Netns: p.netnsPath, NetnsID: p.nsID, IPs: p.cniIPs, NodeMode: string(p.nodeMode)}
		if p.ns != nil {
			spec := p.spec
			sp.Spec = &spec
		}
		if err := writeJSONFile(a.podFile(att), sp); err != nil {
			errs = append(errs, fmt.Errorf("save pod %s/%s: %w", p.meta.Namespace, p.meta.Name, err))
			continue
		}
		a.saved[att] = mark
	}
	for att := range a.saved {
		if _, ok := live[att]; ok {
			continue
		}
		if err := os.Remove(a.podFile(att)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("forget pod %s: %w", att.ContainerID, err))
			continue
		}
		delete(a.saved, att)
	}
	if len(errs) == 0 && a.legacyState {
		// Every pod it listed has a file of its own now.
		if err := os.Remove(filepath.Join(a.cfg.StateDir, stateFile)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, err)
		} else {
			a.legacyState = false
		}
	}
	return errors.Join(errs...)
}

// loadState reads every saved attachment: the per-pod files, and those of a
// state file an older agent left (a per-pod file wins over it).
func (a *Agent) loadState() ([]savedPod, error) {
	var out []savedPod
	seen := map[api.Attachment]bool{}
	dir := filepath.Join(a.cfg.StateDir, podsDir)
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("read state: %w", err)
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue // the temporary file of an interrupted write
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read state: %w", err)
		}
		var sp savedPod
		if err := json.Unmarshal(b, &sp); err != nil {
			a.log.Error("state: skipping an undecodable pod file", "file", filepath.Join(dir, e.Name()), "err", err)
			continue
		}
		seen[sp.Attachment] = true
		out = append(out, sp)
	}
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, stateFile))
	if os.IsNotExist(err) {
		return out, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("decode state %s: %w", filepath.Join(a.cfg.StateDir, stateFile), err)
	}
	a.legacyState = true
	for _, sp := range st.Pods {
		if !seen[sp.Attachment] {
			out = append(out, sp)
		}
	}
	return out, nil
}

// restoreState reads what a previous agent left and re-captures at once the
// pods it had captured (listeners, and rules repaired if damaged), so a
// restart leaves no pod captured without a listener for longer than it
// takes. Pods whose netns is gone are dropped. The policy is consulted
// later, by reconcile.
func (a *Agent) restoreState() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	saved, err := a.loadState()
	if err != nil {
		return err
	}
	restored, dropped := 0, 0
	for _, sp := range saved {
		if a.pods.get(sp.Attachment) != nil {
			continue // known already (a second pass after a takeover)
		}
		p, ok := a.admitSaved(sp)
		if !ok {
			dropped++
			continue
		}
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

// admitSaved turns a saved attachment back into a pod, through the guard
// (netns.go) too: a state file written before it existed, or edited by
// hand, must not bring a node's namespace into capture. False when its
// namespace is gone, changed or refused. Called with a.mu held.
func (a *Agent) admitSaved(sp savedPod) (*pod, bool) {
	if id, err := a.admitNetns(sp.Netns, sp.Attachment, sp.Pod); err != nil || id != sp.NetnsID {
		if err != nil && !notExist(err) {
			a.log.Error("state: namespace refused, pod dropped", "pod", sp.Pod.Namespace+"/"+sp.Pod.Name, "container", sp.Attachment.ContainerID, "err", err)
		}
		return nil, false
	}
	return &pod{att: sp.Attachment, meta: sp.Pod, netnsPath: sp.Netns, nsID: sp.NetnsID, cniIPs: sp.IPs, ips: podAddrs(sp.IPs), nodeMode: redirect.Mode(sp.NodeMode)}, true
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
