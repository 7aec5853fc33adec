package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/weir-mesh/weir/agent/api"
)

// TestLinksNoRuleCode: the binary a runtime starts at every pod ADD links
// none of the rule code, nor the installer (that is the point of the split:
// docs/design.md, "Who programs the rules"), nor what its start would pay
// for without using it: the CNI library (cni/plugin has its own
// dispatcher), package net and regexp.
func TestLinksNoRuleCode(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	for _, dep := range strings.Fields(string(out)) {
		for _, banned := range []string{"github.com/weir-mesh/weir/redirect", "github.com/weir-mesh/weir/bpf", "github.com/google/nftables", "netlink", "github.com/cilium/ebpf", "net/http",
			"github.com/weir-mesh/weir/cni/install", "github.com/weir-mesh/weir/cni/convert", "github.com/containernetworking/cni", "net", "regexp"} {
			// net/netip (address parsing, no init) is not net.
			if dep == banned || (banned != "net" && strings.HasPrefix(dep, banned+"/")) || (banned == "netlink" && strings.Contains(dep, "netlink")) {
				t.Errorf("weir-cni links %s", dep)
			}
		}
	}
}

// fakeAgent answers weir-cni's calls on a unix socket the way an agent of
// some release would: add answers what addResp says. It records the
// request lines it got.
type fakeAgent struct {
	sock    string
	addResp api.AddResponse
	mu      sync.Mutex
	calls   []string
}

func startFakeAgent(t *testing.T, dir string, add api.AddResponse) *fakeAgent {
	t.Helper()
	a := &fakeAgent{sock: filepath.Join(dir, "agent.sock"), addResp: add}
	ln, err := net.Listen("unix", a.sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.calls = append(a.calls, r.URL.RequestURI())
		a.mu.Unlock()
		var v any = struct{}{}
		switch r.URL.Path {
		case api.PathAdd:
			v = a.addResp
		case api.PathCheck:
			v = api.CheckResponse{Captured: true, Listening: true, Redirect: a.addResp.Redirect}
		case api.PathDel:
			v = api.DelResponse{Known: true}
		}
		json.NewEncoder(w).Encode(v)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return a
}

func (a *fakeAgent) got() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.calls...)
}

// buildThin builds weir-cni as make does, into dir.
func buildThin(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "weir-cni")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build weir-cni: %v\n%s", err, out)
	}
	return bin
}

