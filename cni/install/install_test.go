package install

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
)

// waitLimit bounds every wait for the watcher: a correct installer acts within
// a debounce interval, so hitting it means the repair never happened.
const waitLimit = 10 * time.Second

const bridgeList = `{
    "cniVersion": "1.0.0",
    "name": "k8s-pod-network",
    "x-vendor-field": {"keep": [1, 2.50, "caf\u00e9"]},
    "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true}}
    ]
}
`

const bridgeConf = `{"cniVersion":"1.1.0","name":"mynet","type":"bridge","bridge":"cni0","ipam":{"type":"host-local","subnet":"10.22.0.0/16"}}`

type node struct {
	conf, bin, src string
}

// newNode makes a conf dir, a bin dir and a stand-in plugin binary. The
// installer only copies the binary, so its bytes need not be a real program.
func newNode(t *testing.T) node {
	t.Helper()
	root := t.TempDir()
	n := node{conf: filepath.Join(root, "net.d"), bin: filepath.Join(root, "bin"), src: filepath.Join(root, "weir-cni.src")}
	for _, d := range []string{n.conf, n.bin} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(n.src, []byte("#!/bin/true\nweir-cni build 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n node) options() Options {
	o := DefaultOptions()
	o.ConfDir, o.BinDir, o.BinarySource = n.conf, n.bin, n.src
	o.Debounce = 20 * time.Millisecond
	o.Resync = 0
	return o
}

func (n node) write(t *testing.T, name, content string, mode fs.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(n.conf, name), []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(n.conf, name), mode); err != nil {
		t.Fatal(err)
	}
}

// replace writes name the way careful primaries do: a temp file renamed over it.
func (n node) replace(t *testing.T, name, content string) {
	t.Helper()
	tmp := filepath.Join(n.conf, "primary.tmp")
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(n.conf, name)); err != nil {
		t.Fatal(err)
	}
}

