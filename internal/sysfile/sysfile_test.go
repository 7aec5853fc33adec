package sysfile

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadWriteSmall checks Read and Write against os's: a value
// longer than the buffer, a short one over a longer one (truncated, as
// os.WriteFile does), and a missing directory (fs.ErrNotExist).
func TestReadWriteSmall(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tcp_timestamps")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, v := range []string{strings.Repeat("4096 ", 20) + "\n", "2\n", "1"} {
		if err := Write(path, v); err != nil {
			t.Fatalf("write %q: %v", v, err)
		}
		if b, err := os.ReadFile(path); err != nil || string(b) != v {
			t.Fatalf("after writing %q the file holds %q (%v)", v, b, err)
		}
		var buf [4]byte
		got, err := Read(path, buf[:])
		if err != nil || string(got) != v {
			t.Fatalf("read back %q: got %q, %v", v, got, err)
		}
	}
	missing := filepath.Join(t.TempDir(), "no", "such")
	if _, err := Read(missing, nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("read a missing file: %v", err)
	}
	if err := Write(missing, "1"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("write a missing file: %v", err)
	}
}

// TestReadLonger reads a file longer than the buffer given, one that
// fits, and one that is missing (which must still be fs.ErrNotExist, as
// redirect's legacyTables relies on).
func TestReadLonger(t *testing.T) {
	dir := t.TempDir()
	long := strings.Repeat("nat filter mangle raw security\n", 40)
	for _, content := range []string{long, "nat\n", ""} {
		path := filepath.Join(dir, "f")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		var buf [16]byte
		got, err := Read(path, buf[:])
		if err != nil || string(got) != content {
			t.Fatalf("read %d bytes: got %q, %v", len(content), got, err)
		}
	}
	if _, err := Read(filepath.Join(dir, "missing"), nil); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v, want fs.ErrNotExist", err)
	}
}
