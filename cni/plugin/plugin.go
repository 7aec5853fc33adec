package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-mesh/weir/agent/api"
)

// Error codes of weir-cni beyond the CNI spec's well-known ones (the spec
// leaves 100 and above to plugins).
const (
	// ErrPluginNotAvailable is the spec's code for STATUS "not ready".
	ErrPluginNotAvailable uint = 50
	// ErrAgentRefused: the agent answered, with an error.
	ErrAgentRefused uint = 100
	// ErrRedirect: the redirect could not be programmed (nothing was left).
	ErrRedirect uint = 101
	// ErrCheck: CHECK found the pod's capture incomplete.
	ErrCheck uint = 102
)

// processStart is when the plugin process began, as near as Go can tell.
var processStart = time.Now()

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// funcs are the plugin's verbs for the dispatcher. With rules, the plugin programs,
// verifies and removes rules itself (the weir-cni-rules helper). Without
// (nil: weir-cni, which links no rule code), ADD asks the agent to program
// the rules, and whatever still needs rule code in this process (CHECK, a
// DEL the agent could not serve, an ADD answered by an older agent) is
// handed to the helper (delegate.go).
func funcs(rules Rules) verbs {
	p := &plugin{rules: rules}
	return verbs{add: p.cmdAdd, del: p.cmdDel, check: p.cmdCheck, status: cmdStatus, gc: cmdGC}
}

// plugin is one process's verbs.
type plugin struct {
	rules Rules // nil: delegate rule work to the helper
}

// cmdAdd: parse, require prevResult, ask the agent (to program the
// redirect too, when this process has no rule code), program the redirect
// if the agent did not, print prevResult unchanged.
func (pl *plugin) cmdAdd(args *CmdArgs) error {
	mainStart := time.Now()
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	log := conf.logger().With("verb", "ADD", "container", args.ContainerID, "netns", args.Netns)
	if conf.prev == nil {
		return newError(ErrInvalidNetworkConfig, "weir-cni must be chained after a primary plugin",
			"no prevResult in the config: list weir-cni after the plugin that creates the interface")
	}
	if conf.prev.unconverted && pl.rules == nil {
		// Not the config's version: the helper links the CNI library's
		// conversion, and does the whole ADD (the agent answers its ADD as
		// it would this one's).
		log.Info("prevResult in another CNI version than the config's; handing the ADD to the rules helper")
		return delegate(args, ErrDecodingFailure)
	}
	parseTook := time.Since(mainStart)
	netnsStart := time.Now()
	if err := checkNetns(args.Netns); err != nil {
		return err
	}
	netnsTook := time.Since(netnsStart)
	pod, err := podFromArgs(args.Args)
	if err != nil {
		return err
	}
	ips := conf.prev.ips
	client := newAgentClient(conf)
	att := api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}
	var resp api.AddResponse
	path := api.PathAdd
	if pl.rules == nil {
		path += "?" + api.QueryApply
	}
	agentStart := time.Now()
	err = client.call(methodPost, path, api.AddRequest{
		Version: api.Version, Attachment: att, Netns: args.Netns, Pod: pod, IPs: ips, Mode: conf.Mode,
	}, &resp)
	agentTook := time.Since(agentStart)
	if err != nil {
		var ue *unreachableError
		if errors.As(err, &ue) && !conf.needsAgent(pod.Namespace) {
			// Fail closed only for pods the agent would capture: this
			// namespace is not enabled, so the pod starts as it would
			// without weir (the agent onboards it if that changes).
			log.Warn("agent unreachable; namespace not enabled, pod starts uncaptured", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			return conf.prev.print(conf.CNIVersion)
		}
		log.Error("agent add failed", "pod", pod.Namespace+"/"+pod.Name, "err", err)
		return agentCallError("ADD", conf, err)
	}
	if !resp.Captured {
		log.Info("pod not captured", "pod", pod.Namespace+"/"+pod.Name, "reason", resp.Reason)
		return conf.prev.print(conf.CNIVersion)
	}
	if resp.Redirect == nil {
		return newError(ErrAgentRefused, "weir-agent answered captured without a redirect spec", "agent and plugin versions disagree")
	}
	if resp.ApplyError != "" {
		// The agent was asked to program the rules and could not: nothing
		// is left in the namespace, and it released the pod's listeners.
		log.Error("agent could not program the redirect", "err", resp.ApplyError)
		return newError(ErrRedirect, "cannot program capture in pod netns "+args.Netns, resp.ApplyError)
	}
	spec := *resp.Redirect
	rulePhases := map[string]int64{}
	var redirectTook time.Duration
	switch {
	case resp.Applied:
		redirectTook = time.Duration(resp.Timings["apply"]) * time.Microsecond
	case pl.rules == nil:
		// An agent from before api.QueryApply answered: it opened the
		// listeners but programmed nothing. The helper does the ADD as
		// weir-cni did then (the agent answers its repeated ADD from what
		// it holds).
		log.Info("agent did not program the redirect; handing the ADD to the rules helper", "pod", pod.Namespace+"/"+pod.Name)
		return delegate(args, ErrRedirect)
	default:
		applyStart := time.Now()
		trace := func(phase string, took time.Duration) { rulePhases[phase] += took.Microseconds() }
		if err := pl.rules.Apply(args.Netns, spec, trace); err != nil {
			// Nothing was applied (Apply is all or nothing); let the agent
			// close the listeners it opened for us.
			if derr := client.call(methodPost, api.PathDel, api.DelRequest{Version: api.Version, Attachment: att, Netns: args.Netns, Pod: pod}, nil); derr != nil {
				log.Warn("rollback: agent del failed", "err", derr)
			}
			log.Error("apply redirect failed", "err", err)
			return newError(ErrRedirect, "cannot program capture in pod netns "+args.Netns, err.Error())
		}
		redirectTook = time.Since(applyStart)
	}
	// Where an ADD spends its time, for whoever chases its latency
	// (weir-addbench reads these): the plugin's own steps, the agent's
	// phases as it reports them (with the redirect's, as rules.*, when the
	// agent programmed it), the redirect's phases when this process did,
	// and the CPU time this process used so far (the rest of its wall time
	// it waited).
	log.Info("pod captured", "pod", pod.Namespace+"/"+pod.Name, "mode", spec.Mode, "backend", spec.Backend, "ipv4", spec.IPv4, "ipv6", spec.IPv6,
		"rulesByAgent", resp.Applied,
		"agentMicros", agentTook.Microseconds(), "redirectMicros", redirectTook.Microseconds(), "sinceStartMicros", time.Since(processStart).Microseconds(),
		"mainMicros", time.Since(mainStart).Microseconds(), "parseMicros", parseTook.Microseconds(), "netnsMicros", netnsTook.Microseconds(),
		"cpuMicros", processCPU().Microseconds(), "agentPhases", resp.Timings, "rulePhases", rulePhases)
	return conf.prev.print(conf.CNIVersion)
}

