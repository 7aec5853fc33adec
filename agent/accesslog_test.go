package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	l7 "github.com/weir-mesh/weir/proxy/http"
)

func TestAccessLogConfig(t *testing.T) {
	c, err := ParseConfig(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.AccessLog != (AccessLog{SampleRate: 1, Path: "-"}) {
		t.Errorf("defaults %+v", c.AccessLog)
	}
	if al, err := openAccessLog(c.AccessLog); al != nil || err != nil {
		t.Errorf("disabled: %v, %v; want nil, nil", al, err)
	}
	for _, tc := range []struct{ yaml, want string }{
		{"accessLog:\n  sampleRate: 1.5\n", "accessLog.sampleRate: want 0 up to 1, got 1.5"},
		{"accessLog:\n  sampleRate: -0.1\n", "accessLog.sampleRate"},
		{"accessLog:\n  path: access.log\n", `accessLog.path: want - (stderr) or an absolute path, got "access.log"`},
		{"accessLog:\n  enable: true\n", `unknown field "enable"`},
	} {
		if _, err := ParseConfig([]byte(tc.yaml)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: error %v, want one containing %q", tc.yaml, err, tc.want)
		}
	}

	path := filepath.Join(t.TempDir(), "access.log")
	os.WriteFile(path, []byte("earlier\n"), 0o600)
	c, err = ParseConfig([]byte("accessLog:\n  enabled: true\n  sampleRate: 0.25\n  path: " + path + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	al, err := openAccessLog(c.AccessLog)
	if err != nil || al == nil {
		t.Fatalf("enabled: %v, %v", al, err)
	}
	al.Write(&l7.Entry{Time: time.Now(), Pod: "p", Status: 503, GRPC: -1, BytesIn: -1, BytesOut: -1})
	b, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(b), "earlier\n{") || !strings.Contains(string(b), `"status":503`) {
		t.Errorf("file %q: want the line appended", b)
	}
	if _, err := openAccessLog(AccessLog{Enabled: true, Path: "/nonexistent/dir/access.log"}); err == nil || !strings.Contains(err.Error(), "accessLog.path") {
		t.Errorf("unopenable file: %v", err)
	}
}
