package testworld

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// Binaries builds weir-cni (and its rules helper), weir-agent and weirctl once per test binary and returns the
// directory holding them.
func Binaries(t T) string {
	t.Helper()
	buildOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "weir-bin-")
		if err != nil {
			buildErr = err
			return
		}
		for _, pkg := range []string{"./cni/cmd/weir-cni", "./cni/cmd/weir-cni-rules", "./agent/cmd/weir-agent", "./agent/cmd/weirctl"} {
			cmd := exec.Command("go", "build", "-o", dir, pkg)
			cmd.Dir = root
			if strings.HasPrefix(pkg, "./cni/cmd/") {
				// As the Makefile builds it: see there.
				cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = &buildError{pkg: pkg, out: string(out), err: err}
				return
			}
		}
		binDir = dir
	})
	if buildErr != nil {
		t.Fatalf("build weir binaries: %v", buildErr)
	}
	return binDir
}

// RemoveBuilds deletes what Binaries and Pump built, once a test binary's
// tests are done (call it from TestMain after m.Run): each test binary
// builds its own copies, about 120 MB, and nothing else removes them.
func RemoveBuilds() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	if pumpBin != "" {
		os.RemoveAll(filepath.Dir(pumpBin))
	}
}

type buildError struct {
	pkg, out string
	err      error
}

func (e *buildError) Error() string { return e.pkg + ": " + e.err.Error() + "\n" + e.out }

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// DebianPlugins is where Debian's containernetworking-plugins (spec ≤ 1.0.0) live.
const DebianPlugins = "/usr/lib/cni"

var (
	upstreamOnce sync.Once
	upstreamDir  string
	upstreamErr  error
)

// PluginDir returns the reference plugins for a CNI spec version: Debian's for
// 1.0.0, upstream v1.7+ (built by hack/cni-plugins.sh, cached) for 1.1.0.
func PluginDir(t T, specVersion string) string {
	t.Helper()
	if specVersion != "1.1.0" {
		_, err := os.Stat(filepath.Join(DebianPlugins, "bridge"))
		Require(t, err == nil, "Debian package containernetworking-plugins ("+DebianPlugins+"/bridge)")
		return DebianPlugins
	}
	upstreamOnce.Do(func() {
		if d := os.Getenv("WEIR_CNI_PLUGINS_DIR"); d != "" {
			upstreamDir = d
			return
		}
		upstreamDir, upstreamErr = runHackDir("cni-plugins.sh")
	})
	if upstreamErr != nil {
		Require(t, false, "upstream CNI plugins v1.7.1 (hack/cni-plugins.sh failed: "+upstreamErr.Error()+")")
	}
	_, err := os.Stat(filepath.Join(upstreamDir, "bridge"))
	Require(t, err == nil, "upstream CNI plugins in "+upstreamDir)
	return upstreamDir
}

// AgentBuild builds weir-agent once more with extra linker flags (a test
// that needs two releases of the agent: -X ...agent.Release=N+1) into a
// directory of the test's, and returns the binary's path.
func AgentBuild(t T, ldflags string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("build weir-agent: %v", err)
	}
	dir, err := os.MkdirTemp("", "weir-agent-build-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", dir, "./agent/cmd/weir-agent")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build weir-agent -ldflags %q: %v\n%s", ldflags, err, out)
	}
	return filepath.Join(dir, "weir-agent")
}

// runHackDir runs a cached-build script of hack/ and returns the directory
// it prints as its last line.
func runHackDir(script string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	cmd := exec.Command(filepath.Join(root, "hack", script))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("hack/%s: %w: %s", script, err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1], nil
}

var (
	pumpOnce sync.Once
	pumpBin  string
	pumpErr  error
)

// Pump builds the pump test program (integration/testworld/pump: bulk
// streams and small messages checked byte for byte) once per test binary
// and returns its path. Run it in a pod with Netns.Command or Start, so it
// lives in the pod's cgroup as an app does.
func Pump(t T) string {
	t.Helper()
	pumpOnce.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			pumpErr = err
			return
		}
		dir, err := os.MkdirTemp("", "weir-pump-")
		if err != nil {
			pumpErr = err
			return
		}
		cmd := exec.Command("go", "build", "-o", dir, "./integration/testworld/pump")
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			pumpErr = &buildError{pkg: "pump", out: string(out), err: err}
			return
		}
		pumpBin = filepath.Join(dir, "pump")
	})
	if pumpErr != nil {
		t.Fatalf("build the pump test program: %v", pumpErr)
	}
	return pumpBin
}
