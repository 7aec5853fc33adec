package nodeworld

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The archive is a valid OCI layout: index → manifest → config and layer,
// each blob stored under its own digest, the layer holding every file with
// its parent directories and the symlinks.
func TestImageArchive(t *testing.T) {
	src := filepath.Join(t.TempDir(), "prog")
	if err := os.WriteFile(src, []byte("#!/bin/true\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img := &image{
		names:      []string{"weir.test/a:1", "weir.test/a:2"},
		entrypoint: []string{"/usr/bin/prog"},
		files:      map[string]string{"/usr/bin/prog": src},
		symlinks:   map[string]string{"/usr/bin/alias": "prog"},
		extra:      map[string][]byte{"/etc/marker": []byte("x\n")},
	}
	var buf bytes.Buffer
	if err := img.writeArchive(&buf); err != nil {
		t.Fatal(err)
	}
	blobs := map[string][]byte{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		blobs[h.Name] = b
	}
	var index struct {
		Manifests []ociDescriptor `json:"manifests"`
	}
	if err := json.Unmarshal(blobs["index.json"], &index); err != nil {
		t.Fatal(err)
	}
	if len(index.Manifests) != 2 || index.Manifests[1].Annotations["io.containerd.image.name"] != "weir.test/a:2" {
		t.Fatalf("index: %+v", index)
	}
	blob := func(d string) []byte {
		b, ok := blobs["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")]
		if !ok || digest(b) != d {
			t.Fatalf("blob %s missing or not matching its digest", d)
		}
		return b
	}
	var manifest struct {
		Config ociDescriptor   `json:"config"`
		Layers []ociDescriptor `json:"layers"`
	}
	if err := json.Unmarshal(blob(index.Manifests[0].Digest), &manifest); err != nil {
		t.Fatal(err)
	}
	var config struct {
		RootFS struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(blob(manifest.Config.Digest), &config); err != nil {
		t.Fatal(err)
	}
	if len(manifest.Layers) != 1 || config.RootFS.DiffIDs[0] != manifest.Layers[0].Digest {
		t.Fatalf("layer %v vs diff_ids %v", manifest.Layers, config.RootFS.DiffIDs)
	}
	var names []string
	lr := tar.NewReader(bytes.NewReader(blob(manifest.Layers[0].Digest)))
	for {
		h, err := lr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name+"|"+h.Linkname)
	}
	want := "etc/|,etc/marker|,usr/|,usr/bin/|,usr/bin/alias|prog,usr/bin/prog|"
	if strings.Join(names, ",") != want {
		t.Fatalf("layer entries %v, want %s", names, want)
	}
}

// The host's iptables, its extensions and their libraries are all found,
// with the dispatch names as symlinks.
func TestHostTools(t *testing.T) {
	files, links, err := hostTools()
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	for _, want := range []string{"/usr/sbin/xtables-nft-multi", xtablesDir + "/libxt_REDIRECT.so"} {
		if files[want] == "" {
			t.Errorf("%s missing", want)
		}
	}
	if links["/usr/sbin/iptables-legacy-restore"] != "xtables-legacy-multi" {
		t.Errorf("symlinks: %v", links)
	}
	var loader bool
	for f := range files {
		loader = loader || strings.Contains(f, "ld-linux")
	}
	if !loader {
		t.Errorf("no dynamic loader among %d files", len(files))
	}
}
