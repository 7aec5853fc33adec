package plugin

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// dispatchCase is one run of a dispatcher: the environment (unset when
// absent), stdin, and what the verb the dispatcher calls returns.
type dispatchCase struct {
	env   map[string]string
	stdin string
	// verbErr: 0 none, 1 a CNI error, 2 a plain error.
	verbErr byte
}

// dispatchOutcome is what a dispatcher did: which verb it called with
// which arguments, what it printed, and the error it returned.
type dispatchOutcome struct {
	called         string
	stdout, stderr string
	code           uint
	msg, details   string
}

var cniVars = []string{"CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH", "CNI_NETNS_OVERRIDE"}

// runDispatch runs run (a dispatcher) with c's environment, with the
// process's stdin, stdout and stderr swapped for files.
func runDispatch(t testing.TB, c dispatchCase, run func() (uint, string, string)) (out dispatchOutcome, ok bool) {
	for _, k := range cniVars {
		v, set := c.env[k]
		if strings.ContainsRune(v, 0) {
			return out, false // no such environment
		}
		if set {
			os.Setenv(k, v)
		} else {
			os.Unsetenv(k)
		}
	}
	defer func() {
		for _, k := range cniVars {
			os.Unsetenv(k)
		}
	}()
	dir := t.TempDir()
	files := map[string]*os.File{}
	for _, name := range []string{"stdin", "stdout", "stderr"} {
		f, err := os.OpenFile(filepath.Join(dir, name), os.O_CREATE|os.O_RDWR, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[name] = f
	}
	files["stdin"].WriteString(c.stdin)
	files["stdin"].Seek(0, 0)
	stdin, stdout, stderr := os.Stdin, os.Stdout, os.Stderr
	os.Stdin, os.Stdout, os.Stderr = files["stdin"], files["stdout"], files["stderr"]
	out.code, out.msg, out.details = run()
	os.Stdin, os.Stdout, os.Stderr = stdin, stdout, stderr
	b, _ := os.ReadFile(files["stdout"].Name())
	out.stdout = string(b)
	b, _ = os.ReadFile(files["stderr"].Name())
	out.stderr = string(b)
	return out, true
}

// bothDispatchers runs c through the CNI library's skel and through
// dispatch, with verbs that record their call and answer c.verbErr.
func bothDispatchers(t testing.TB, c dispatchCase) (lib, own dispatchOutcome, ok bool) {
	const about = "about this plugin"
	var called string
	record := func(verb string, a *CmdArgs) {
		called = fmt.Sprintf("%s %q %q %q %q %q %q %q", verb, a.ContainerID, a.Netns, a.IfName, a.Args, a.Path, a.NetnsOverride, a.StdinData)
	}
	libVerb := func(verb string) func(*skel.CmdArgs) error {
		return func(a *skel.CmdArgs) error {
			record(verb, &CmdArgs{ContainerID: a.ContainerID, Netns: a.Netns, IfName: a.IfName, Args: a.Args, Path: a.Path, NetnsOverride: a.NetnsOverride, StdinData: a.StdinData})
			switch c.verbErr {
			case 1:
				return types.NewError(ErrTryAgainLater, "verb failed", "details")
			case 2:
				return errors.New("plain failure")
			}
			return nil
		}
	}
	ownVerb := func(verb string) func(*CmdArgs) error {
		return func(a *CmdArgs) error {
			record(verb, a)
			switch c.verbErr {
			case 1:
				return newError(ErrTryAgainLater, "verb failed", "details")
			case 2:
				return errors.New("plain failure")
			}
			return nil
		}
	}
	lib, ok = runDispatch(t, c, func() (uint, string, string) {
		called = ""
		e := skel.PluginMainFuncsWithError(skel.CNIFuncs{Add: libVerb("ADD"), Del: libVerb("DEL"), Check: libVerb("CHECK"), GC: libVerb("GC"), Status: libVerb("STATUS")},
			version.PluginSupports(supportedVersions...), about)
		if e == nil {
			return 0, "", ""
		}
		return e.Code, e.Msg, e.Details
	})
	lib.called = called
	if !ok {
		return lib, own, false
	}
	own, _ = runDispatch(t, c, func() (uint, string, string) {
		called = ""
		e := dispatch(env{getenv: os.Getenv, stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr},
			verbs{add: ownVerb("ADD"), del: ownVerb("DEL"), check: ownVerb("CHECK"), gc: ownVerb("GC"), status: ownVerb("STATUS")}, about)
		if e == nil {
			return 0, "", ""
		}
		return e.Code, e.Msg, e.Details
	})
	own.called = called
	return lib, own, true
}

// TestDispatchMatchesSkel: weir's dispatcher answers every case as the CNI
// library's skel does: the same verb called with the same arguments, the
// same output, the same error code, message and details.
func TestDispatchMatchesSkel(t *testing.T) {
	conf := func(version string) string {
		return `{"cniVersion":"` + version + `","name":"weir","type":"weir-cni"}`
	}
	pod := func(cmd string) map[string]string {
		return map[string]string{"CNI_COMMAND": cmd, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/gone", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
	}
	with := func(m map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range m {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == "-" {
				delete(out, kv[i])
			} else {
				out[kv[i]] = kv[i+1]
			}
		}
		return out
	}
	var cases []dispatchCase
	for _, cmd := range []string{"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "BOGUS", ""} {
		for _, v := range []string{"1.0.0", "1.1.0", "0.4.0", "0.3.1", "", "2.0.0", "1.x", "1.0.0.0"} {
			for verbErr := byte(0); verbErr < 3; verbErr++ {
				cases = append(cases, dispatchCase{env: pod(cmd), stdin: conf(v), verbErr: verbErr})
			}
		}
		cases = append(cases,
			dispatchCase{env: with(pod(cmd), "CNI_CONTAINERID", "-"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_CONTAINERID", "-bad"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_CONTAINERID", "a b"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_NETNS", "-"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_IFNAME", "-", "CNI_PATH", "-"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_IFNAME", "averyveryverylongname"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_IFNAME", ".."), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_IFNAME", "et:h"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_ARGS", "K8S_POD_NAME=x;IgnoreUnknown=1"), stdin: conf("1.1.0")},
			dispatchCase{env: with(pod(cmd), "CNI_NETNS", "/proc/self/ns/net"), stdin: conf("1.0.0")},
			dispatchCase{env: with(pod(cmd), "CNI_NETNS", "/proc/self/ns/net", "CNI_NETNS_OVERRIDE", "true"), stdin: conf("1.0.0")},
			dispatchCase{env: pod(cmd), stdin: `{"cniVersion":"1.0.0","type":"weir-cni"}`},
			dispatchCase{env: pod(cmd), stdin: `{"cniVersion":"1.0.0","name":"bad name!"}`},
			dispatchCase{env: pod(cmd), stdin: `{"cniVersion":"1.0.0","name":"-x"}`},
			dispatchCase{env: pod(cmd), stdin: `not json`},
			dispatchCase{env: pod(cmd), stdin: ``},
			dispatchCase{env: pod(cmd), stdin: `{"cniVersion":1,"name":"w"}`},
		)
	}
	for i, c := range cases {
		lib, own, ok := bothDispatchers(t, c)
		if !ok {
			t.Fatalf("case %d: environment not settable", i)
		}
		if lib != own {
			t.Errorf("case %d (%v, stdin %q, verb error %d):\nskel:  %+v\nweir:  %+v", i, c.env, c.stdin, c.verbErr, lib, own)
		}
	}
}

// FuzzDispatchMatchesSkel: for any environment and config, weir's
// dispatcher and the CNI library's skel call the same verb with the same
// arguments and answer the same.
func FuzzDispatchMatchesSkel(f *testing.F) {
	f.Add(byte(0), "c1", "/run/netns/x", "eth0", "K8S_POD_NAME=p", "/opt/cni/bin", "", `{"cniVersion":"1.0.0","name":"w"}`, byte(0))
	f.Add(byte(3), "", "/proc/self/ns/net", "..", "", "", "1", `{"cniVersion":"1.1.0","name":"w"}`, byte(1))
	f.Add(byte(4), "c.d-e_f", "", "eth0", "", "/p", "", `{"cniVersion":"0.4.0"}`, byte(2))
	cmds := []string{"ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION", "", "add"}
	f.Fuzz(func(t *testing.T, cmd byte, id, netns, ifname, args, path, override, stdin string, verbErr byte) {
		c := dispatchCase{env: map[string]string{"CNI_COMMAND": cmds[int(cmd)%len(cmds)]}, stdin: stdin, verbErr: verbErr % 3}
		for k, v := range map[string]string{"CNI_CONTAINERID": id, "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_ARGS": args, "CNI_PATH": path, "CNI_NETNS_OVERRIDE": override} {
			if v != "" {
				c.env[k] = v
			}
		}
		if strings.HasPrefix(netns, "/") && !strings.HasPrefix(netns, "/proc/self/ns/") && !strings.HasPrefix(netns, "/run/netns/") {
			// Only namespace-like paths: the library opens the path
			// (a FIFO there would block it).
			c.env["CNI_NETNS"] = "/run/netns/x"
		}
		lib, own, ok := bothDispatchers(t, c)
		if ok && lib != own {
			t.Fatalf("(%v, stdin %q, verb error %d):\nskel:  %+v\nweir:  %+v", c.env, c.stdin, c.verbErr, lib, own)
		}
	})
}

// libK8sArgs are the CNI_ARGS keys weir-cni read with the CNI library's
// LoadArgs before it had its own parser.
type libK8sArgs struct {
	types.CommonArgs
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // names are the wire keys
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive
	K8S_POD_UID                types.UnmarshallableString //nolint:revive
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive
}

// FuzzPodFromArgsMatchesLoadArgs: podFromArgs reads any CNI_ARGS as the
// library's LoadArgs with IgnoreUnknown did: the same pod, or an error
// with the same text.
func FuzzPodFromArgsMatchesLoadArgs(f *testing.F) {
	for _, s := range []string{"", "K8S_POD_NAMESPACE=demo;K8S_POD_NAME=p;K8S_POD_UID=u", "IgnoreUnknown=0;X=1", "IgnoreUnknown=maybe", "a=b=c", ";", "CommonArgs=1", "K8S_POD_NAME="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var a libK8sArgs
		a.IgnoreUnknown = true
		libErr := types.LoadArgs(s, &a)
		pod, err := podFromArgs(s)
		if (libErr == nil) != (err == nil) {
			t.Fatalf("%q: library %v, weir %v", s, libErr, err)
		}
		if err != nil {
			if e, ok := err.(*Error); !ok || e.Details != libErr.Error() {
				t.Fatalf("%q: library says %q, weir %v", s, libErr, err)
			}
			return
		}
		if pod.Namespace != string(a.K8S_POD_NAMESPACE) || pod.Name != string(a.K8S_POD_NAME) || pod.UID != string(a.K8S_POD_UID) {
			t.Fatalf("%q: library %+v, weir %+v", s, a, pod)
		}
	})
}
