package plugin

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	prev := `,"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.22.0.9/16"}]}`
	base := `"cniVersion":"1.0.0","name":"n","type":"weir-cni"`
	c, err := parseConfig([]byte(`{` + base + prev + `}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.AgentSocket != "/run/weir/agent.sock" || c.Mode != "redirect" || c.LogFile != DefaultLogFile || c.timeout != DefaultTimeout || c.prev == nil || len(c.prev.ips) != 1 || c.prev.ips[0] != "10.22.0.9/16" {
		t.Fatalf("defaults: %+v", c)
	}
	// "-" is a log file of none; absolute paths are taken as they are.
	c, err = parseConfig([]byte(`{` + base + `,"logFile":"-","agentSocket":"/x/a.sock","enablementFile":"/y/e.json"}`))
	if err != nil || c.LogFile != "-" || c.AgentSocket != "/x/a.sock" || c.EnablementFile != "/y/e.json" {
		t.Fatalf("absolute paths and logFile \"-\": %+v %v", c, err)
	}
	// Every mode weir implements is accepted.
	for _, m := range []string{"redirect", "tproxy", "ebpf"} {
		if _, err := parseConfig([]byte(`{` + base + `,"mode":"` + m + `"}`)); err != nil {
			t.Fatalf("mode %s rejected: %v", m, err)
		}
	}
	// Keys a runtime injects are accepted.
	if _, err := parseConfig([]byte(`{` + base + `,"runtimeConfig":{"portMappings":[]},"args":{"cni":{}},"capabilities":{"portMappings":true}}`)); err != nil {
		t.Fatalf("runtime-injected keys rejected: %v", err)
	}
	for _, tc := range []struct {
		name, conf string
		code       uint
		want       string
	}{
		{"typo", `{` + base + `,"agentSockt":"/x"}`, ErrDecodingFailure, "agentSockt"},
		{"mode", `{` + base + `,"mode":"fast"}`, ErrInvalidNetworkConfig, "fast"},
		{"timeout", `{` + base + `,"agentTimeout":"0s"}`, ErrInvalidNetworkConfig, "agentTimeout"},
		{"log level", `{` + base + `,"logLevel":"chatty"}`, ErrInvalidNetworkConfig, "logLevel"},
		{"socket", `{` + base + `,"agentSocket":"rel"}`, ErrInvalidNetworkConfig, "agentSocket"},
		{"socket dot", `{` + base + `,"agentSocket":"./run/agent.sock"}`, ErrInvalidNetworkConfig, "agentSocket"},
		{"log file", `{` + base + `,"logFile":"ebpf"}`, ErrInvalidNetworkConfig, `logFile: want an absolute path or "-" for none, got "ebpf"`},
		{"log file dir", `{` + base + `,"logFile":"logs/weir-cni.log"}`, ErrInvalidNetworkConfig, "logFile"},
		{"enablement file", `{` + base + `,"enablementFile":"enablement.json"}`, ErrInvalidNetworkConfig, `enablementFile: want an absolute path, got "enablement.json"`},
		{"enablement file none", `{` + base + `,"enablementFile":"-"}`, ErrInvalidNetworkConfig, "enablementFile"},
		{"prevResult", `{` + base + `,"prevResult":{"cniVersion":"1.0.0","ips":"no"}}`, ErrDecodingFailure, "prevResult"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseConfig([]byte(tc.conf))
			e, ok := err.(*Error)
			if !ok {
				t.Fatalf("error %v (%T), want *Error", err, err)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg+e.Details, tc.want) {
				t.Fatalf("got %+v, want code %d mentioning %q", e, tc.code, tc.want)
			}
		})
	}
}

func TestPodFromArgs(t *testing.T) {
	p, err := podFromArgs("IgnoreUnknown=1;K8S_POD_NAMESPACE=demo;K8S_POD_NAME=web-0;K8S_POD_UID=u1;OTHER=x")
	if err != nil || p.Namespace != "demo" || p.Name != "web-0" || p.UID != "u1" {
		t.Fatalf("podFromArgs: %+v %v", p, err)
	}
}
