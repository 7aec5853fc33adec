package nodeworld

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
)

// image is a single-layer OCI image built from files on this machine, with
// no registry and no image builder: the layer is a plain tar, written with
// its config and manifest into an OCI image layout that
// `ctr images import` reads.
type image struct {
	// names are the references the image is imported under, e.g.
	// "ghcr.io/weir-mesh/weir:dev" (the manifest's own reference, so
	// imagePullPolicy IfNotPresent finds it and nothing is pulled).
	names      []string
	entrypoint []string
	env        []string
	// files maps a path in the image (absolute) to a file on this machine;
	// symlinks maps a path in the image to its link target.
	files    map[string]string
	symlinks map[string]string
	// extra maps a path in the image to literal content, e.g. a marker
	// that makes two tags of one image different images.
	extra map[string][]byte
}

// ociDescriptor is the OCI content descriptor (image-spec descriptor.md).
type ociDescriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *ociPlatform      `json:"platform,omitempty"`
}

type ociPlatform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

const (
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// writeArchive writes img as an OCI image layout in tar form to out.
func (img *image) writeArchive(out io.Writer) error {
	layer, err := img.layer()
	if err != nil {
		return err
	}
	layerDigest := digest(layer)
	config, err := json.Marshal(map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config": map[string]any{
			"Entrypoint": img.entrypoint,
			"Env":        img.env,
		},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDigest}},
	})
	if err != nil {
		return fmt.Errorf("image config: %w", err)
	}
	manifest, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     mediaManifest,
		"config":        ociDescriptor{MediaType: mediaConfig, Digest: digest(config), Size: int64(len(config))},
		"layers":        []ociDescriptor{{MediaType: mediaLayer, Digest: layerDigest, Size: int64(len(layer))}},
	})
	if err != nil {
		return fmt.Errorf("image manifest: %w", err)
	}
	var manifests []ociDescriptor
	for _, name := range img.names {
		manifests = append(manifests, ociDescriptor{
			MediaType: mediaManifest, Digest: digest(manifest), Size: int64(len(manifest)),
			Platform: &ociPlatform{Architecture: "amd64", OS: "linux"},
			Annotations: map[string]string{
				// containerd names the imported image by this annotation.
				"io.containerd.image.name":          name,
				"org.opencontainers.image.ref.name": name[strings.LastIndex(name, ":")+1:],
			},
		})
	}
	index, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests})
	if err != nil {
		return fmt.Errorf("image index: %w", err)
	}
	tw := tar.NewWriter(out)
	entries := []struct {
		name string
		data []byte
	}{
		{"oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		{"index.json", index},
		{"blobs/sha256/" + strings.TrimPrefix(digest(manifest), "sha256:"), manifest},
		{"blobs/sha256/" + strings.TrimPrefix(digest(config), "sha256:"), config},
		{"blobs/sha256/" + strings.TrimPrefix(layerDigest, "sha256:"), layer},
	}
	for _, e := range entries {
		if err := tw.WriteHeader(&tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg}); err != nil {
			return fmt.Errorf("archive %s: %w", e.name, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return fmt.Errorf("archive %s: %w", e.name, err)
		}
	}
	return tw.Close()
}

// layer returns the image's filesystem as an uncompressed tar, with every
// parent directory as an entry of its own, in a stable order.
func (img *image) layer() ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	var paths []string
	for p := range img.files {
		paths = append(paths, p)
	}
	for p := range img.symlinks {
		paths = append(paths, p)
	}
	for p := range img.extra {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	addDirs := func(p string) error {
		var parents []string
		for d := path.Dir(p); d != "/" && !dirs[d]; d = path.Dir(d) {
			parents = append(parents, d)
		}
		for i := len(parents) - 1; i >= 0; i-- {
			dirs[parents[i]] = true
			hdr := &tar.Header{Name: strings.TrimPrefix(parents[i], "/") + "/", Mode: 0o755, Typeflag: tar.TypeDir}
			if err := tw.WriteHeader(hdr); err != nil {
				return fmt.Errorf("layer dir %s: %w", parents[i], err)
			}
		}
		return nil
	}
	for _, p := range paths {
		if err := addDirs(p); err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(p, "/")
		if target, ok := img.symlinks[p]; ok {
			if err := tw.WriteHeader(&tar.Header{Name: name, Linkname: target, Mode: 0o777, Typeflag: tar.TypeSymlink}); err != nil {
				return nil, fmt.Errorf("layer symlink %s: %w", p, err)
			}
			continue
		}
		data, mode := img.extra[p], int64(0o644)
		if src, ok := img.files[p]; ok {
			b, err := os.ReadFile(src)
			if err != nil {
				return nil, fmt.Errorf("layer file %s: %w", p, err)
			}
			fi, err := os.Stat(src)
			if err != nil {
				return nil, fmt.Errorf("layer file %s: %w", p, err)
			}
			data, mode = b, int64(fi.Mode().Perm())
		}
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: mode, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", p, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("layer file %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close layer: %w", err)
	}
	return buf.Bytes(), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}
