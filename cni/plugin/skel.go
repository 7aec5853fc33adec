package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/sys/unix"
)

// This file is the plugins' CNI dispatcher: it reads the verb and its
// arguments from the environment and the config from stdin, checks them
// and the config's CNI version as the spec asks, calls the verb, and prints
// its error. It answers as containernetworking/cni's skel package does
// (skel_test.go runs both on the same inputs and requires the same
// answers), without linking that library.
//
// Why not the library: weir-cni is a process a container runtime starts at
// every pod ADD and waits for. The library's dispatcher decodes the config
// twice more than the plugin does, validates names with regular
// expressions compiled at every start, and pulls in the library's result
// types with their package initialisation; in a perf profile of weir-cni
// under weir-addbench (150 ADDs and DELs, 2026-11-30) its dispatcher alone
// held about 7 % of the samples.

// CmdArgs are one verb's arguments, from the runtime's environment and
// stdin.
type CmdArgs struct {
	ContainerID   string
	Netns         string
	IfName        string
	Args          string
	Path          string
	NetnsOverride string
	StdinData     []byte
}

// verbs are the plugin's CNI verbs; a nil one does nothing and succeeds.
type verbs struct {
	add, del, check, gc, status func(*CmdArgs) error
}

// supportedVersions are the CNI spec versions the plugins speak; the last
// is the one VERSION answers in.
var supportedVersions = []string{"1.0.0", "1.1.0"}

// env is the process environment a dispatch reads (a function so tests can
// hand it another).
type env struct {
	getenv func(string) string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
}

// dispatch runs the verb in CNI_COMMAND; nil means success (the verb
// printed its result).
func dispatch(e env, v verbs, about string) *Error {
	cmd, args, err := argsFromEnv(e)
	if err != nil {
		if err.Code == ErrInvalidEnvironmentVariables && e.getenv("CNI_COMMAND") == "" && about != "" {
			// Run by hand: say what this is.
			fmt.Fprintln(e.stderr, about)
			fmt.Fprintf(e.stderr, "CNI protocol versions supported: %s\n", strings.Join(supportedVersions, ", "))
			return nil
		}
		return err
	}
	switch cmd {
	case "ADD":
		if err := callChecked(args, v.add); err != nil {
			return err
		}
		return notOwnNetns(args)
	case "DEL":
		if err := callChecked(args, v.del); err != nil {
			return err
		}
		return notOwnNetns(args)
	case "CHECK":
		return callSince(args, "0.4.0", "CHECK", v.check)
	case "GC":
		return callSince(args, "1.1.0", "GC", v.gc)
	case "STATUS":
		return callSince(args, "1.1.0", "STATUS", v.status)
	case "VERSION":
		b, _ := json.Marshal(struct {
			CNIVersion        string   `json:"cniVersion"`
			SupportedVersions []string `json:"supportedVersions,omitempty"`
		}{supportedVersions[len(supportedVersions)-1], supportedVersions})
		if _, err := e.stdout.Write(append(b, '\n')); err != nil {
			return newError(ErrIOFailure, err.Error(), "")
		}
		return nil
	}
	return newError(ErrInvalidEnvironmentVariables, fmt.Sprintf("unknown CNI_COMMAND: %v", cmd), "")
}

// argsFromEnv reads the verb's arguments: each variable the verb requires
// must be set, the container ID and interface name must be valid, and,
// but for VERSION, the config must name its network validly.
func argsFromEnv(e env) (string, *CmdArgs, *Error) {
	cmd := e.getenv("CNI_COMMAND")
	a := &CmdArgs{
		ContainerID: e.getenv("CNI_CONTAINERID"), Netns: e.getenv("CNI_NETNS"), IfName: e.getenv("CNI_IFNAME"),
		Args: e.getenv("CNI_ARGS"), Path: e.getenv("CNI_PATH"), NetnsOverride: e.getenv("CNI_NETNS_OVERRIDE"),
	}
	pod := cmd == "ADD" || cmd == "CHECK" || cmd == "DEL"
	var missing []string
	for _, v := range []struct {
		name     string
		val      string
		required bool
		validate func(string) *Error
	}{
		{"CNI_COMMAND", cmd, true, nil},
		{"CNI_CONTAINERID", a.ContainerID, pod, validContainerID},
		{"CNI_NETNS", a.Netns, cmd == "ADD" || cmd == "CHECK", nil},
		{"CNI_IFNAME", a.IfName, pod, validIfName},
		{"CNI_PATH", a.Path, pod || cmd == "GC" || cmd == "STATUS", nil},
	} {
		switch {
		case v.val == "" && v.required:
			missing = append(missing, v.name)
		case v.val != "" && v.required && v.validate != nil:
			if err := v.validate(v.val); err != nil {
				return "", nil, err
			}
		}
	}
	if len(missing) > 0 {
		return "", nil, newError(ErrInvalidEnvironmentVariables, fmt.Sprintf("required env variables [%s] missing", strings.Join(missing, ",")), "")
	}
	if cmd == "VERSION" {
		return cmd, a, nil
	}
	stdin, err := io.ReadAll(e.stdin)
	if err != nil {
		return "", nil, newError(ErrIOFailure, fmt.Sprintf("error reading from stdin: %v", err), "")
	}
	a.StdinData = stdin
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return "", nil, newError(ErrDecodingFailure, fmt.Sprintf("error unmarshall network config: %v", err), "")
	}
	if conf.Name == "" {
		return "", nil, newError(ErrInvalidNetworkConfig, "missing network name", "")
	}
	if !validName(conf.Name) {
		return "", nil, newError(ErrInvalidNetworkConfig, "invalid characters found in network name", conf.Name)
	}
	return cmd, a, nil
}

