package install

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestParseFlags(t *testing.T) {
	o, err := ParseFlags([]string{"install", "--watch", "--cni-conf-dir=/host/etc/cni/net.d", "--cni-bin-dir", "/host/opt/cni/bin",
		"--mode=tproxy", "--agent-socket=/var/run/weir/a.sock", "--log-file=", "--debounce=1s", "--resync=0", "--log-level=debug"})
	if err != nil {
		t.Fatal(err)
	}
	if !o.Watch || o.ConfDir != "/host/etc/cni/net.d" || o.BinDir != "/host/opt/cni/bin" || o.Mode != "tproxy" ||
		o.AgentSocket != "/var/run/weir/a.sock" || o.LogFile != "" || o.Debounce != time.Second || o.Resync != 0 {
		t.Errorf("parsed %+v", o)
	}

	o, err = ParseFlags([]string{"uninstall", "--remove-binary", "--cni-conf-dir=/c"})
	if err != nil || !o.RemoveBinary || o.ConfDir != "/c" {
		t.Errorf("uninstall: %+v, %v", o, err)
	}

	for _, args := range [][]string{
		nil,
		{"deploy"},
		{"install", "--once", "--watch"},
		{"install", "--mode=ebpf"},
		{"install", "--agent-socket=relative.sock"},
		{"install", "--primary=../x.conflist"},
		{"install", "--debounce=0s"},
		{"install", "stray"},
		{"install", "--log-level=loud"},
		{"install", "--remove-binary"},
		{"uninstall", "--watch"},
	} {
		if _, err := ParseFlags(args); err == nil {
			t.Errorf("ParseFlags(%q) accepted", args)
		}
	}
}

func TestMainVerbs(t *testing.T) {
	n := newNode(t)
	n.write(t, "10-bridge.conflist", bridgeList, 0o644)
	base := []string{"--cni-conf-dir=" + n.conf, "--cni-bin-dir=" + n.bin}
	if code := Main(append([]string{"install", "--binary=" + n.src}, base...)); code != 0 {
		t.Fatalf("install exited %d", code)
	}
	requireChained(t, n, "10-bridge.conflist")
	if code := Main(append([]string{"uninstall", "--remove-binary"}, base...)); code != 0 {
		t.Fatalf("uninstall exited %d", code)
	}
	if strings.Contains(string(n.read(t, "10-bridge.conflist")), "weir-cni") {
		t.Error("entry left after uninstall")
	}
	if _, err := os.Stat(filepath.Join(n.bin, "weir-cni")); err == nil {
		t.Error("binary left after uninstall --remove-binary")
	}
	if code := Main([]string{"install", "--mode=bogus"}); code != 2 {
		t.Errorf("bad flag exited %d, want 2", code)
	}
	if code := Main(nil); code != 2 {
		t.Errorf("no verb exited %d, want 2", code)
	}
	// A failure after parsing exits 1 and writes nothing.
	n.write(t, "05-broken.conflist", "{", 0o644)
	if code := Main(append([]string{"install", "--binary=" + n.src}, base...)); code != 1 {
		t.Errorf("broken primary exited %d, want 1", code)
	}
}
