package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

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
// rewrote whole at every change. This agent keeps it too, as a mirror an
// older agent can read (a downgrade, or an older agent taking over): off
// the CNI path, at most every mirrorInterval, at handover and at stop,
// marked "mirror" so this agent knows podsDir is the truth. A stateFile
// without the mark was written by an older agent after this one ran: it
// is the newer truth, and podsDir, older, is dropped.
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
	// Mirror marks a stateFile written by an agent that keeps podsDir
	// (older agents ignore the field).
	Mirror bool `json:"mirror,omitempty"`
}

// mirrorInterval bounds how often the stateFile mirror is rewritten while
// pods change: its cost grows with the node, so it stays off the CNI path.
const mirrorInterval = 2 * time.Second

// savedPodOf is p as persisted.
func savedPodOf(p *pod) savedPod {
	sp := savedPod{Attachment: p.att, Pod: p.meta, Netns: p.netnsPath, NetnsID: p.nsID, IPs: p.cniIPs, NodeMode: string(p.nodeMode)}
	if p.ns != nil {
		spec := p.spec
		sp.Spec = &spec
	}
	return sp
}

// writeMirror rewrites the stateFile mirror if a pod changed since the
// last one (or always, with force). Called without a.mu: it takes it only
// to collect the pods' encodings. mirrorMu keeps two writers from leaving
// the older copy.
func (a *Agent) writeMirror(force bool) error {
	a.mirrorMu.Lock()
	defer a.mirrorMu.Unlock()
	a.mu.Lock()
	pods, ok := a.mirrorLocked(force, &a.mirrorScratch)
	a.mu.Unlock()
	if !ok {
		return nil
	}
	a.mirrorScratch.json = appendMirrorJSON(a.mirrorScratch.json[:0], pods)
	err := writeFileAtomic(filepath.Join(a.cfg.StateDir, stateFile), a.mirrorScratch.json)
	clear(a.mirrorScratch.pods) // drop the references until the next write
	return err
}

// mirrorScratch is what writeMirror reuses from one write to the next
// (guarded by mirrorMu): the mirror is rewritten every mirrorInterval while
// pods change, and at hundreds of pods its buffers, made afresh each time,
// were a good part of the agent's garbage during a run of ADDs.
type mirrorScratch struct {
	list []*pod
	pods [][]byte
	json []byte
}

// mirrorLocked collects every pod's encoding for the mirror: the one its
// own file was written with, or a fresh one for a pod whose file is behind.
// Reusing the encodings keeps the mirror's cost under the lock a copy of
// pointers, and its garbage one buffer, at any node size: encoding 500
// pods afresh every mirrorInterval competed with CNI ADDs for the CPU.
// ok is false when there is nothing to write. Called with a.mu held.
//
// scratch, when not nil, lends its slices (the caller holds mirrorMu).
func (a *Agent) mirrorLocked(force bool, scratch *mirrorScratch) (pods [][]byte, ok bool) {
	if !a.ownsState.Load() || (!a.mirrorDirty && !force) {
		return nil, false
	}
	var list []*pod
	if scratch != nil {
		scratch.list = a.pods.appendSorted(scratch.list[:0])
		list, pods = scratch.list, scratch.pods[:0]
		defer func() {
			clear(scratch.list)
			scratch.pods = pods
		}()
	} else {
		list = a.pods.list()
	}
	for _, p := range list {
		b, cached := a.savedJSON[p.att]
		if !cached || a.saved[p.att] != (savedMark{p: p, ns: p.ns, touched: p.touched.Load()}) {
			var err error
			if b, err = json.Marshal(savedPodOf(p)); err != nil {
				continue // a savedPod always encodes
			}
		}
		pods = append(pods, b)
	}
	a.mirrorDirty = false
	return pods, true
}

// mirrorJSON is the stateFile mirror made of the pods' encodings: a
// savedState with Version 1 and Mirror set.
func mirrorJSON(pods [][]byte) []byte {
	n := 64
	for _, p := range pods {
		n += len(p) + 1
	}
	return appendMirrorJSON(make([]byte, 0, n), pods)
}

