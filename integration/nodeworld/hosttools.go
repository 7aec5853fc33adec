package nodeworld

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// hostMultis are the host's iptables programs the weir image carries:
// weir-cni and the agent run iptables(-legacy|-nft)-save/-restore in pod
// netns, and nft for the nftables mode. Every iptables name on the host
// that resolves to one of them becomes a symlink in the image, so the
// multi-call binaries dispatch on the same names as on the host.
var hostMultis = []string{"/usr/sbin/xtables-legacy-multi", "/usr/sbin/xtables-nft-multi", "/usr/sbin/nft"}

// xtablesDir holds iptables' extensions (libxt_REDIRECT.so and the rest),
// which it loads at run time, so ldd on the programs does not name them.
const xtablesDir = "/usr/lib/x86_64-linux-gnu/xtables"

// hostTools returns the files and symlinks that put the host's iptables
// and nft, with every shared library they and iptables' extensions load,
// into an image at the same paths.
func hostTools() (files, symlinks map[string]string, err error) {
	files, symlinks = map[string]string{}, map[string]string{}
	var objects []string
	for _, m := range hostMultis {
		if _, err := os.Stat(m); err != nil {
			return nil, nil, fmt.Errorf("host tool for the weir image: %w", err)
		}
		files[m] = m
		objects = append(objects, m)
	}
	exts, err := filepath.Glob(filepath.Join(xtablesDir, "*.so"))
	if err != nil || len(exts) == 0 {
		return nil, nil, fmt.Errorf("iptables extensions in %s: none found (%v)", xtablesDir, err)
	}
	for _, e := range exts {
		files[e] = e
		objects = append(objects, e)
	}
	for _, o := range objects {
		libs, err := sharedLibs(o)
		if err != nil {
			return nil, nil, err
		}
		for _, l := range libs {
			files[l] = l
		}
	}
	names, err := filepath.Glob("/usr/sbin/ip*tables*")
	if err != nil {
		return nil, nil, err
	}
	for _, n := range names {
		target, err := filepath.EvalSymlinks(n)
		if err != nil {
			continue
		}
		for _, m := range hostMultis {
			if target == m && n != m {
				symlinks[n] = filepath.Base(m)
			}
		}
	}
	for _, f := range []string{"/etc/protocols", "/etc/services"} {
		if _, err := os.Stat(f); err == nil {
			files[f] = f
		}
	}
	return files, symlinks, nil
}

// sharedLibs lists the libraries ldd resolves for an ELF object, the
// dynamic loader included.
func sharedLibs(object string) ([]string, error) {
	out, err := exec.Command("ldd", object).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", object, err)
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) >= 3 && fields[1] == "=>" && strings.HasPrefix(fields[2], "/"):
			libs = append(libs, fields[2])
		case len(fields) >= 1 && strings.HasPrefix(fields[0], "/"):
			libs = append(libs, fields[0]) // the loader: "/lib64/ld-linux-x86-64.so.2 (0x…)"
		}
	}
	return libs, nil
}