// cmdDel tells the agent, which takes weir's rules out of the pod's
// namespace (and releases the kernel's sockets in the background: see
// agent's del), then removes whatever the agent did not say it removed
// (the rules helper does, for weir-cni). It needs no prevResult and
// succeeds for a netns that is gone, a pod never added, a second DEL, and
// an agent that cannot be reached (its sweep and GC release what it held).
// A netns that is the node's, or no network namespace, is never entered
// (netns.go).
func (pl *plugin) cmdDel(args *CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	log := conf.logger().With("verb", "DEL", "container", args.ContainerID, "netns", args.Netns)
	pod, _ := podFromArgs(args.Args)
	var resp api.DelResponse
	err = newAgentClient(conf).call(methodPost, api.PathDel, api.DelRequest{
		Version: api.Version, Attachment: api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}, Netns: args.Netns, Pod: pod,
	}, &resp)
	if err != nil {
		log.Warn("agent del failed; it will release the pod on its own", "err", err)
	}
	if args.Netns == "" || resp.RulesRemoved {
		log.Info("pod deleted", "known", resp.Known, "rulesRemovedByAgent", resp.RulesRemoved)
		return nil
	}
	if resp.Refused != "" {
		// The agent's guard: the node's namespace, no network namespace,
		// or another pod's.
		log.Warn("DEL names a namespace weir never captures for this pod; leaving it untouched", "why", resp.Refused)
		return nil
	}
	if why := netnsRefusal(args.Netns); why != "" {
		log.Warn("DEL names a namespace weir never captures; leaving it untouched", "why", why)
		return nil
	}
	if pl.rules == nil {
		return delegate(args, ErrRedirect)
	}
	if err := pl.rules.Remove(args.Netns); err != nil {
		log.Error("remove redirect failed", "err", err)
		return newError(ErrRedirect, "cannot remove capture from pod netns "+args.Netns, err.Error())
	}
	log.Info("pod deleted", "known", resp.Known, "rulesRemovedByAgent", false)
	return nil
}

