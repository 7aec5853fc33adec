// Package plugin implements weir-cni, a chained CNI plugin. It runs after the
// node's primary plugin, asks the agent whether the pod is captured, programs
// the redirect inside the pod's network namespace, and passes the primary
// plugin's result on unchanged.
//
// It refuses to run unchained (ADD needs a prevResult), fails closed when the
// agent cannot be reached for a pod the agent would capture, and writes
// nothing to stderr on success (libcni hands a plugin's stderr to the
// runtime); it logs to a file.
package plugin

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/weir-mesh/weir/agent/api"
)

// Conf is weir-cni's entry in a conflist.
type Conf struct {
	// The keys every plugin's config has (the spec's), as the CNI library
	// declares them, so that strict decoding accepts what it accepted.
	CNIVersion   string          `json:"cniVersion,omitempty"`
	Name         string          `json:"name,omitempty"`
	Type         string          `json:"type,omitempty"`
	Capabilities map[string]bool `json:"capabilities,omitempty"`
	IPAM         struct {
		Type string `json:"type,omitempty"`
	} `json:"ipam,omitempty"`
	DNS struct {
		Nameservers []string `json:"nameservers,omitempty"`
		Domain      string   `json:"domain,omitempty"`
		Search      []string `json:"search,omitempty"`
		Options     []string `json:"options,omitempty"`
	} `json:"dns,omitempty"`
	// ValidAttachments are the attachments a GC keeps.
	ValidAttachments []struct {
		ContainerID string `json:"containerID"`
		IfName      string `json:"ifname"`
	} `json:"cni.dev/valid-attachments,omitempty"`
	// AgentSocket is where the agent listens (default /run/weir/agent.sock).
	AgentSocket string `json:"agentSocket"`
	// Mode is the node's interception mode: redirect (default), tproxy or
	// ebpf (the agent's pinned eBPF capture; no rule in the pod). The agent
	// may choose another mode for a pod (per-pod override, or its
	// ebpfFallback when the node lacks eBPF support); the plugin applies
	// what the agent says.
	Mode string `json:"mode"`
	// LogFile receives the plugin's log lines (default /var/log/weir-cni.log);
	// "" after defaults is impossible, "-" disables logging. Like every path
	// key, it must be absolute.
	LogFile string `json:"logFile"`
	// LogLevel is debug, info (default), warn or error.
	LogLevel string `json:"logLevel"`
	// AgentTimeout bounds each call to the agent (default "10s").
	AgentTimeout string `json:"agentTimeout"`
	// EnablementFile lists the namespaces whose pods need the agent; the
	// agent keeps it current. When the agent cannot be reached, pods of
	// other namespaces start anyway. Default: enablement.json beside
	// agentSocket. A missing file means every pod needs the agent.
	EnablementFile string `json:"enablementFile"`

	// PrevResultJSON is the primary plugin's result as the runtime passed
	// it: weir-cni reads only the pod's addresses and prints the rest back
	// unchanged (prevresult.go).
	PrevResultJSON json.RawMessage `json:"prevResult,omitempty"`

	// Keys a runtime injects; accepted so strict decoding does not reject them.
	RuntimeConfig    json.RawMessage `json:"runtimeConfig,omitempty"`
	Args             json.RawMessage `json:"args,omitempty"`
	LegacyValidAttch json.RawMessage `json:"cni.dev/attachments,omitempty"`

	timeout time.Duration
	prev    *prevResult // nil without prevResult
}

// Defaults of the conflist keys.
const (
	DefaultLogFile = "/var/log/weir-cni.log"
	DefaultTimeout = 10 * time.Second
)

// parseConfig decodes the plugin's config strictly (an unknown key is almost
// always a typo that would silently change behaviour), fills defaults,
// validates, and parses prevResult when present.
func parseConfig(stdin []byte) (*Conf, error) {
	c := &Conf{}
	dec := json.NewDecoder(bytes.NewReader(stdin))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, newError(ErrDecodingFailure, "invalid weir-cni config", err.Error())
	}
	if c.AgentSocket == "" {
		c.AgentSocket = api.DefaultSocket
	}
	if c.EnablementFile == "" {
		c.EnablementFile = filepath.Join(filepath.Dir(c.AgentSocket), "enablement.json")
	}
	if c.Mode == "" {
		c.Mode = "redirect"
	}
	if c.LogFile == "" {
		c.LogFile = DefaultLogFile
	}
	if c.LogLevel == "" {
		c.LogLevel = "info"
	}
	c.timeout = DefaultTimeout
	if c.AgentTimeout != "" {
		d, err := time.ParseDuration(c.AgentTimeout)
		if err != nil || d <= 0 {
			return nil, newError(ErrInvalidNetworkConfig, "invalid weir-cni config",
				fmt.Sprintf("agentTimeout: want a positive duration such as \"10s\", got %q", c.AgentTimeout))
		}
		c.timeout = d
	}
	// Every path must be absolute: a relative one would resolve against
	// the runtime's working directory, wherever that is, and the log file
	// would be created there. Checked before anything opens a file.
	for _, p := range []struct {
		key, value string
		none       bool // "-" means none
	}{
		{"agentSocket", c.AgentSocket, false},
		{"enablementFile", c.EnablementFile, false},
		{"logFile", c.LogFile, true},
	} {
		if err := checkPath(p.key, p.value, p.none); err != nil {
			return nil, err
		}
	}
	// redirect.Mode's values, spelled out: this package links no rule code.
	switch c.Mode {
	case "redirect", "tproxy", "ebpf":
	default:
		return nil, newError(ErrInvalidNetworkConfig, "invalid weir-cni config",
			fmt.Sprintf("mode: want \"redirect\", \"tproxy\" or \"ebpf\", got %q", c.Mode))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return nil, newError(ErrInvalidNetworkConfig, "invalid weir-cni config",
			fmt.Sprintf("logLevel: want debug, info, warn or error, got %q", c.LogLevel))
	}
	if len(c.PrevResultJSON) > 0 && string(bytes.TrimSpace(c.PrevResultJSON)) != "null" {
		p, err := parsePrevResult(c.CNIVersion, c.PrevResultJSON)
		if err != nil {
			return nil, newError(ErrDecodingFailure, "invalid prevResult", err.Error())
		}
		c.prev = p
	}
	return c, nil
}

// checkPath refuses a path key that is not absolute (code 7, invalid
// config), naming the key; with none, "-" (no file at all) is allowed too.
func checkPath(key, value string, none bool) error {
	if filepath.IsAbs(value) || (none && value == "-") {
		return nil
	}
	want := "an absolute path"
	if none {
		want += ` or "-" for none`
	}
	return newError(ErrInvalidNetworkConfig, "invalid weir-cni config",
		fmt.Sprintf("%s: want %s, got %q (a relative path would resolve against the container runtime's working directory)", key, want, value))
}
