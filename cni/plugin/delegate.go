package plugin

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// RulesHelperSuffix names weir-cni's rules helper: the plugin binary's own
// name with this suffix (weir-cni-rules), installed beside it.
const RulesHelperSuffix = "-rules"

// delegate hands the verb in progress to the rules helper: this process
// becomes the helper (execve), with the same environment and the same
// config on its stdin, so the runtime reads the helper's answer and exit
// status as this plugin's. It returns only when that cannot happen, with a
// CNI error of code.
//
// Why exec and not a child: nothing of this process is needed after, and
// the runtime's pipes pass to the helper as they are.
func delegate(args *CmdArgs, code uint) error {
	name := filepath.Base(os.Args[0]) + RulesHelperSuffix
	path, err := findHelper(name)
	if err != nil {
		return newError(code, "weir-cni's rules helper "+name+" is not installed", err.Error()+"; reinstall weir (weir-cni install copies it beside weir-cni)")
	}
	// The dispatcher read the config off stdin: give the helper a copy to read.
	fd, err := unix.MemfdCreate("weir-cni-config", unix.MFD_CLOEXEC)
	if err != nil {
		return newError(code, "cannot start weir-cni's rules helper", fmt.Sprintf("memfd for the config: %v", err))
	}
	defer unix.Close(fd)
	if err := writeAll(fd, args.StdinData); err != nil {
		return newError(code, "cannot start weir-cni's rules helper", fmt.Sprintf("write the config to a memfd: %v", err))
	}
	if _, err := unix.Seek(fd, 0, 0); err != nil {
		return newError(code, "cannot start weir-cni's rules helper", fmt.Sprintf("rewind the config memfd: %v", err))
	}
	if err := unix.Dup3(fd, 0, 0); err != nil {
		return newError(code, "cannot start weir-cni's rules helper", fmt.Sprintf("config memfd as stdin: %v", err))
	}
	err = unix.Exec(path, []string{path}, os.Environ())
	return newError(code, "cannot start weir-cni's rules helper "+path, err.Error())
}

// ExecHelper makes this process the rules helper installed beside this
// executable, running args (weir-cni hands it `install` and `uninstall`,
// whose code it does not link either). It returns only on failure.
func ExecHelper(args []string) error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	name := filepath.Base(os.Args[0]) + RulesHelperSuffix
	path, err := findHelperIn(name, []string{filepath.Dir(exe)})
	if err != nil {
		return err
	}
	if err := unix.Exec(path, append([]string{path}, args...), os.Environ()); err != nil {
		return fmt.Errorf("exec %s: %w", path, err)
	}
	return nil
}

// findHelper looks for the helper where the runtime looks for plugins
// (CNI_PATH), then beside this executable.
func findHelper(name string) (string, error) {
	dirs := filepath.SplitList(os.Getenv("CNI_PATH"))
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Dir(exe))
	}
	return findHelperIn(name, dirs)
}

func findHelperIn(name string, dirs []string) (string, error) {
	for _, d := range dirs {
		if d == "" {
			continue
		}
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("no executable %s in %s", name, strings.Join(dirs, ", "))
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}
