// Package install chains weir-cni into a node's CNI configuration and keeps it
// there. It is what `weir-cni install` and `weir-cni uninstall` run, from the
// weir DaemonSet's init container (once, before the agent starts) and from its
// long-running install container (watching).
//
// The contract with the container runtime: the runtime loads the first file of
// the CNI conf dir by name with extension .conf, .conflist or .json and runs
// its plugins in order. weir-cni must be the last plugin of that list, so it
// sees the primary plugin's result and passes it on. Install therefore:
//
//   - copies the weir-cni binary into the CNI bin dir (temp file + rename);
//   - picks the primary file as the runtime does, upconverts a lone-plugin
//     .conf/.json into <base>.conflist and removes the old file (it sorts first
//     and would shadow the new list), appends weir's entry as the last plugin,
//     validates the result with libcni and writes it atomically (temp file in
//     the same dir + rename), keeping the file's mode and owner and every byte
//     of the other entries except whitespace;
//   - in watch mode, re-inserts the entry whenever the primary CNI rewrites its
//     file (inotify on the conf dir, debounced, plus a periodic resync in case
//     events were lost). Its own writes cause one re-read that finds nothing to
//     do, so it never loops.
//
// Known limits: a pod created in the instant between a primary's rewrite and
// the repair (a debounce interval) starts without weir, as it does while a
// .conf is being converted; the agent's reconcile of running pods is what
// covers it. A network that loads plugins from <confdir>/<name>/*.conf is
// refused, since those run after inline ones and weir could not be last.
package install

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"

	"github.com/weir-mesh/weir/cni/plugin"
)

// Options configure install and uninstall. ParseFlags fills them from the
// command line; the zero value is not usable, start from DefaultOptions.
type Options struct {
	// ConfDir is the node's CNI conf dir as this process sees it (in the
	// DaemonSet, the host's /etc/cni/net.d mounted at /host/etc/cni/net.d).
	ConfDir string
	// BinDir is the node's CNI bin dir as this process sees it.
	BinDir string
	// BinarySource is the weir-cni binary to copy into BinDir. Empty means this
	// process's own executable (the image runs `weir-cni install`). Its rules
	// helper, BinarySource+"-rules" (weir-cni-rules), is copied beside it as
	// PluginType+"-rules": weir-cni hands it CHECK and a DEL with the agent
	// down. With the default source the helper must be there; with one set
	// by hand (tests, a one-off binary) a missing helper is only warned about.
	BinarySource string
	// Primary, when set, names the file in ConfDir to chain into instead of the
	// first by name (for runtimes configured with a fixed file).
	Primary string

	// AgentSocket, Mode and LogFile go into weir's conflist entry. They are
	// read by weir-cni on the host, so they are host paths.
	AgentSocket string
	Mode        string
	LogFile     string
	// PluginType is the entry's "type" and the binary's name in BinDir.
	PluginType string

	// Watch keeps running after the first install, repairing the conflist.
	Watch bool
	// WaitTimeout bounds how long install waits for a primary configuration
	// to appear; zero waits until the context ends.
	WaitTimeout time.Duration
	// Debounce is how long the conf dir must stay quiet after a change before
	// it is re-read, so a primary writing its file in steps is read once.
	Debounce time.Duration
	// Resync re-reads the conf dir this often even without events; zero never.
	Resync time.Duration

	// RemoveBinary makes uninstall delete the binary from BinDir too.
	RemoveBinary bool

	// Logger receives progress and repairs; nil means slog.Default().
	Logger *slog.Logger

	// onSync, when set (tests), is told the outcome of every pass.
	onSync func(syncResult, error)
}

// DefaultOptions are the paths and settings of a standard node.
func DefaultOptions() Options {
	return Options{
		ConfDir:     "/etc/cni/net.d",
		BinDir:      "/opt/cni/bin",
		AgentSocket: "/run/weir/agent.sock",
		Mode:        "redirect",
		LogFile:     "/var/log/weir-cni.log",
		PluginType:  "weir-cni",
		Debounce:    200 * time.Millisecond,
		Resync:      time.Minute,
	}
}

