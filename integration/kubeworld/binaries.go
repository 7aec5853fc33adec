package kubeworld

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// BinDirEnv names the environment variable that points at a directory
// holding etcd, kube-apiserver and kubectl (as hack/kube-binaries.sh prints).
const BinDirEnv = "WEIR_KUBE_BIN_DIR"

// binaries are the programs a world needs, all found in one directory.
var binaries = []string{"etcd", "kube-apiserver", "kubectl"}

// errMissing marks errors that mean "the binaries cannot be had here", which
// skip a test outside CI, as opposed to a control plane that fails to start.
var errMissing = errors.New("kube binaries unavailable")

var (
	binDirOnce sync.Once
	binDir     string
	binDirErr  error
)

// findBinDir returns the directory with the control-plane binaries, running
// hack/kube-binaries.sh at most once per process when BinDirEnv is unset.
func findBinDir() (string, error) {
	binDirOnce.Do(func() {
		binDir, binDirErr = locateBinDir()
	})
	return binDir, binDirErr
}

func locateBinDir() (string, error) {
	return locateTool(BinDirEnv, "kube-binaries.sh", binaries)
}

// locateTool returns the directory holding names: the one env points at,
// else the one the cached build script hack/<script> prints (building
// them first if its cache is cold).
func locateTool(env, script string, names []string) (string, error) {
	if dir := os.Getenv(env); dir != "" {
		if err := checkBinDir(dir, names); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %w (run hack/%s)", errMissing, env, dir, err, script)
		}
		return dir, nil
	}
	path, err := findScript(script)
	if err != nil {
		return "", fmt.Errorf("%w: %s is unset and %w", errMissing, env, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", path)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s failed: %w\n%s", errMissing, path, err, tail(stderr.Bytes(), 4096))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if err := checkBinDir(dir, names); err != nil {
		return "", fmt.Errorf("%w: %s printed %q: %w", errMissing, path, dir, err)
	}
	return dir, nil
}

// checkBinDir reports the first of names that dir lacks or cannot execute.
func checkBinDir(dir string, names []string) error {
	for _, name := range names {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			return err // names the path already
		}
		if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("%s is not an executable file", p)
		}
	}
	return nil
}

// findScript walks up from the working directory (a test's package
// directory) to the repository root holding hack/<name>.
func findScript(name string) (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		p := filepath.Join(dir, "hack", name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no hack/%s above the working directory", name)
		}
		dir = parent
	}
}

// skipOrFail skips the test, or fails it when CI=true: in CI a missing
// dependency must be loud, since a skipped test proves nothing.
func skipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a real Kubernetes API server is required: "+format, args...)
	}
	t.Skipf(format, args...)
}

// tail returns at most the last n bytes of b, for error messages that quote
// a process's log.
func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
