package nodeworld

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
)

// imageEnv is the PATH every image gets; the weir image's programs are
// found by name there.
var imageEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}

// importImages builds the node's images from this repository and the host,
// and imports them into containerd. Nothing is pulled: the pods' images are
// all present, under the references the manifests name.
func (n *Node) importImages(t *testing.T) {
	t.Helper()
	bin := filepath.Join(n.Dir, "build")
	root, err := moduleRoot()
	if err != nil {
		t.Fatalf("module root: %v", err)
	}
	// Static, like the Makefile's weir-cni: the images hold no libc for
	// Go programs.
	// As the Makefile builds them, so the go build cache of `make build`
	// and of the other integration tests serves: weir-cni (and nodetest,
	// the pause process too) static, weir-agent with cgo, its libraries
	// copied into the image like iptables'.
	for _, b := range []struct {
		cgo  string
		pkgs []string
	}{
		{"0", []string{"./cni/cmd/weir-cni", "./cni/cmd/weir-cni-rules", "./integration/nodeworld/nodetest"}},
		{"", []string{"./agent/cmd/weir-agent"}},
	} {
		cmd := exec.Command("go", append([]string{"build", "-o", bin + "/"}, b.pkgs...)...)
		cmd.Dir = root
		if b.cgo != "" {
			cmd.Env = append(os.Environ(), "CGO_ENABLED="+b.cgo)
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %v: %v\n%s", b.pkgs, err, out)
		}
	}
	tools, links, err := hostTools()
	if err != nil {
		testworld.Require(t, false, "host iptables/nft for the weir image: "+err.Error())
	}
	agentLibs, err := sharedLibs(filepath.Join(bin, "weir-agent"))
	if err != nil {
		t.Fatal(err)
	}
	weir := func(names []string, marker string) *image {
		files := map[string]string{
			"/usr/local/bin/weir-agent": filepath.Join(bin, "weir-agent"),
			"/usr/local/bin/weir-cni":   filepath.Join(bin, "weir-cni"),
			// weir-cni's rules helper, beside it (docs/install.md).
			"/usr/local/bin/weir-cni-rules": filepath.Join(bin, "weir-cni-rules"),
		}
		for k, v := range tools {
			files[k] = v
		}
		for _, l := range agentLibs {
			files[l] = l
		}
		// docs/install.md requires it: CNI_NETNS from containerd names
		// /var/run/netns/…, which the agent must resolve inside its
		// container, where only /run/netns is mounted.
		symlinks := map[string]string{"/var/run": "../run"}
		for k, v := range links {
			symlinks[k] = v
		}
		return &image{
			names: names, env: imageEnv, files: files, symlinks: symlinks,
			extra: map[string][]byte{"/etc/weir-image": []byte(marker + "\n")},
		}
	}
	nodetest := map[string]string{"/nodetest": filepath.Join(bin, "nodetest")}
	images := []*image{
		{names: []string{PauseImage}, entrypoint: []string{"/nodetest", "pause"}, env: imageEnv, files: nodetest},
		{names: []string{TestImage}, entrypoint: []string{"/nodetest", "serve"}, env: imageEnv, files: nodetest},
		weir([]string{WeirImage}, WeirImage),
		weir([]string{WeirImageNext}, WeirImageNext),
	}
	for i, img := range images {
		path := filepath.Join(n.Dir, fmt.Sprintf("image-%d.tar", i))
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		err = img.writeArchive(f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			t.Fatalf("build image %v: %v", img.names, err)
		}
		if _, err := n.ctr("images", "import", path); err != nil {
			t.Fatalf("import image %v: %v", img.names, err)
		}
		os.Remove(path)
	}
	out, err := n.ctr("images", "ls", "-q")
	if err != nil {
		t.Fatal(err)
	}
	for _, img := range images {
		for _, name := range img.names {
			if !strings.Contains(out, name) {
				t.Fatalf("image %s missing after import; containerd has:\n%s", name, out)
			}
		}
	}
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", err
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}
