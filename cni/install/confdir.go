package install

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/libcni"
)

// confExtensions are the extensions container runtimes (containerd's go-cni,
// CRI-O's ocicni) load network configurations from. They sort the matching
// files by name and use the first one, so that one is the primary network.
var confExtensions = []string{".conf", ".conflist", ".json"}

// errNoPrimary means the conf dir holds no network configuration yet: the
// primary CNI has not written its file.
var errNoPrimary = errors.New("no CNI network configuration yet")

// SupportedCNIVersions are the spec versions weir-cni implements. A primary
// conflist of another version is refused: the runtime would call weir-cni with
// that version at every pod ADD and every pod on the node would fail.
var SupportedCNIVersions = []string{"1.0.0", "1.1.0"}

// primaryFile returns the configuration file the runtime uses: the named
// override, or the first file of the conf dir by name.
func primaryFile(dir, override string) (string, error) {
	if override != "" {
		p := filepath.Join(dir, override)
		if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
			return "", errNoPrimary
		} else if err != nil {
			return "", fmt.Errorf("stat %s: %w", p, err)
		}
		return p, nil
	}
	files, err := libcni.ConfFiles(dir, confExtensions)
	if err != nil {
		return "", fmt.Errorf("list %s: %w", dir, err)
	}
	if len(files) == 0 {
		return "", errNoPrimary
	}
	sort.Strings(files)
	return files[0], nil
}

// confFile is one network configuration as read from disk, normalised to a
// conflist, with what is needed to write it back the same way.
type confFile struct {
	path      string // the name the runtime reads (a symlink is written through)
	converted bool   // path is a single-plugin .conf/.json; list is its upconversion
	raw       []byte // the file's bytes as read
	list      []byte
	mode      fs.FileMode
	uid, gid  int
}

// readConf reads a configuration file and checks it the way the runtime will
// load it, so weir never chains into a file the runtime would reject.
func readConf(path string) (*confFile, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	c := &confFile{path: path, raw: data, mode: info.Mode().Perm(), uid: -1, gid: -1}
	if ids, ok := ownerOf(info); ok {
		c.uid, c.gid = ids[0], ids[1]
	}
	if strings.HasSuffix(path, ".conflist") {
		c.list = data
	} else {
		if _, err := libcni.NetworkPluginConfFromBytes(data); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		if c.list, err = confToList(data); err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		c.converted = true
	}
	parsed, err := libcni.ConfListFromBytes(c.list)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if _, _, err := splitList(c.list); err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	if !parsed.LoadOnlyInlinedPlugins {
		// libcni appends <confdir>/<network name>/*.conf after the inline
		// plugins, so an inline weir entry would not be the last plugin.
		pdir := filepath.Join(filepath.Dir(path), parsed.Name)
		if extra, _ := libcni.ConfFiles(pdir, []string{".conf"}); len(extra) > 0 {
			return nil, fmt.Errorf("%s: network %q also loads plugins from %s, after its inline ones; weir must run last and does not support this layout", path, parsed.Name, pdir)
		}
	}
	return c, nil
}

// ownerOf returns a file's uid and gid, so a rewrite can keep them.
func ownerOf(info fs.FileInfo) ([2]int, bool) {
	st, ok := info.Sys().(*syscall.Stat_t)
	if !ok {
		return [2]int{}, false
	}
	return [2]int{int(st.Uid), int(st.Gid)}, true
}

// checkList validates a conflist weir is about to write: libcni must load it,
// and typ must be its last plugin and appear once.
func checkList(list []byte, typ string) error {
	parsed, err := libcni.ConfListFromBytes(list)
	if err != nil {
		return fmt.Errorf("libcni rejects the result: %w", err)
	}
	n := len(parsed.Plugins)
	if n < 2 || parsed.Plugins[n-1].Network.Type != typ {
		return fmt.Errorf("result does not end with %s", typ)
	}
	if slices.IndexFunc(parsed.Plugins[:n-1], func(p *libcni.PluginConfig) bool { return p.Network.Type == typ }) >= 0 {
		return fmt.Errorf("result holds %s more than once", typ)
	}
	return nil
}

// checkVersion refuses a primary whose spec version weir-cni cannot speak.
func checkVersion(c *confFile) error {
	parsed, err := libcni.ConfListFromBytes(c.list)
	if err != nil {
		return fmt.Errorf("parse %s: %w", c.path, err)
	}
	if !slices.Contains(SupportedCNIVersions, parsed.CNIVersion) {
		return fmt.Errorf("%s: cniVersion %q is not one weir-cni supports (%s)", c.path, parsed.CNIVersion, strings.Join(SupportedCNIVersions, ", "))
	}
	return nil
}

// writeAtomic replaces path with data: a temporary file in the same directory,
// fsynced, given mode and owner, renamed over path. A reader (the runtime, the
// primary CNI) sees either the old file or the new one, never a partial one.
// A symlink at path is followed, so the link stays a link.
func writeAtomic(path string, data []byte, mode fs.FileMode, uid, gid int) error {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		path = target
	}
	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, tempPrefix+"*.tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	done := false
	defer func() {
		if !done {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := tmp.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	// Chown only when the owner differs from ours: the installer then needs
	// CAP_CHOWN only for a file some other user owns.
	if uid >= 0 && (uid != os.Geteuid() || gid != os.Getegid()) {
		if err := tmp.Chown(uid, gid); err != nil {
			return fmt.Errorf("chown %s: %w", tmp.Name(), err)
		}
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp.Name(), path, err)
	}
	done = true
	syncDir(dir)
	return nil
}

// tempPrefix names weir's temporary files; the watcher ignores events on them.
const tempPrefix = ".weir-"

// syncDir makes a rename durable. Best effort: the rename already happened and
// a failed directory fsync only matters across a power cut.
func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