// appendMirrorJSON appends the mirror to b.
func appendMirrorJSON(b []byte, pods [][]byte) []byte {
	b = append(b, `{"version":1,"pods":[`...)
	for i, p := range pods {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, p...)
	}
	return append(b, `],"mirror":true}`...)
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
// written and deletes those of pods no longer known: of the attachments in
// only, or of every one when only is empty. Called with a.mu held.
func (a *Agent) saveState(only []api.Attachment) error {
	if a.saved == nil {
		a.saved, a.savedJSON = map[api.Attachment]savedMark{}, map[api.Attachment][]byte{}
	}
	var errs []error
	var live map[api.Attachment]*pod
	gone := a.saved
	if len(only) == 0 {
		live = a.pods.snapshot()
	} else {
		live, gone = map[api.Attachment]*pod{}, map[api.Attachment]savedMark{}
		for _, att := range only {
			if p := a.pods.get(att); p != nil {
				live[att] = p
			} else if m, ok := a.saved[att]; ok {
				gone[att] = m
			}
		}
	}
	for att, p := range live {
		mark := savedMark{p: p, ns: p.ns, touched: p.touched.Load()}
		if a.saved[att] == mark {
			continue
		}
		a.mirrorDirty = true
		b, err := json.Marshal(savedPodOf(p))
		if err == nil {
			err = writeFileAtomic(a.podFile(att), b)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("save pod %s/%s: %w", p.meta.Namespace, p.meta.Name, err))
			continue
		}
		a.saved[att], a.savedJSON[att] = mark, b
	}
	for att := range gone {
		if _, ok := live[att]; ok {
			continue
		}
		a.mirrorDirty = true
		if err := os.Remove(a.podFile(att)); err != nil && !os.IsNotExist(err) {
			errs = append(errs, fmt.Errorf("forget pod %s: %w", att.ContainerID, err))
			continue
		}
		delete(a.saved, att)
		delete(a.savedJSON, att)
	}
	if len(errs) == 0 && len(only) == 0 && a.legacyState {
		// Every pod an older agent's stateFile listed has a file of its
		// own now; the stateFile becomes this agent's mirror.
		a.legacyState = false
		if pods, ok := a.mirrorLocked(true, nil); ok {
			if err := writeFileAtomic(filepath.Join(a.cfg.StateDir, stateFile), mirrorJSON(pods)); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// loadState reads every saved attachment: the per-pod files or, when an
// older agent wrote the stateFile after them (no mirror mark), that file,
// and then the per-pod files, older, are dropped.
func (a *Agent) loadState() ([]savedPod, error) {
	dir := filepath.Join(a.cfg.StateDir, podsDir)
	b, err := os.ReadFile(filepath.Join(a.cfg.StateDir, stateFile))
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err == nil {
		var st savedState
		if err := json.Unmarshal(b, &st); err != nil {
			return nil, fmt.Errorf("decode state %s: %w", filepath.Join(a.cfg.StateDir, stateFile), err)
		}
		if !st.Mirror {
			if err := os.RemoveAll(dir); err != nil {
				return nil, fmt.Errorf("drop per-pod state older than %s: %w", stateFile, err)
			}
			a.legacyState = true
			return st.Pods, nil
		}
	}
	var out []savedPod
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
		out = append(out, sp)
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
			if err := a.capture(p, *sp.Spec, nil); err != nil {
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
	return writeFileAtomic(path, b)
}

// writeFileAtomic writes b to path through a temporary file and a rename,
// creating path's directory when it is missing. It uses the system calls
// os.MkdirAll, os.WriteFile and os.Rename would (with their flags, mode
// and error types) without the *os.File and the directory's stat: every
// ADD and DEL writes a pod's file, and those were garbage.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	err := writeFile(tmp, b)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		err = writeFile(tmp, b)
	}
	if err != nil {
		return err
	}
	if err := unix.Rename(tmp, path); err != nil {
		unix.Unlink(tmp)
		return &os.LinkError{Op: "rename", Old: tmp, New: path, Err: err}
	}
	return nil
}

// writeFile is os.WriteFile(name, b, 0o600) in system calls.
func writeFile(name string, b []byte) error {
	fd, err := unix.Open(name, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return &fs.PathError{Op: "open", Path: name, Err: err}
	}
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			unix.Close(fd)
			return &fs.PathError{Op: "write", Path: name, Err: err}
		}
		b = b[n:]
	}
	if err := unix.Close(fd); err != nil {
		return &fs.PathError{Op: "close", Path: name, Err: err}
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