func (n node) read(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(n.conf, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (n node) files(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(n.conf)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

// requireChained checks that the file is the runtime's pick, loads with libcni,
// ends with weir's entry and holds it once.
func requireChained(t *testing.T, n node, name string) *libcni.NetworkConfigList {
	t.Helper()
	p, err := primaryFile(n.conf, "")
	if err != nil || filepath.Base(p) != name {
		t.Fatalf("runtime would load %q (err %v), want %s", p, err, name)
	}
	data := n.read(t, name)
	if err := checkList(data, "weir-cni"); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, data)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func TestInstallChainsAndKeepsTheRest(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o600)
	if err := os.Chown(filepath.Join(n.conf, "10-bridge.conflist"), 1234, 5678); err != nil && os.Geteuid() == 0 {
		t.Fatal(err)
	}
	if err := Run(context.Background(), n.options()); err != nil {
		t.Fatal(err)
	}
	list := requireChained(t, n, "10-bridge.conflist")
	if len(list.Plugins) != 3 || list.Plugins[0].Network.Type != "bridge" || list.Plugins[1].Network.Type != "portmap" {
		t.Fatalf("plugins %v", list.Plugins)
	}
	got := pluginsOf(t, n.read(t, "10-bridge.conflist"))
	want := pluginsOf(t, []byte(bridgeList))
	if got[0] != want[0] || got[1] != want[1] {
		t.Errorf("primary's entries changed:\n%v\nwant\n%v", got[:2], want)
	}
	if got[2] != `{"type":"weir-cni","agentSocket":"/run/weir/agent.sock","mode":"redirect","logFile":"/var/log/weir-cni.log"}` {
		t.Errorf("weir entry %s", got[2])
	}
	obj, _ := parseObject(n.read(t, "10-bridge.conflist"))
	if v, _ := obj.get("x-vendor-field"); !sameBytesCompact(v, `{"keep":[1,2.50,"caf\u00e9"]}`) {
		t.Errorf("unknown top-level field changed: %s", v)
	}
	info, err := os.Stat(filepath.Join(n.conf, "10-bridge.conflist"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", info.Mode().Perm())
	}
	if st := info.Sys().(*syscall.Stat_t); os.Geteuid() == 0 && (st.Uid != 1234 || st.Gid != 5678) {
		t.Errorf("owner %d:%d, want 1234:5678", st.Uid, st.Gid)
	}
	if names := n.files(t); strings.Join(names, " ") != "10-bridge.conflist" {
		t.Errorf("conf dir holds %v (temp files left?)", names)
	}
	bin, err := os.Stat(filepath.Join(n.bin, "weir-cni"))
	if err != nil {
		t.Fatal(err)
	}
	if bin.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v", bin.Mode().Perm())
	}
	if same, _ := sameContent(n.src, filepath.Join(n.bin, "weir-cni")); !same {
		t.Error("binary content differs from source")
	}
}

func TestInstallIsIdempotent(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	var results []syncResult
	o := n.options()
	o.onSync = func(r syncResult, err error) { results = append(results, r) }
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	first := n.read(t, "10-bridge.conflist")
	inode := func() uint64 {
		info, err := os.Stat(filepath.Join(n.conf, "10-bridge.conflist"))
		if err != nil {
			t.Fatal(err)
		}
		return info.Sys().(*syscall.Stat_t).Ino
	}
	ino, binIno := inode(), statIno(t, filepath.Join(n.bin, "weir-cni"))
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || !results[0].Wrote || results[1].Wrote {
		t.Errorf("passes %+v, want a write then none", results)
	}
	if !bytes.Equal(first, n.read(t, "10-bridge.conflist")) || inode() != ino {
		t.Error("second install rewrote the conflist")
	}
	if statIno(t, filepath.Join(n.bin, "weir-cni")) != binIno {
		t.Error("second install rewrote an identical binary")
	}
}

func statIno(t *testing.T, p string) uint64 {
	t.Helper()
	info, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return info.Sys().(*syscall.Stat_t).Ino
}

func TestInstallReplacesAnOlderEntryWithoutDuplicating(t *testing.T) {
	n := newNode(t)
	old := `{"type":"weir-cni","agentSocket":"/old.sock","mode":"tproxy"}`
	n.write(t, "10-bridge.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[`+old+`,{"type":"bridge"},`+old+`,{"type":"portmap"}]}`, 0o644)
	o := n.options()
	o.Mode = "tproxy"
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	requireChained(t, n, "10-bridge.conflist")
	got := pluginsOf(t, n.read(t, "10-bridge.conflist"))
	want := []string{`{"type":"bridge"}`, `{"type":"portmap"}`, `{"type":"weir-cni","agentSocket":"/run/weir/agent.sock","mode":"tproxy","logFile":"/var/log/weir-cni.log"}`}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("plugins\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestInstallConvertsALoneConf(t *testing.T) {
	for _, ext := range []string{".conf", ".json"} {
		t.Run(ext, func(t *testing.T) {
			n := newNode(t)
			n.write(t, "10-mynet"+ext, bridgeConf, 0o640)
			if err := Run(context.Background(), n.options()); err != nil {
				t.Fatal(err)
			}
			if names := n.files(t); strings.Join(names, " ") != "10-mynet.conflist" {
				t.Fatalf("conf dir holds %v, want only 10-mynet.conflist", names)
			}
			list := requireChained(t, n, "10-mynet.conflist")
			if list.Name != "mynet" || list.CNIVersion != "1.1.0" || len(list.Plugins) != 2 {
				t.Errorf("converted list name=%q version=%q plugins=%d", list.Name, list.CNIVersion, len(list.Plugins))
			}
			if got := pluginsOf(t, n.read(t, "10-mynet.conflist")); got[0] != bridgeConf {
				t.Errorf("converted entry %s, want the .conf verbatim", got[0])
			}
			if info, _ := os.Stat(filepath.Join(n.conf, "10-mynet.conflist")); info.Mode().Perm() != 0o640 {
				t.Errorf("mode %v, want the .conf's 0640", info.Mode().Perm())
			}
		})
	}
}

func TestInstallPicksTheFirstByName(t *testing.T) {
	n := newNode(t)
	second := `{"cniVersion":"1.0.0","name":"second","plugins":[{"type":"ptp"}]}`
	n.write(t, "20-second.conflist", second, 0o644)
	n.write(t, "10-first.conflist", bridgeList, 0o644)
	n.write(t, "05-notes.txt", "not a config", 0o644)
	if err := os.Mkdir(filepath.Join(n.conf, "00-dir.conflist"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), n.options()); err != nil {
		t.Fatal(err)
	}
	requireChained(t, n, "10-first.conflist")
	if got := n.read(t, "20-second.conflist"); string(got) != second {
		t.Errorf("second conflist was touched: %s", got)
	}

	// --primary overrides the runtime's order.
	o := n.options()
	o.Primary = "20-second.conflist"
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	if err := checkList(n.read(t, "20-second.conflist"), "weir-cni"); err != nil {
		t.Error(err)
	}
}

func TestInstallWaitsForAPrimary(t *testing.T) {
	n := newNode(t)
	o := n.options()
	waiting := make(chan struct{})
	var once sync.Once
	o.onSync = func(r syncResult, err error) {
		if errors.Is(err, errNoPrimary) {
			once.Do(func() { close(waiting) })
		}
	}
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	go func() { done <- Run(ctx, o) }()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("install returned %v before any configuration existed", err)
	case <-time.After(waitLimit):
		t.Fatal("installer never looked")
	}
	n.replace(t, "10-bridge.conflist", bridgeList)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	requireChained(t, n, "10-bridge.conflist")
}

func TestInstallWaitTimeout(t *testing.T) {
	n := newNode(t)
	o := n.options()
	o.WaitTimeout = 50 * time.Millisecond
	err := Run(context.Background(), o)
	if err == nil || !strings.Contains(err.Error(), "no CNI configuration appeared") {
		t.Fatalf("err = %v", err)
	}
	if names := n.files(t); len(names) != 0 {
		t.Errorf("conf dir holds %v", names)
	}
}

func TestInstallRefusesBadPrimaries(t *testing.T) {
	tests := map[string]struct{ name, content, wantErr string }{
		"truncated JSON":       {"10-x.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}`, "10-x.conflist"},
		"no plugins":           {"10-x.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[]}`, "no plugins"},
		"plugin without type":  {"10-x.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"bridge":"cni0"}]}`, "missing 'type'"},
		"conf without type":    {"10-x.conf", `{"cniVersion":"1.0.0","name":"k8s"}`, "missing 'type'"},
		"old spec version":     {"10-x.conflist", `{"cniVersion":"0.4.0","name":"k8s","plugins":[{"type":"bridge"}]}`, `cniVersion "0.4.0"`},
		"empty file":           {"10-x.conflist", ``, "10-x.conflist"},
		"plugins from subdirs": {"10-x.conflist", `{"cniVersion":"1.1.0","name":"k8s","plugins":[{"type":"bridge"}]}`, "also loads plugins"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			n := newNode(t)
			n.write(t, tt.name, tt.content, 0o644)
			if name == "plugins from subdirs" {
				if err := os.Mkdir(filepath.Join(n.conf, "k8s"), 0o755); err != nil {
					t.Fatal(err)
				}
				n.write(t, "k8s/50-tuning.conf", `{"type":"tuning"}`, 0o644)
			}
			before := n.files(t)
			err := Run(context.Background(), n.options())
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err = %v, want one mentioning %q", err, tt.wantErr)
			}
			if got := string(n.read(t, tt.name)); got != tt.content {
				t.Errorf("file changed to %s", got)
			}
			if after := n.files(t); strings.Join(after, " ") != strings.Join(before, " ") {
				t.Errorf("conf dir went from %v to %v", before, after)
			}
		})
	}
}

func TestInstallRefusesBadOptions(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	for name, mutate := range map[string]func(*Options){
		"mode":          func(o *Options) { o.Mode = "ebpf-maybe" },
		"socket":        func(o *Options) { o.AgentSocket = "run/weir.sock" },
		"log file":      func(o *Options) { o.LogFile = "weir.log" },
		"plugin type":   func(o *Options) { o.PluginType = "../weir" },
		"primary path":  func(o *Options) { o.Primary = "../10-bridge.conflist" },
		"no debounce":   func(o *Options) { o.Debounce = 0 },
		"missing bin":   func(o *Options) { o.BinarySource = filepath.Join(n.conf, "nope") },
		"empty confdir": func(o *Options) { o.ConfDir = "" },
	} {
		t.Run(name, func(t *testing.T) {
			o := n.options()
			mutate(&o)
			if err := Run(context.Background(), o); err == nil {
				t.Fatal("accepted")
			}
			if got := string(n.read(t, "10-bridge.conflist")); got != bridgeList {
				t.Error("conflist changed")
			}
			if _, err := os.Stat(filepath.Join(n.bin, "weir-cni")); !errors.Is(err, fs.ErrNotExist) {
				t.Error("binary installed despite bad options")
			}
		})
	}
}

// watcher runs a watching installer and collects its passes.
type watcher struct {
	mu     sync.Mutex
	passes []syncResult
	errs   []error
	kick   chan struct{}
	done   chan error
}

func startWatch(t *testing.T, o Options) *watcher {
	t.Helper()
	w := &watcher{kick: make(chan struct{}, 1), done: make(chan error, 1)}
	o.Watch = true
	o.onSync = func(r syncResult, err error) {
		w.mu.Lock()
		w.passes = append(w.passes, r)
		w.errs = append(w.errs, err)
		w.mu.Unlock()
		select {
		case w.kick <- struct{}{}:
		default:
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { w.done <- Run(ctx, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-w.done:
			if err != nil {
				t.Errorf("watch ended with %v", err)
			}
		case <-time.After(waitLimit):
			t.Error("watch did not stop on cancel")
		}
	})
	return w
}

// waitFor polls cond after each pass of the watcher, up to waitLimit.
func (w *watcher) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for !cond() {
		select {
		case <-w.kick:
		case err := <-w.done:
			t.Fatalf("watch ended (%v) while waiting for %s", err, what)
		case <-deadline:
			t.Fatalf("no %s within %v", what, waitLimit)
		}
	}
}

func (w *watcher) writes() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, p := range w.passes {
		if p.Wrote {
			n++
		}
	}
	return n
}

func (w *watcher) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.passes)
}

func chained(n node, name string) bool {
	data, err := os.ReadFile(filepath.Join(n.conf, name))
	return err == nil && checkList(data, "weir-cni") == nil
}

func TestWatchRepairsAfterThePrimaryRewrites(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	w := startWatch(t, n.options())
	w.waitFor(t, "first install", func() bool { return w.writes() == 1 })

	// A primary that replaces its file by rename.
	n.replace(t, "10-bridge.conflist", bridgeList)
	w.waitFor(t, "repair after rename", func() bool { return w.writes() == 2 && chained(n, "10-bridge.conflist") })

	// A primary that truncates and rewrites in place.
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	w.waitFor(t, "repair after in-place write", func() bool { return w.writes() == 3 && chained(n, "10-bridge.conflist") })
	requireChained(t, n, "10-bridge.conflist")

	// The installer's own write triggers one more pass, which must find
	// nothing to do. Wait for it, then for a resync-free quiet period.
	passes := w.count()
	w.waitFor(t, "the pass caused by the installer's own write", func() bool { return w.count() > passes })
	time.Sleep(20 * n.options().Debounce)
	if got := w.writes(); got != 3 {
		t.Errorf("%d writes, want 3: the watcher reacts to its own writes", got)
	}
}

func TestWatchReconvertsARewrittenConf(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-mynet.conf", bridgeConf, 0o644)
	w := startWatch(t, n.options())
	w.waitFor(t, "conversion", func() bool { return chained(n, "10-mynet.conflist") && len(n.files(t)) == 1 })

	updated := strings.Replace(bridgeConf, "10.22.0.0/16", "10.33.0.0/16", 1)
	n.replace(t, "10-mynet.conf", updated)
	w.waitFor(t, "reconversion", func() bool {
		return len(n.files(t)) == 1 && chained(n, "10-mynet.conflist") &&
			bytes.Contains(n.read(t, "10-mynet.conflist"), []byte("10.33.0.0/16"))
	})
}

func TestWatchFollowsANewPrimaryAndMissingBinary(t *testing.T) {
	n := newNode(t)
	n.write(t, "20-bridge.conflist", bridgeList, 0o644)
	w := startWatch(t, n.options())
	w.waitFor(t, "first install", func() bool { return chained(n, "20-bridge.conflist") })

	// A new configuration that sorts first becomes the runtime's pick.
	n.replace(t, "05-calico.conflist", `{"cniVersion":"1.0.0","name":"calico","plugins":[{"type":"calico"}]}`)
	w.waitFor(t, "chaining into the new primary", func() bool { return chained(n, "05-calico.conflist") })

	if err := os.Remove(filepath.Join(n.bin, "weir-cni")); err != nil {
		t.Fatal(err)
	}
	// The bin dir is not watched; the next event or resync restores it.
	n.replace(t, "99-unrelated.conflist", `{"cniVersion":"1.0.0","name":"x","plugins":[{"type":"ptp"}]}`)
	w.waitFor(t, "binary restored", func() bool {
		_, err := os.Stat(filepath.Join(n.bin, "weir-cni"))
		return err == nil
	})
}

func TestWatchSurvivesAMalformedRewrite(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	w := startWatch(t, n.options())
	w.waitFor(t, "first install", func() bool { return w.writes() == 1 })

	n.replace(t, "10-bridge.conflist", `{"cniVersion":"1.0.0","name":`)
	w.waitFor(t, "a failed pass", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.errs[len(w.errs)-1] != nil
	})
	if got := string(n.read(t, "10-bridge.conflist")); got != `{"cniVersion":"1.0.0","name":` {
		t.Fatalf("malformed file was rewritten: %s", got)
	}
	n.replace(t, "10-bridge.conflist", bridgeList)
	w.waitFor(t, "repair once the primary is sane again", func() bool { return chained(n, "10-bridge.conflist") })
}

