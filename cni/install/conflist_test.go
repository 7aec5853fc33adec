package install

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

const weirEntry = `{"type":"weir-cni","agentSocket":"/run/weir/agent.sock","mode":"redirect"}`

// pluginsOf returns the compacted plugin entries of a conflist.
func pluginsOf(t *testing.T, list []byte) []string {
	t.Helper()
	_, plugins, err := splitList(list)
	if err != nil {
		t.Fatalf("split %s: %v", list, err)
	}
	var out []string
	for _, p := range plugins {
		var b bytes.Buffer
		if err := json.Compact(&b, p); err != nil {
			t.Fatal(err)
		}
		out = append(out, b.String())
	}
	return out
}

func TestChain(t *testing.T) {
	bridge := `{"type":"bridge","bridge":"cni0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.22.0.0/16"}]]}}`
	portmap := `{"type":"portmap","capabilities":{"portMappings":true},"weight":1.50,"note":"caf\u00e9"}`
	other := `{"type":"weir-cni","agentSocket":"/other.sock","mode":"tproxy"}`
	list := func(plugins ...string) []byte {
		return []byte(`{"cniVersion":"1.0.0","name":"k8s","x-vendor":{"b":1,"a":2},"plugins":[` + strings.Join(plugins, ",") + `]}`)
	}
	tests := []struct {
		name    string
		in      []byte
		mode    chainMode
		want    []string // plugin entries, compacted
		changed bool
	}{
		{"append", list(bridge, portmap), replaceEntry, []string{bridge, portmap, weirEntry}, true},
		{"already last", list(bridge, weirEntry), replaceEntry, []string{bridge, weirEntry}, false},
		{"in the middle moves last", list(bridge, weirEntry, portmap), replaceEntry, []string{bridge, portmap, weirEntry}, true},
		{"duplicates collapse", list(weirEntry, bridge, weirEntry, weirEntry), replaceEntry, []string{bridge, weirEntry}, true},
		{"other settings replaced on install", list(bridge, other), replaceEntry, []string{bridge, weirEntry}, true},
		{"other settings kept by the watcher", list(bridge, other), keepEntry, []string{bridge, other}, false},
		{"watcher moves a kept entry last", list(other, bridge), keepEntry, []string{bridge, other}, true},
		{"watcher prefers the desired duplicate", list(bridge, weirEntry, other), keepEntry, []string{bridge, weirEntry}, true},
		{"watcher inserts when missing", list(bridge), keepEntry, []string{bridge, weirEntry}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, changed, err := chain(tt.in, json.RawMessage(weirEntry), "weir-cni", tt.mode)
			if err != nil {
				t.Fatal(err)
			}
			if changed != tt.changed {
				t.Errorf("changed = %v, want %v", changed, tt.changed)
			}
			if !changed && !bytes.Equal(out, tt.in) {
				t.Errorf("unchanged result differs from input:\n%s", out)
			}
			got := pluginsOf(t, out)
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("plugins:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if err := checkList(out, "weir-cni"); err != nil {
				t.Error(err)
			}
			// Top-level members keep their order and bytes.
			obj, err := parseObject(out)
			if err != nil {
				t.Fatal(err)
			}
			var keys []string
			for _, m := range obj {
				keys = append(keys, m.key)
			}
			if strings.Join(keys, ",") != "cniVersion,name,x-vendor,plugins" {
				t.Errorf("key order %v", keys)
			}
			if v, _ := obj.get("x-vendor"); !sameBytesCompact(v, `{"b":1,"a":2}`) {
				t.Errorf("x-vendor = %s", v)
			}
		})
	}
}

func sameBytesCompact(raw []byte, want string) bool {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return false
	}
	return b.String() == want
}

func TestChainRefuses(t *testing.T) {
	for name, in := range map[string]string{
		"not JSON":       `{"cniVersion":"1.0.0",`,
		"array":          `[{"type":"bridge"}]`,
		"no plugins":     `{"cniVersion":"1.0.0","name":"k8s"}`,
		"empty plugins":  `{"cniVersion":"1.0.0","name":"k8s","plugins":[]}`,
		"plugins object": `{"cniVersion":"1.0.0","name":"k8s","plugins":{"type":"bridge"}}`,
		"only weir":      `{"cniVersion":"1.0.0","name":"k8s","plugins":[` + `{"type":"weir-cni"}` + `]}`,
		"trailing data":  `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}]} {}`,
		"trailing comma": `{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"}],}`,
	} {
		t.Run(name, func(t *testing.T) {
			if out, _, err := chain([]byte(in), json.RawMessage(weirEntry), "weir-cni", replaceEntry); err == nil {
				t.Fatalf("chain accepted %s, wrote %s", in, out)
			}
		})
	}
}

func TestUnchain(t *testing.T) {
	in := []byte(`{"cniVersion":"1.0.0","name":"k8s","plugins":[{"type":"bridge"},` + weirEntry + `,{"type":"portmap"},` + weirEntry + `]}`)
	out, changed, err := unchain(in, "weir-cni")
	if err != nil || !changed {
		t.Fatalf("unchain: changed=%v err=%v", changed, err)
	}
	if got := strings.Join(pluginsOf(t, out), " "); got != `{"type":"bridge"} {"type":"portmap"}` {
		t.Errorf("plugins after unchain: %s", got)
	}
	again, changed, err := unchain(out, "weir-cni")
	if err != nil || changed || !bytes.Equal(again, out) {
		t.Errorf("second unchain: changed=%v err=%v", changed, err)
	}
}

func TestConfToList(t *testing.T) {
	conf := []byte(`{"cniVersion":"1.0.0","name":"mynet","type":"bridge","ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}`)
	list, err := confToList(conf)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := parseObject(list)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := obj.get("name"); string(v) != `"mynet"` {
		t.Errorf("name = %s", v)
	}
	if v, _ := obj.get("cniVersion"); string(v) != `"1.0.0"` {
		t.Errorf("cniVersion = %s", v)
	}
	if got := pluginsOf(t, list); len(got) != 1 || got[0] != string(conf) {
		t.Errorf("plugins = %v", got)
	}
}