// cmdCheck fails, naming what is missing, when the capture the agent expects
// is not fully in place. It reads the rules one by one, which needs the
// rule code: weir-cni hands CHECK to the rules helper whole (runtimes call
// CHECK rarely, and never on a pod's way up).
func (pl *plugin) cmdCheck(args *CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	if pl.rules == nil {
		return delegate(args, ErrCheck)
	}
	if conf.prev == nil {
		return newError(ErrInvalidNetworkConfig, "weir-cni must be chained after a primary plugin", "no prevResult in the config")
	}
	if err := checkNetns(args.Netns); err != nil {
		return err
	}
	pod, err := podFromArgs(args.Args)
	if err != nil {
		return err
	}
	var resp api.CheckResponse
	err = newAgentClient(conf).call(methodPost, api.PathCheck, api.CheckRequest{
		Version: api.Version, Attachment: api.Attachment{ContainerID: args.ContainerID, IfName: args.IfName}, Netns: args.Netns, Pod: pod,
	}, &resp)
	if err != nil {
		return agentCallError("CHECK", conf, err)
	}
	if !resp.Captured {
		installed, err := pl.rules.Installed(args.Netns)
		if err != nil {
			return newError(ErrCheck, "cannot read rules in pod netns "+args.Netns, err.Error())
		}
		if installed {
			return newError(ErrCheck, "weir rules present in a pod the agent does not capture", "netns "+args.Netns)
		}
		return nil
	}
	if !resp.Listening || resp.Redirect == nil {
		return newError(ErrCheck, "weir-agent holds no capture listener for this pod", "container "+args.ContainerID+": delete and re-add the pod, or restart the agent to reconcile")
	}
	if err := pl.rules.Verify(args.Netns, *resp.Redirect); err != nil {
		return newError(ErrCheck, "weir capture incomplete in pod netns "+args.Netns, err.Error())
	}
	return nil
}

// cmdStatus reports whether the agent is up to serve ADDs.
func cmdStatus(args *CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var resp api.StatusResponse
	if err := newAgentClient(conf).call(methodGet, api.PathStatus, nil, &resp); err != nil {
		return newError(ErrPluginNotAvailable, "weir-agent not available", err.Error())
	}
	if !resp.Ready {
		return newError(ErrPluginNotAvailable, "weir-agent not ready", resp.Error)
	}
	return nil
}

