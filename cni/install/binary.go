package install

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// installBinary copies src to dir/name unless a file with the same content is
// already there. The copy is written to a temporary file in dir and renamed,
// so a runtime executing the plugin at that moment runs either the old binary
// or the new one, never a truncated file. It reports whether it wrote.
func installBinary(src, dir, name string) (bool, error) {
	dst := filepath.Join(dir, name)
	same, err := sameContent(src, dst)
	if err != nil {
		return false, err
	}
	if same {
		return false, nil
	}
	in, err := os.Open(src)
	if err != nil {
		return false, fmt.Errorf("open plugin binary: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create CNI bin dir: %w", err)
	}
	tmp, err := os.CreateTemp(dir, tempPrefix+name+"-*.tmp")
	if err != nil {
		return false, fmt.Errorf("copy plugin binary to %s: %w", dir, err)
	}
	ok := false
	defer func() {
		if !ok {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if _, err := io.Copy(tmp, in); err != nil {
		return false, fmt.Errorf("copy %s to %s: %w", src, tmp.Name(), err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		return false, fmt.Errorf("chmod %s: %w", tmp.Name(), err)
	}
	if err := tmp.Sync(); err != nil {
		return false, fmt.Errorf("sync %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return false, fmt.Errorf("close %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return false, fmt.Errorf("rename %s to %s: %w", tmp.Name(), dst, err)
	}
	ok = true
	syncDir(dir)
	return true, nil
}

// sameContent reports whether dst exists with exactly src's bytes.
func sameContent(src, dst string) (bool, error) {
	si, err := os.Stat(src)
	if err != nil {
		return false, fmt.Errorf("plugin binary: %w", err)
	}
	if !si.Mode().IsRegular() {
		return false, fmt.Errorf("plugin binary %s is not a regular file", src)
	}
	di, err := os.Stat(dst)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("stat %s: %w", dst, err)
	}
	if si.Size() != di.Size() || di.Mode().Perm()&0o111 == 0 {
		return false, nil
	}
	hs, err := fileHash(src)
	if err != nil {
		return false, err
	}
	hd, err := fileHash(dst)
	if err != nil {
		return false, err
	}
	return bytes.Equal(hs, hd), nil
}

func fileHash(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("hash %s: %w", path, err)
	}
	return h.Sum(nil), nil
}
