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
