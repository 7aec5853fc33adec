package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestWriteFileAtomic: the directory is made when missing, a second write
// replaces the first whole, the file is private, and no temporary file is
// left behind.
func TestWriteFileAtomic(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pods")
	path := filepath.Join(dir, "a.json")
	for _, v := range []string{`{"long":"` + strings.Repeat("x", 9000) + `"}`, `{}`} {
		if err := writeFileAtomic(path, []byte(v)); err != nil {
			t.Fatalf("write %d bytes: %v", len(v), err)
		}
		b, err := os.ReadFile(path)
		if err != nil || string(b) != v {
			t.Fatalf("read back %d bytes: got %d, %v", len(v), len(b), err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, %v; want 0600", fi.Mode(), err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != 1 {
		t.Fatalf("directory holds %v (%v), want only a.json", ents, err)
	}
	if err := writeFileAtomic(filepath.Join(path, "under-a-file"), nil); err == nil {
		t.Fatal("a file's path used as a directory was accepted")
	}
}