// callChecked calls verb if the config's CNI version is one the plugins
// speak. A verb's error that is no *Error becomes an internal one.
func callChecked(a *CmdArgs, verb func(*CmdArgs) error) *Error {
	v, err := configVersion(a.StdinData)
	if err != nil {
		return newError(ErrDecodingFailure, err.Error(), "")
	}
	if !slices.Contains(supportedVersions, v) {
		return newError(ErrIncompatibleCNIVersion, "incompatible CNI versions", fmt.Sprintf("config is %q, plugin supports %q", v, supportedVersions))
	}
	if verb == nil {
		return nil
	}
	if err := verb(a); err != nil {
		var e *Error
		if errors.As(err, &e) {
			return e
		}
		return newError(ErrInternal, err.Error(), "")
	}
	return nil
}

// callSince calls a verb the spec added in version since, for a config of
// that version or later that the plugins speak.
func callSince(a *CmdArgs, since, name string, verb func(*CmdArgs) error) *Error {
	v, err := configVersion(a.StdinData)
	if err != nil {
		return newError(ErrDecodingFailure, err.Error(), "")
	}
	ok, err := versionAtLeast(v, since)
	if err != nil {
		return newError(ErrDecodingFailure, err.Error(), "")
	}
	if !ok {
		return newError(ErrIncompatibleCNIVersion, "config version does not allow "+name, "")
	}
	for _, pv := range supportedVersions {
		ok, err := versionAtLeast(pv, v)
		if err != nil {
			return newError(ErrDecodingFailure, err.Error(), "")
		}
		if ok {
			return callChecked(a, verb)
		}
	}
	return newError(ErrIncompatibleCNIVersion, "plugin version does not allow "+name, "")
}

// notOwnNetns refuses, after an ADD or a DEL, a CNI_NETNS that is the
// plugin's own network namespace, unless CNI_NETNS_OVERRIDE says the
// runtime means it (the spec's check, kept where the CNI library makes it).
// A path that cannot be opened passes: DEL of a namespace that is gone.
func notOwnNetns(a *CmdArgs) *Error {
	if o := a.NetnsOverride; strings.EqualFold(o, "true") || o == "1" {
		return nil
	}
	var st, own unix.Stat_t
	if unix.Stat(a.Netns, &st) != nil {
		return nil
	}
	if err := unix.Stat(fmt.Sprintf("/proc/%d/task/%d/ns/net", unix.Getpid(), unix.Gettid()), &own); err != nil {
		return newError(ErrInvalidNetNS, "get plugin's netns failed", "")
	}
	if st.Dev == own.Dev && st.Ino == own.Ino {
		return newError(ErrInvalidNetNS, "plugin's netns and netns from CNI_NETNS should not be the same", "")
	}
	return nil
}

// configVersion is the config's cniVersion; none means 0.1.0.
func configVersion(stdin []byte) (string, error) {
	var conf struct {
		CNIVersion string `json:"cniVersion"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return "", fmt.Errorf("decoding version from network config: %w", err)
	}
	if conf.CNIVersion == "" {
		return "0.1.0", nil
	}
	return conf.CNIVersion, nil
}

// versionAtLeast reports whether version a is b or later; both are
// major[.minor[.micro]] ("" is 0.1.0).
func versionAtLeast(a, b string) (bool, error) {
	pa, err := parseVersion(a)
	if err != nil {
		return false, err
	}
	pb, err := parseVersion(b)
	if err != nil {
		return false, err
	}
	for i := range pa {
		if pa[i] != pb[i] {
			return pa[i] > pb[i], nil
		}
	}
	return true, nil
}

func parseVersion(v string) ([3]int, error) {
	if v == "" {
		return [3]int{0, 1, 0}, nil
	}
	parts := strings.Split(v, ".")
	if len(parts) >= 4 {
		return [3]int{}, fmt.Errorf("invalid version %q: too many parts", v)
	}
	var out [3]int
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil {
			return [3]int{}, fmt.Errorf("failed to convert %s version part %q: %w", [...]string{"major", "minor", "micro"}[i], p, err)
		}
		out[i] = n
	}
	return out, nil
}

// validName: a container ID or network name starts with a letter or digit
// and has only letters, digits, '_', '.' and '-'.
func validName(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if !alnum && (i == 0 || (c != '_' && c != '.' && c != '-')) {
			return false
		}
	}
	return s != ""
}

func validContainerID(id string) *Error {
	if !validName(id) {
		return newError(ErrInvalidEnvironmentVariables, "invalid characters in containerID", id)
	}
	return nil
}

// validIfName: the kernel's rules for an interface name.
func validIfName(name string) *Error {
	switch {
	case len(name) > unix.IFNAMSIZ-1:
		return newError(ErrInvalidEnvironmentVariables, "interface name is too long", fmt.Sprintf("interface name should be less than %d characters", unix.IFNAMSIZ))
	case name == "." || name == "..":
		return newError(ErrInvalidEnvironmentVariables, "interface name is . or ..", "")
	}
	for _, r := range name {
		if r == '/' || r == ':' || unicode.IsSpace(r) {
			return newError(ErrInvalidEnvironmentVariables, "interface name contains / or : or whitespace characters", "")
		}
	}
	return nil
}