// cmdGC hands the runtime's list of live attachments to the agent, which
// releases the rest.
func cmdGC(args *CmdArgs) error {
	conf, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid := make([]api.Attachment, 0, len(conf.ValidAttachments))
	for _, a := range conf.ValidAttachments {
		valid = append(valid, api.Attachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	var resp api.GCResponse
	if err := newAgentClient(conf).call(methodPost, api.PathGC, api.GCRequest{Version: api.Version, Valid: valid}, &resp); err != nil {
		return agentCallError("GC", conf, err)
	}
	conf.logger().Info("gc", "valid", len(valid), "released", resp.Released)
	return nil
}

func agentCallError(verb string, conf *Conf, err error) error {
	var ue *unreachableError
	if errors.As(err, &ue) {
		return newError(ErrTryAgainLater,
			fmt.Sprintf("weir-agent unreachable at %s", conf.AgentSocket),
			fmt.Sprintf("%s needs the node agent: %v; is weir-agent running on this node?", verb, ue.err))
	}
	var ae *agentError
	if errors.As(err, &ae) {
		return newError(ErrAgentRefused, "weir-agent refused "+verb, ae.msg)
	}
	return newError(ErrInternal, "weir-agent call failed", err.Error())
}

// needsAgent reports whether pods of namespace must wait for the agent,
// from the enablement file the agent keeps. Without a readable file nobody
// can tell, so every pod waits (fail closed).
func (c *Conf) needsAgent(namespace string) bool {
	b, err := os.ReadFile(c.EnablementFile)
	if err != nil {
		return true
	}
	var e struct {
		Namespaces []string `json:"namespaces"`
	}
	if json.Unmarshal(b, &e) != nil || e.Namespaces == nil {
		return true
	}
	return slices.Contains(e.Namespaces, namespace)
}

// checkNetns fails clearly (code 8) when the runtime passed a netns path
// that is not there or is no namespace file at all, before anything else is
// touched. Which namespace it is (the node's own, another type, another
// pod's) is the agent's guard to judge: it refuses those (code 100).
func checkNetns(path string) error {
	if path == "" {
		return newError(ErrInvalidEnvironmentVariables, "CNI_NETNS is empty", "weir-cni needs the pod's network namespace")
	}
	// statfs(2) on the path, not os.Open: the first file os opens
	// registers with Go's network poller (an epoll instance and an eventfd
	// made, a regular file refused, its O_NONBLOCK set and cleared again),
	// a dozen system calls this one-verb process never needs.
	var fs unix.Statfs_t
	if err := ignoringEINTR(func() error { return unix.Statfs(path, &fs) }); err != nil {
		return newError(ErrInvalidNetNS, "pod netns "+path+" cannot be opened", fmt.Sprintf("statfs %s: %v", path, err))
	}
	// A namespace file is on nsfs (procfs on kernels before 3.19).
	if fs.Type != unix.NSFS_MAGIC && fs.Type != unix.PROC_SUPER_MAGIC {
		return newError(ErrInvalidNetNS, "pod netns "+path+" is not a network namespace",
			fmt.Sprintf("%s is on a file system of type %#x, not nsfs", path, fs.Type))
	}
	return nil
}

// podFromArgs reads the pod from the CNI_ARGS a Kubernetes runtime passes
// ("K=V;K=V"): K8S_POD_NAMESPACE, K8S_POD_NAME and K8S_POD_UID. It reads
// them as the CNI library's LoadArgs does with IgnoreUnknown set: every
// pair must be one K=V, other keys are ignored unless the args themselves
// say IgnoreUnknown=false.
func podFromArgs(s string) (api.Pod, error) {
	var p api.Pod
	if s == "" {
		return p, nil
	}
	bad := func(format string, a ...any) (api.Pod, error) {
		return api.Pod{}, newError(ErrInvalidEnvironmentVariables, "invalid CNI_ARGS", fmt.Sprintf(format, a...))
	}
	ignoreUnknown := true
	var unknown []string
	for _, pair := range strings.Split(s, ";") {
		k, v, ok := strings.Cut(pair, "=")
		if !ok || strings.Contains(v, "=") {
			return bad("ARGS: invalid pair %q", pair)
		}
		switch k {
		case "K8S_POD_NAMESPACE":
			p.Namespace = v
		case "K8S_POD_NAME":
			p.Name = v
		case "K8S_POD_UID":
			p.UID = v
		case "K8S_POD_INFRA_CONTAINER_ID":
		case "IgnoreUnknown":
			switch strings.ToLower(v) {
			case "1", "true":
				ignoreUnknown = true
			case "0", "false":
				ignoreUnknown = false
			default:
				return bad("ARGS: error parsing value of pair %q: boolean unmarshal error: invalid input %s", pair, strings.ToLower(v))
			}
		case "CommonArgs":
			// The library's args struct embeds CommonArgs, which is a
			// field by that name too, and no value it can take.
			return bad("ARGS: cannot unmarshal into field '%s' - type '*types.CommonArgs' does not implement encoding.TextUnmarshaler", k)
		default:
			unknown = append(unknown, pair)
		}
	}
	if len(unknown) > 0 && !ignoreUnknown {
		return bad("ARGS: unknown args %q", unknown)
	}
	return p, nil
}

// logger logs to the configured file; it never writes to stderr, which
// libcni would hand to the runtime.
func (c *Conf) logger() *slog.Logger {
	var w io.Writer = io.Discard
	if c.LogFile != "-" {
		// A plain open(2) and write(2), not os.OpenFile, for the reason
		// checkNetns gives.
		var fd int
		if err := ignoringEINTR(func() (err error) {
			fd, err = unix.Open(c.LogFile, unix.O_CREAT|unix.O_WRONLY|unix.O_APPEND|unix.O_CLOEXEC, 0o600)
			return err
		}); err == nil {
			w = fdWriter(fd) // closed at process exit; the plugin lives for one verb
		}
	}
	var level slog.Level
	level.UnmarshalText([]byte(strings.ToUpper(c.LogLevel)))
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})).With("plugin", "weir-cni")
}

// fdWriter writes to a descriptor with write(2), whole buffers.
type fdWriter int

func (w fdWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := unix.Write(int(w), b[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, io.ErrShortWrite
		}
		n += m
	}
	return n, nil
}

// ignoringEINTR retries f while it fails with EINTR.
func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}