func TestWatchKeepsANewerInstallersEntry(t *testing.T) {
	// During a rolling update two installers watch the same dir; the older one
	// must not put back its own settings over the newer one's.
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	w := startWatch(t, n.options())
	w.waitFor(t, "first install", func() bool { return w.writes() == 1 })

	newer := n.options()
	newer.Mode = "tproxy"
	// Count passes before the newer installer writes: on a busy machine the
	// watcher may react before Run returns.
	passes := w.count()
	if err := Run(context.Background(), newer); err != nil {
		t.Fatal(err)
	}
	w.waitFor(t, "the old watcher's pass", func() bool { return w.count() > passes })
	if got := pluginsOf(t, n.read(t, "10-bridge.conflist")); !strings.Contains(got[len(got)-1], `"tproxy"`) {
		t.Errorf("old watcher overwrote the newer entry: %s", got[len(got)-1])
	}
	if w.writes() != 1 {
		t.Errorf("old watcher wrote %d times", w.writes())
	}
}

func TestUninstall(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-mynet.conf", bridgeConf, 0o644)
	n.write(t, "20-bridge.conflist", bridgeList, 0o644)
	if err := Run(context.Background(), n.options()); err != nil {
		t.Fatal(err)
	}
	// A stale entry in a list that is no longer primary goes too.
	o := n.options()
	o.Primary = "20-bridge.conflist"
	if err := Run(context.Background(), o); err != nil {
		t.Fatal(err)
	}
	keepBin := n.options()
	if err := Uninstall(keepBin); err != nil {
		t.Fatal(err)
	}
	if got := pluginsOf(t, n.read(t, "10-mynet.conflist")); len(got) != 1 || got[0] != bridgeConf {
		t.Errorf("upconverted list after uninstall: %v, want the lone bridge entry", got)
	}
	if got, want := pluginsOf(t, n.read(t, "20-bridge.conflist")), pluginsOf(t, []byte(bridgeList)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("after uninstall %v, want %v", got, want)
	}
	if _, err := os.Stat(filepath.Join(n.bin, "weir-cni")); err != nil {
		t.Errorf("binary removed without --remove-binary: %v", err)
	}
	// Uninstalling twice is harmless; with RemoveBinary the binary goes.
	o = n.options()
	o.RemoveBinary = true
	if err := Uninstall(o); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(n.bin, "weir-cni")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("binary still there: %v", err)
	}
	if err := Uninstall(o); err != nil {
		t.Errorf("second uninstall: %v", err)
	}
}

