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
	if dir := os.Getenv(BinDirEnv); dir != "" {
		if err := checkBinDir(dir); err != nil {
			return "", fmt.Errorf("%w: %s=%s: %w (run hack/kube-binaries.sh)", errMissing, BinDirEnv, dir, err)
		}
		return dir, nil
	}
	script, err := findScript()
	if err != nil {
		return "", fmt.Errorf("%w: %s is unset and %w", errMissing, BinDirEnv, err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command("bash", script)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("%w: %s failed: %w\n%s", errMissing, script, err, tail(stderr.Bytes(), 4096))
	}
	lines := strings.Split(strings.TrimSpace(stdout.String()), "\n")
	dir := strings.TrimSpace(lines[len(lines)-1])
	if err := checkBinDir(dir); err != nil {
		return "", fmt.Errorf("%w: %s printed %q: %w", errMissing, script, dir, err)
	}
	return dir, nil
}

// checkBinDir reports the first binary that dir lacks or cannot execute.
func checkBinDir(dir string) error {
	for _, name := range binaries {
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
// directory) to the repository root holding hack/kube-binaries.sh.
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("get working directory: %w", err)
	}
	for {
		p := filepath.Join(dir, "hack", "kube-binaries.sh")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no hack/kube-binaries.sh above the working directory")
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
