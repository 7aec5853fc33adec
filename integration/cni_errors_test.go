package integration

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/integration/testworld"
	"github.com/weir-mesh/weir/redirect"
)

// cniError is the error JSON a CNI plugin prints on failure.
type cniError struct {
	CNIVersion string `json:"cniVersion"`
	Code       uint   `json:"code"`
	Msg        string `json:"msg"`
	Details    string `json:"details"`
}

// runPlugin runs weir-cni as a runtime would, with env and stdin, and returns
// its exit error, stdout and stderr.
func runPlugin(t *testing.T, node *testworld.Node, command, netns, stdin string) (error, []byte, []byte) {
	t.Helper()
	cmd := exec.Command(filepath.Join(node.Bin, "weir-cni"))
	cmd.Env = []string{
		"CNI_COMMAND=" + command, "CNI_CONTAINERID=direct-1", "CNI_NETNS=" + netns, "CNI_IFNAME=eth0",
		"CNI_PATH=" + node.Bin, "CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=direct",
	}
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := node.Do(func() error { return cmd.Run() })
	return err, out.Bytes(), errb.Bytes()
}

// Must show 7: each bad input is a CNI error JSON with a code and a message,
// and changes nothing.
func TestPluginRejectsBadInput(t *testing.T) {
	node := testworld.NewNode(t, testworld.NodeOptions{})
	agent := node.StartAgent(t, map[string]any{"capture": map[string]any{"namespaces": []string{"demo"}}})
	pod := node.NewPodNetns(t, "demo", "direct")
	prev := `"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"` + pod.Path + `"}],"ips":[{"address":"10.22.0.9/16","interface":0}]}`
	base := `"cniVersion":"1.0.0","name":"weir-test","type":"weir-cni","agentSocket":"` + node.Socket + `","logFile":"` + node.CNILog + `"`
	cases := []struct {
		name, netns, conf string
		code              uint
		msgHas            string
	}{
		{"malformed JSON", pod.Path, `{` + base + `,`, 6, ""},
		{"unknown key", pod.Path, `{` + base + `,"agentSockett":"/x",` + prev + `}`, 6, "agentSockett"},
		{"missing prevResult", pod.Path, `{` + base + `}`, 7, "chained"},
		{"unknown mode", pod.Path, `{` + base + `,"mode":"turbo",` + prev + `}`, 7, "turbo"},
		{"relative agent socket", pod.Path, `{` + base + `,"agentSocket":"agent.sock",` + prev + `}`, 7, "agentSocket"},
		{"netns does not exist", "/run/netns/weir-no-such-netns", `{` + base + `,` + prev + `}`, 8, "weir-no-such-netns"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err, stdout, stderr := runPlugin(t, node, "ADD", c.netns, c.conf)
			if err == nil {
				t.Fatalf("ADD succeeded; stdout %s", stdout)
			}
			var e cniError
			if jerr := json.Unmarshal(stdout, &e); jerr != nil {
				t.Fatalf("stdout is not CNI error JSON: %v: %q (stderr %q)", jerr, stdout, stderr)
			}
			if e.Code == 0 || e.Msg == "" {
				t.Fatalf("error without code or message: %+v", e)
			}
			if e.Code != c.code {
				t.Errorf("code %d, want %d (%+v)", e.Code, c.code, e)
			}
			if c.msgHas != "" && !strings.Contains(e.Msg+" "+e.Details, c.msgHas) {
				t.Errorf("error %+v does not mention %q", e, c.msgHas)
			}
			if installed, err := redirect.Installed(pod.Path); err != nil || installed {
				t.Fatalf("rejected ADD changed the pod netns: installed=%v err=%v", installed, err)
			}
			if n := agent.Metric(t, "weir_pods_captured"); n != 0 {
				t.Fatalf("agent holds %v pods after a rejected ADD", n)
			}
		})
	}
	// A well-formed ADD through the same path works, and prints prevResult
	// unchanged, with nothing on stderr.
	err, stdout, stderr := runPlugin(t, node, "ADD", pod.Path, `{`+base+`,`+prev+`}`)
	if err != nil {
		t.Fatalf("valid ADD: %v: %s %s", err, stdout, stderr)
	}
	if len(stderr) != 0 {
		t.Errorf("plugin wrote to stderr on success: %q", stderr)
	}
	var res map[string]any
	if err := json.Unmarshal(stdout, &res); err != nil || res["ips"] == nil {
		t.Fatalf("ADD did not print prevResult: %q", stdout)
	}
	if err, out, _ := runPlugin(t, node, "DEL", pod.Path, `{`+base+`}`); err != nil {
		t.Fatalf("DEL: %v: %s", err, out)
	}
}

// Issue 15, part 4: a relative path in the conflist is refused (code 7,
// naming the key) and nothing is created in the runtime's working
// directory ("logFile": "ebpf" used to leave a file named ebpf there).
func TestPluginRejectsRelativePaths(t *testing.T) {
	bin := filepath.Join(testworld.Binaries(t), "weir-cni")
	base := `"cniVersion":"1.0.0","name":"weir-test","type":"weir-cni"`
	for _, c := range []struct{ key, conf string }{
		{"logFile", `"logFile":"ebpf"`},
		{"logFile", `"logFile":"logs/weir-cni.log","agentSocket":"/run/weir-test-none/agent.sock"`},
		{"agentSocket", `"agentSocket":"agent.sock","logFile":"-"`},
		{"enablementFile", `"enablementFile":"enablement.json","logFile":"-"`},
	} {
		t.Run(c.conf, func(t *testing.T) {
			cwd := t.TempDir()
			for _, command := range []string{"ADD", "DEL", "CHECK"} {
				cmd := exec.Command(bin)
				cmd.Dir = cwd
				cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_CONTAINERID=rel-1", "CNI_NETNS=/run/netns/weir-no-such-netns", "CNI_IFNAME=eth0", "CNI_PATH=" + filepath.Dir(bin)}
				cmd.Stdin = strings.NewReader(`{` + base + `,` + c.conf + `}`)
				var out bytes.Buffer
				cmd.Stdout = &out
				if err := cmd.Run(); err == nil {
					t.Fatalf("%s succeeded: %s", command, out.String())
				}
				var e cniError
				if err := json.Unmarshal(out.Bytes(), &e); err != nil {
					t.Fatalf("%s: stdout is not CNI error JSON: %v: %q", command, err, out.String())
				}
				if e.Code != 7 || !strings.Contains(e.Details, c.key+": want an absolute path") {
					t.Fatalf("%s: %+v, want code 7 naming %s", command, e, c.key)
				}
			}
			if ents, _ := os.ReadDir(cwd); len(ents) != 0 {
				t.Fatalf("a refused config left %v in the working directory", ents)
			}
		})
	}
}