func TestUninstallLeavesUnparsableFilesAlone(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-broken.conflist", `{"plugins":[{"type":"weir-cni"`, 0o644)
	n.write(t, "20-bridge.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},`+weirEntry+`]}`, 0o644)
	err := Uninstall(n.options())
	if err == nil || !strings.Contains(err.Error(), "10-broken.conflist") {
		t.Fatalf("err = %v, want one naming the broken file", err)
	}
	if got := string(n.read(t, "10-broken.conflist")); got != `{"plugins":[{"type":"weir-cni"` {
		t.Errorf("broken file changed: %s", got)
	}
	if got := pluginsOf(t, n.read(t, "20-bridge.conflist")); len(got) != 1 {
		t.Errorf("good file still holds %v", got)
	}
}

func TestWatchStartsOnAMalformedPrimary(t *testing.T) {
	// The init container already failed loudly on such a file; the watcher
	// must not crash-loop but chain in, with its own settings, once it is fixed.
	n := newNode(t)
	n.write(t, "10-bridge.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},`+
		`{"type":"weir-cni","agentSocket":"/old.sock","mode":"tproxy"}]`, 0o644)
	w := startWatch(t, n.options())
	w.waitFor(t, "a failed first pass", func() bool {
		w.mu.Lock()
		defer w.mu.Unlock()
		return len(w.errs) > 0 && w.errs[0] != nil
	})
	n.replace(t, "10-bridge.conflist", `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},`+
		`{"type":"weir-cni","agentSocket":"/old.sock","mode":"tproxy"}]}`)
	w.waitFor(t, "this release's entry", func() bool {
		got := pluginsOf(t, n.read(t, "10-bridge.conflist"))
		return len(got) == 2 && strings.Contains(got[1], `"/run/weir/agent.sock"`)
	})
}

// TestInstallShipsRulesHelper: weir-cni's rules helper (weir-cni-rules,
// beside the source binary) is installed with the plugin, put back if
// deleted, and removed with it; without a helper beside a source given by
// hand, the plugin still installs.
func TestInstallShipsRulesHelper(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	helperSrc := n.src + "-rules"
	if err := os.WriteFile(helperSrc, []byte("#!/bin/true\nweir-cni-rules build 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(n.bin, "weir-cni-rules")
	if err := Run(context.Background(), n.options()); err != nil {
		t.Fatal(err)
	}
	if same, err := sameContent(helperSrc, helper); !same {
		t.Fatalf("helper not installed with the plugin (%v)", err)
	}
	if st, err := os.Stat(helper); err != nil || st.Mode().Perm() != 0o755 {
		t.Fatalf("helper %v, %v: want mode 0755", st, err)
	}
	in := &installer{o: n.options(), helper: true, log: n.options().logger()}
	if err := os.Remove(helper); err != nil {
		t.Fatal(err)
	}
	if err := in.repairBinary(); err != nil {
		t.Fatal(err)
	}
	if same, err := sameContent(helperSrc, helper); !same {
		t.Fatalf("deleted helper not repaired (%v)", err)
	}
	o := n.options()
	o.RemoveBinary = true
	if err := Uninstall(o); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"weir-cni", "weir-cni-rules"} {
		if _, err := os.Stat(filepath.Join(n.bin, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s still installed after uninstall --remove-binary: %v", name, err)
		}
	}

	// A source given by hand with no helper beside it: the plugin alone.
	if err := os.Remove(helperSrc); err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), n.options()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(helper); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("helper installed from nowhere: %v", err)
	}
	if _, err := os.Stat(filepath.Join(n.bin, "weir-cni")); err != nil {
		t.Errorf("plugin not installed without a helper: %v", err)
	}
}