// writeHelper puts a stand-in weir-cni-rules in dir that records its
// stdin and verb and answers marker: what weir-cni hands over must arrive
// whole, and what the helper answers must reach the runtime unchanged.
func writeHelper(t *testing.T, dir, marker string, exit int) {
	t.Helper()
	script := "#!/bin/sh\ncat > \"$HELPER_OUT.stdin\"\necho \"$CNI_COMMAND\" > \"$HELPER_OUT.verb\"\necho '" + marker + "'\nexit " + string(rune('0'+exit)) + "\n"
	if err := os.WriteFile(filepath.Join(dir, "weir-cni-rules"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
}

// TestThinHandsRuleWorkToHelper runs the real weir-cni binary against an
// agent stand-in: an ADD the agent programmed needs no helper; an ADD an
// older agent answered (no Applied), a CHECK, and a DEL the agent did not
// serve are handed to weir-cni-rules with the same config, and its answer
// and exit status are the runtime's; with no helper installed, the verb
// fails with a CNI error naming it; an agent that could not program the
// rules fails the ADD with code 101.
func TestThinHandsRuleWorkToHelper(t *testing.T) {
	if testing.Short() && os.Getenv("CI") != "true" {
		t.Skip("builds weir-cni (-short); under CI=true it always runs")
	}
	binDir := t.TempDir()
	bin := buildThin(t, binDir)
	redir := &api.Redirect{Mode: "redirect", OutboundPort: 15001, InboundPort: 15006, Mark: 0x539, Mask: 0xfff, IPv4: true, Backend: "nftables"}
	prev := `{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.1.0.5/24","interface":0}]}`

	for _, c := range []struct {
		name      string
		verb      string
		add       api.AddResponse
		helper    bool
		wantOut   string // stdout, trimmed
		wantCode  int    // CNI error code, 0 for success
		wantMsg   string
		wantCalls string // the agent calls, joined by spaces
		helperRan bool
		prev      string // the case's prevResult, when not prev
	}{
		{name: "agent applied", verb: "ADD", add: api.AddResponse{Captured: true, Redirect: redir, Applied: true}, helper: true,
			wantOut: prev, wantCalls: api.PathAdd + "?" + api.QueryApply},
		{name: "older agent", verb: "ADD", add: api.AddResponse{Captured: true, Redirect: redir}, helper: true,
			wantOut: "HELPER", wantCalls: api.PathAdd + "?" + api.QueryApply, helperRan: true},
		{name: "older agent, no helper", verb: "ADD", add: api.AddResponse{Captured: true, Redirect: redir},
			wantCode: 101, wantMsg: "weir-cni-rules is not installed", wantCalls: api.PathAdd + "?" + api.QueryApply},
		{name: "agent could not apply", verb: "ADD", add: api.AddResponse{Captured: true, Redirect: redir, ApplyError: "nft: boom"}, helper: true,
			wantCode: 101, wantMsg: "nft: boom", wantCalls: api.PathAdd + "?" + api.QueryApply},
		{name: "prevResult in another version", verb: "ADD", add: api.AddResponse{Captured: true, Redirect: redir, Applied: true}, helper: true,
			prev: `{"interfaces":[{"name":"eth0"}],"ips":[{"address":"10.1.0.5/24","interface":0}]}`, wantOut: "HELPER", helperRan: true},
		{name: "check", verb: "CHECK", add: api.AddResponse{Captured: true, Redirect: redir}, helper: true,
			wantOut: "HELPER", helperRan: true},
		{name: "check, no helper", verb: "CHECK", wantCode: 102, wantMsg: "weir-cni-rules is not installed"},
		{name: "del the agent did not serve", verb: "DEL", helper: true,
			wantOut: "HELPER", wantCalls: api.PathDel, helperRan: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			pathDir := filepath.Join(dir, "bin")
			if err := os.Mkdir(pathDir, 0o755); err != nil {
				t.Fatal(err)
			}
			thin := filepath.Join(pathDir, "weir-cni")
			if err := os.Link(bin, thin); err != nil {
				t.Fatal(err)
			}
			if c.helper {
				writeHelper(t, pathDir, "HELPER", 0)
			}
			agent := startFakeAgent(t, dir, c.add)
			p := prev
			if c.prev != "" {
				p = c.prev
			}
			conf := `{"cniVersion":"1.0.0","name":"t","type":"weir-cni","agentSocket":"` + agent.sock + `","logFile":"-","prevResult":` + p + `}`
			if c.verb == "DEL" {
				conf = `{"cniVersion":"1.0.0","name":"t","type":"weir-cni","agentSocket":"` + agent.sock + `","logFile":"-"}`
			}
			cmd := exec.Command(thin)
			cmd.Stdin = strings.NewReader(conf)
			var stdout bytes.Buffer
			cmd.Stdout = &stdout
			out := filepath.Join(dir, "helper")
			netns := "/proc/self/ns/net" // a namespace file; the agent stand-in has no guard
			if c.verb == "DEL" {
				// weir-cni itself refuses to enter the node's namespace on
				// DEL; a path that is gone may be entered (and nothing is
				// there to take out).
				netns = filepath.Join(dir, "gone-netns")
			}
			cmd.Env = []string{"CNI_COMMAND=" + c.verb, "CNI_CONTAINERID=c1", "CNI_NETNS=" + netns, "CNI_NETNS_OVERRIDE=1",
				"CNI_IFNAME=eth0", "CNI_PATH=" + pathDir, "CNI_ARGS=K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p", "HELPER_OUT=" + out}
			err := cmd.Run()
			got := strings.TrimSpace(stdout.String())
			if c.wantCode == 0 {
				if err != nil || got != c.wantOut {
					t.Fatalf("%s: err %v, stdout %q; want success with %q", c.verb, err, got, c.wantOut)
				}
			} else {
				var ee *exec.ExitError
				var e struct {
					Code uint   `json:"code"`
					Msg  string `json:"msg"`
					Det  string `json:"details"`
				}
				if !errors.As(err, &ee) || json.Unmarshal(stdout.Bytes(), &e) != nil || int(e.Code) != c.wantCode || !strings.Contains(e.Msg+" "+e.Det, c.wantMsg) {
					t.Fatalf("%s: err %v, stdout %q; want CNI error %d with %q", c.verb, err, got, c.wantCode, c.wantMsg)
				}
			}
			stdin, rerr := os.ReadFile(out + ".stdin")
			if ran := rerr == nil; ran != c.helperRan {
				t.Fatalf("helper ran: %v, want %v", ran, c.helperRan)
			}
			if c.helperRan {
				verb, _ := os.ReadFile(out + ".verb")
				if string(stdin) != conf || strings.TrimSpace(string(verb)) != c.verb {
					t.Fatalf("helper got verb %q and stdin %q; want %s and the config weir-cni was given", verb, stdin, c.verb)
				}
			}
			if c.prev != "" && len(agent.got()) != 0 {
				t.Fatalf("weir-cni called the agent (%v) before handing the ADD over; the helper makes its own call", agent.got())
			}
			if c.wantCalls != "" {
				if calls := strings.Join(agent.got(), " "); calls != c.wantCalls {
					t.Fatalf("agent calls %q, want %q", calls, c.wantCalls)
				}
			}
		})
	}
}
