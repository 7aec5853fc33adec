package agent

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadWriteSmall checks the sysctl file helpers against os's: a value
// longer than the buffer, a short one over a longer one (truncated, as
// os.WriteFile does), and a missing directory (fs.ErrNotExist).
func TestReadWriteSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcp_timestamps")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{strings.Repeat("4096 ", 20) + "\n", "2\n", "1"} {
		if err := writeSmall(path, v); err != nil {
			t.Fatalf("write %q: %v", v, err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != v {
			t.Fatalf("after writing %q the file holds %q (%v)", v, b, err)
		}
		var buf [4]byte
		got, err := readSmall(path, buf[:])
		if err != nil || string(got) != v {
			t.Fatalf("read back %q: got %q, %v", v, got, err)
		}
	}
	missing := filepath.Join(t.TempDir(), "no", "such")
	if _, err := readSmall(missing, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read a missing file: %v", err)
	}
	if err := writeSmall(missing, "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("write a missing file: %v", err)
	}
}

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