// validate refuses options that would write a broken entry, before anything is touched.
func (o Options) validate() error {
	switch {
	case o.ConfDir == "" || o.BinDir == "":
		return errors.New("CNI conf dir and bin dir must be set")
	case o.PluginType == "" || strings.ContainsAny(o.PluginType, `/\`):
		return fmt.Errorf("plugin type %q is not a plain file name", o.PluginType)
	case o.Mode != "redirect" && o.Mode != "tproxy":
		return fmt.Errorf("mode %q: want redirect or tproxy", o.Mode)
	case !filepath.IsAbs(o.AgentSocket):
		return fmt.Errorf("agent socket %q is not an absolute path", o.AgentSocket)
	case o.LogFile != "" && !filepath.IsAbs(o.LogFile):
		return fmt.Errorf("log file %q is not an absolute path", o.LogFile)
	case o.Primary != "" && (filepath.Base(o.Primary) != o.Primary || !hasConfExt(o.Primary)):
		return fmt.Errorf("primary %q must be a file name in the conf dir ending in .conf, .conflist or .json", o.Primary)
	case o.Debounce <= 0:
		return fmt.Errorf("debounce %v must be positive", o.Debounce)
	case o.Resync < 0 || o.WaitTimeout < 0:
		return errors.New("resync and wait timeout must not be negative")
	}
	return nil
}

func hasConfExt(name string) bool {
	for _, e := range confExtensions {
		if filepath.Ext(name) == e {
			return true
		}
	}
	return false
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}
	return slog.Default()
}

// syncResult says what one pass did.
type syncResult struct {
	Path      string // the conflist weir is chained into
	Wrote     bool   // the pass changed the file
	Converted string // the .conf/.json file upconverted and removed, if any
}

// installer holds what every pass needs.
type installer struct {
	o     Options
	entry []byte
	log   *slog.Logger
	// replacePending: no pass has yet written this release's entry, so the
	// watcher still replaces a differing one instead of keeping it.
	replacePending bool
	// helper: the rules helper was installed beside the plugin, and is
	// repaired with it.
	helper bool
}

// Run installs weir: it copies the binary, waits for a primary configuration if
// there is none yet, and chains weir into it. With o.Watch it then keeps the
// chain repaired until ctx ends, and returns nil on cancellation. Bad options
// return an error and change nothing; so does a primary weir cannot chain into,
// except in watch mode, where it is logged and retried on the next change.
func Run(ctx context.Context, o Options) error {
	if err := o.validate(); err != nil {
		return err
	}
	helperRequired := o.BinarySource == ""
	if o.BinarySource == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own executable to install: %w", err)
		}
		// `weir-cni install` runs here as weir-cni-rules (weir-cni hands
		// it over): the plugin to install is the one it sits beside.
		o.BinarySource = strings.TrimSuffix(exe, plugin.RulesHelperSuffix)
	}
	entry, err := pluginEntry(o)
	if err != nil {
		return err
	}
	in := &installer{o: o, entry: entry, log: o.logger()}

	// The helper first: a weir-cni the runtime can run never lacks it.
	helperSrc := o.BinarySource + plugin.RulesHelperSuffix
	if _, err := os.Stat(helperSrc); err == nil || helperRequired {
		in.helper = true
		if wrote, err := installBinary(helperSrc, o.BinDir, o.PluginType+plugin.RulesHelperSuffix); err != nil {
			return fmt.Errorf("install the rules helper: %w", err)
		} else if wrote {
			in.log.Info("installed the plugin's rules helper", "path", filepath.Join(o.BinDir, o.PluginType+plugin.RulesHelperSuffix))
		}
	} else {
		in.log.Warn("no rules helper beside the plugin binary: CHECK, and a DEL while the agent is down, will fail", "want", helperSrc)
	}
	if wrote, err := installBinary(o.BinarySource, o.BinDir, o.PluginType); err != nil {
		return err
	} else if wrote {
		in.log.Info("installed plugin binary", "path", filepath.Join(o.BinDir, o.PluginType))
	}
	if err := os.MkdirAll(o.ConfDir, 0o755); err != nil {
		return fmt.Errorf("create CNI conf dir: %w", err)
	}
	// Watch before the first read, so a file written in between is not missed.
	w, err := watchDir(o.ConfDir)
	if err != nil {
		return err
	}
	defer w.Close()

	if err := in.firstPass(ctx, w); err != nil {
		return err
	}
	if !o.Watch {
		return nil
	}
	return in.watch(ctx, w)
}

// firstPass waits for a primary and chains weir into it, replacing any weir
// entry with this release's.
func (in *installer) firstPass(ctx context.Context, w *dirWatch) error {
	var deadline <-chan time.Time
	if in.o.WaitTimeout > 0 {
		t := time.NewTimer(in.o.WaitTimeout)
		defer t.Stop()
		deadline = t.C
	}
	logged := false
	for {
		err := in.pass(replaceEntry)
		if err != nil && !errors.Is(err, errNoPrimary) && in.o.Watch {
			// A watcher outlives a primary caught mid-write: it reports the
			// error and keeps trying, still with this release's settings.
			in.log.Error("chain into CNI configuration; will retry on the next change", "err", err)
			in.replacePending = true
			return nil
		}
		if !errors.Is(err, errNoPrimary) {
			return err
		}
		if !logged {
			in.log.Info("waiting for the primary CNI to write its configuration", "dir", in.o.ConfDir)
			logged = true
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a CNI configuration in %s: %w", in.o.ConfDir, ctx.Err())
		case <-deadline:
			return fmt.Errorf("no CNI configuration appeared in %s within %v", in.o.ConfDir, in.o.WaitTimeout)
		case err := <-w.failed:
			return fmt.Errorf("watching %s: %w", in.o.ConfDir, err)
		case <-w.changed:
			// Let a primary that writes in steps finish before reading.
			if err := sleepCtx(ctx, in.o.Debounce); err != nil {
				return fmt.Errorf("waiting for a CNI configuration in %s: %w", in.o.ConfDir, err)
			}
		}
	}
}

// watch repairs the chain after every change of the conf dir until ctx ends.
// Failures are logged and retried on the next change: the installer must
// outlive a primary that is mid-way through rewriting its file.
func (in *installer) watch(ctx context.Context, w *dirWatch) error {
	debounce := time.NewTimer(time.Hour)
	debounce.Stop()
	var resync <-chan time.Time
	if in.o.Resync > 0 {
		t := time.NewTicker(in.o.Resync)
		defer t.Stop()
		resync = t.C
	}
	in.log.Info("watching for changes", "dir", in.o.ConfDir)
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-w.failed:
			if err == nil {
				return nil
			}
			return fmt.Errorf("watching %s: %w", in.o.ConfDir, err)
		case <-w.changed:
			debounce.Reset(in.o.Debounce)
			continue
		case <-debounce.C:
		case <-resync:
		}
		if err := in.repairBinary(); err != nil {
			in.log.Error("plugin binary", "err", err)
		}
		mode := keepEntry
		if in.replacePending {
			mode = replaceEntry
		}
		err := in.pass(mode)
		switch {
		case err == nil:
			in.replacePending = false
		case !errors.Is(err, errNoPrimary):
			in.log.Error("repair CNI configuration", "err", err)
		}
	}
}

// repairBinary puts the binary back if something deleted it. It does not
// compare content: during a rolling update an old and a new installer run side
// by side, and the newer binary must win, so only the first install replaces.
func (in *installer) repairBinary() error {
	if in.helper {
		if err := repairOne(in.o.BinarySource+plugin.RulesHelperSuffix, in.o.BinDir, in.o.PluginType+plugin.RulesHelperSuffix, in.log); err != nil {
			return err
		}
	}
	return repairOne(in.o.BinarySource, in.o.BinDir, in.o.PluginType, in.log)
}

// repairOne copies src to dir/name if nothing is there.
func repairOne(src, dir, name string, log *slog.Logger) error {
	if _, err := os.Stat(filepath.Join(dir, name)); !errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if _, err := installBinary(src, dir, name); err != nil {
		return err
	}
	log.Warn("plugin binary was missing; reinstalled", "path", filepath.Join(dir, name))
	return nil
}

// pass reads the primary configuration once and writes it back with weir
// chained last, if it is not already.
func (in *installer) pass(mode chainMode) error {
	res, err := in.chainPrimary(mode)
	if in.o.onSync != nil {
		in.o.onSync(res, err)
	}
	return err
}

func (in *installer) chainPrimary(mode chainMode) (syncResult, error) {
	path, err := primaryFile(in.o.ConfDir, in.o.Primary)
	if err != nil {
		return syncResult{}, err
	}
	c, err := readConf(path)
	if err != nil {
		return syncResult{Path: path}, err
	}
	if err := checkVersion(c); err != nil {
		return syncResult{Path: path}, err
	}
	out, changed, err := chain(c.list, in.entry, in.o.PluginType, mode)
	if err != nil {
		return syncResult{Path: path}, fmt.Errorf("chain into %s: %w", path, err)
	}
	if !changed && !c.converted {
		return syncResult{Path: path}, nil
	}
	if err := checkList(out, in.o.PluginType); err != nil {
		return syncResult{Path: path}, fmt.Errorf("chain into %s: %w", path, err)
	}
	if !c.converted {
		if err := writeAtomic(path, out, c.mode, c.uid, c.gid); err != nil {
			return syncResult{Path: path}, err
		}
		in.log.Info("chained weir into CNI configuration", "path", path)
		return syncResult{Path: path, Wrote: true}, nil
	}
	// Upconvert: write <base>.conflist first, then remove the .conf, so the
	// runtime always finds a configuration. <base>.conf sorts before
	// <base>.conflist, which is why the old file has to go.
	target := strings.TrimSuffix(path, filepath.Ext(path)) + ".conflist"
	if err := writeAtomic(target, out, c.mode, c.uid, c.gid); err != nil {
		return syncResult{Path: path}, err
	}
	if err := removeIfUnchanged(path, c.raw); err != nil {
		return syncResult{Path: target, Wrote: true}, err
	}
	in.log.Info("converted CNI configuration to a conflist and chained weir into it", "from", path, "path", target)
	return syncResult{Path: target, Wrote: true, Converted: path}, nil
}

// removeIfUnchanged deletes a converted .conf unless the primary rewrote it
// since it was read: then its new content must be converted again, not lost.
func removeIfUnchanged(path string, read []byte) error {
	cur, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("re-read %s before removing it: %w", path, err)
	}
	if !bytes.Equal(cur, read) {
		return fmt.Errorf("%s changed while it was being converted; will convert again", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove converted %s: %w", path, err)
	}
	syncDir(filepath.Dir(path))
	return nil
}

// Uninstall removes weir's entry from every conflist in the conf dir (only its
// entry: the rest of each file is kept, and a list weir upconverted from a
// .conf stays a one-plugin conflist, which runtimes load the same way) and,
// with o.RemoveBinary, the binary. Files it cannot parse are reported and left
// untouched.
func Uninstall(o Options) error {
	if o.ConfDir == "" || o.BinDir == "" || o.PluginType == "" {
		return errors.New("CNI conf dir, bin dir and plugin type must be set")
	}
	log := o.logger()
	files, err := libcni.ConfFiles(o.ConfDir, []string{".conflist"})
	if err != nil {
		return fmt.Errorf("list %s: %w", o.ConfDir, err)
	}
	var errs []error
	for _, path := range files {
		data, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("read %s: %w", path, err))
			continue
		}
		out, changed, err := unchain(data, o.PluginType)
		if err != nil {
			errs = append(errs, fmt.Errorf("remove weir from %s: %w", path, err))
			continue
		}
		if !changed {
			continue
		}
		if _, err := libcni.ConfListFromBytes(out); err != nil {
			errs = append(errs, fmt.Errorf("remove weir from %s: libcni rejects the result: %w", path, err))
			continue
		}
		info, err := os.Stat(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("stat %s: %w", path, err))
			continue
		}
		c := confFile{mode: info.Mode().Perm(), uid: -1, gid: -1}
		if ids, ok := ownerOf(info); ok {
			c.uid, c.gid = ids[0], ids[1]
		}
		if err := writeAtomic(path, out, c.mode, c.uid, c.gid); err != nil {
			errs = append(errs, err)
			continue
		}
		log.Info("removed weir from CNI configuration", "path", path)
	}
	if o.RemoveBinary {
		// The plugin first, then its helper: a plugin is never left without it.
		for _, name := range []string{o.PluginType, o.PluginType + plugin.RulesHelperSuffix} {
			bin := filepath.Join(o.BinDir, name)
			if err := os.Remove(bin); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove plugin binary: %w", err))
			} else if err == nil {
				log.Info("removed plugin binary", "path", bin)
			}
		}
	}
	return errors.Join(errs...)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
