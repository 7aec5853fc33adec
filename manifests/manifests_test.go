// Package manifests holds weir's deployment manifests (weir.yaml, the Helm
// chart in helm/weir, the cleanup DaemonSet in weir-uninstall.yaml). Its tests
// decode every object strictly into its typed Kubernetes struct, check the
// promises the parts make to each other (the conflist entry the installer
// writes and the agent's config agree, surge-only upgrades, least privilege)
// and check that the chart's default render equals weir.yaml.
package manifests

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// object is one document of a manifest stream, decoded twice: generically
// (for comparison) and into its typed struct (strictly, for validation).
type object struct {
	key     string // kind/namespace/name
	generic map[string]any
	typed   runtime.Object
}

// parseStream splits a multi-document YAML stream and decodes each object.
// Unknown fields, unknown kinds, duplicate keys and duplicate objects fail.
func parseStream(data []byte) ([]object, error) {
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var objs []object
	seen := map[string]bool{}
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("split YAML stream: %w", err)
		}
		js, err := yaml.YAMLToJSONStrict(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", len(objs)+1, err)
		}
		if string(bytes.TrimSpace(js)) == "null" {
			continue // a document of comments only
		}
		var generic map[string]any
		if err := json.Unmarshal(js, &generic); err != nil {
			return nil, fmt.Errorf("document %d: %w", len(objs)+1, err)
		}
		var meta struct {
			APIVersion string `json:"apiVersion"`
			Kind       string `json:"kind"`
			Metadata   struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := json.Unmarshal(js, &meta); err != nil {
			return nil, err
		}
		key := meta.Kind + "/" + meta.Metadata.Namespace + "/" + meta.Metadata.Name
		gv, err := schema.ParseGroupVersion(meta.APIVersion)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		typed, err := scheme.Scheme.New(gv.WithKind(meta.Kind))
		if err != nil {
			return nil, fmt.Errorf("%s: unknown kind: %w", key, err)
		}
		if err := yaml.UnmarshalStrict(doc, typed); err != nil {
			return nil, fmt.Errorf("%s: %w", key, err)
		}
		if seen[key] {
			return nil, fmt.Errorf("%s appears twice", key)
		}
		seen[key] = true
		objs = append(objs, object{key: key, generic: generic, typed: typed})
	}
	return objs, nil
}

func readObjects(t *testing.T, file string) []object {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	objs, err := parseStream(data)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return objs
}

// diffObjects lists, path by path, where two object sets differ.
func diffObjects(want, got []object) []string {
	index := func(objs []object) map[string]map[string]any {
		m := map[string]map[string]any{}
		for _, o := range objs {
			m[o.key] = o.generic
		}
		return m
	}
	w, g := index(want), index(got)
	var diffs []string
	for k, wo := range w {
		if go_, ok := g[k]; !ok {
			diffs = append(diffs, k+": missing")
		} else {
			diffs = append(diffs, diffValues(k, wo, go_)...)
		}
	}
	for k := range g {
		if _, ok := w[k]; !ok {
			diffs = append(diffs, k+": unexpected")
		}
	}
	sort.Strings(diffs)
	return diffs
}

func diffValues(at string, want, got any) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			break
		}
		var diffs []string
		keys := map[string]bool{}
		for k := range w {
			keys[k] = true
		}
		for k := range g {
			keys[k] = true
		}
		for k := range keys {
			wv, wok := w[k]
			gv, gok := g[k]
			switch {
			case !wok:
				diffs = append(diffs, fmt.Sprintf("%s.%s: unexpected %v", at, k, gv))
			case !gok:
				diffs = append(diffs, fmt.Sprintf("%s.%s: missing (want %v)", at, k, wv))
			default:
				diffs = append(diffs, diffValues(at+"."+k, wv, gv)...)
			}
		}
		return diffs
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			break
		}
		var diffs []string
		for i := range w {
			diffs = append(diffs, diffValues(fmt.Sprintf("%s[%d]", at, i), w[i], g[i])...)
		}
		return diffs
	default:
		if reflect.DeepEqual(want, got) {
			return nil
		}
	}
	if reflect.DeepEqual(want, got) {
		return nil
	}
	return []string{fmt.Sprintf("%s: got %v, want %v", at, got, want)}
}

func find[T runtime.Object](t *testing.T, objs []object, kind, name string) T {
	t.Helper()
	for _, o := range objs {
		k, _, _ := strings.Cut(o.key, "/")
		if k == kind && strings.HasSuffix(o.key, "/"+name) {
			if v, ok := o.typed.(T); ok {
				return v
			}
		}
	}
	var zero T
	t.Fatalf("no %s %s", kind, name)
	return zero
}

func container(t *testing.T, cs []corev1.Container, name string) corev1.Container {
	t.Helper()
	for _, c := range cs {
		if c.Name == name {
			return c
		}
	}
	t.Fatalf("no container %s", name)
	return corev1.Container{}
}

// flags turns "--name=value" arguments into a map.
func flags(args []string) map[string]string {
	m := map[string]string{}
	for _, a := range args {
		if k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "="); ok {
			m[k] = v
		} else {
			m[strings.TrimPrefix(a, "--")] = ""
		}
	}
	return m
}

// agentConfig is the part of the agent's config file the manifests rely on.
type agentConfig struct {
	Socket     string `json:"socket"`
	Admin      string `json:"admin"`
	Kubernetes struct {
		Enabled bool `json:"enabled"`
	} `json:"kubernetes"`
	Capture struct {
		Mode string `json:"mode"`
	} `json:"capture"`
}

// checkContract checks what the DaemonSet's parts promise each other and the
// operator. It runs on weir.yaml and on every render of the chart.
func checkContract(t *testing.T, objs []object) {
	t.Helper()
	ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "weir-agent")
	cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "weir-agent-config")
	pod := ds.Spec.Template.Spec

	var cfg agentConfig
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatalf("agent config: %v", err)
	}
	if !cfg.Kubernetes.Enabled {
		t.Error("agent config does not enable Kubernetes mode")
	}

	// Upgrades: surge on a node, never a node without its agent, and no
	// hostPort (a surge pod with the same hostPort could never schedule).
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil ||
		ru.MaxSurge == nil || ru.MaxSurge.IntValue() < 1 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("update strategy %+v: want RollingUpdate with maxSurge >= 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	for _, c := range append(slices.Clone(pod.InitContainers), pod.Containers...) {
		for _, p := range c.Ports {
			if p.HostPort != 0 || pod.HostNetwork {
				t.Errorf("container %s declares port %d: under hostNetwork that is a hostPort and blocks surge", c.Name, p.ContainerPort)
			}
		}
	}
	if !pod.HostNetwork || !pod.HostPID {
		t.Error("agent pod needs hostNetwork and hostPID")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName %q", pod.PriorityClassName)
	}
	tolerates := func(key string, effect corev1.TaintEffect) bool {
		return slices.ContainsFunc(pod.Tolerations, func(tol corev1.Toleration) bool {
			return tol.ToleratesTaint(&corev1.Taint{Key: key, Effect: effect})
		})
	}
	for _, taint := range []corev1.Taint{{Key: "weir.dev/agent-not-ready", Effect: corev1.TaintEffectNoSchedule},
		{Key: "node.kubernetes.io/not-ready", Effect: corev1.TaintEffectNoExecute},
		{Key: "example.invalid/any", Effect: corev1.TaintEffectNoSchedule}} {
		if !tolerates(taint.Key, taint.Effect) {
			t.Errorf("does not tolerate %s:%s", taint.Key, taint.Effect)
		}
	}

	// The installers: once before the agent, then watching; same entry.
	initC := container(t, pod.InitContainers, "install-cni")
	watchC := container(t, pod.Containers, "cni-watch")
	if got := strings.Join(initC.Command[:3], " "); got != "weir-cni install --once" {
		t.Errorf("init container runs %q", got)
	}
	if got := strings.Join(watchC.Command[:3], " "); got != "weir-cni install --watch" {
		t.Errorf("watch container runs %q", got)
	}
	fi, fw := flags(initC.Command[3:]), flags(watchC.Command[3:])
	if !reflect.DeepEqual(fi, fw) {
		t.Errorf("install flags differ: init %v, watch %v", fi, fw)
	}
	if fi["mode"] != cfg.Capture.Mode {
		t.Errorf("conflist mode %q, agent capture.mode %q", fi["mode"], cfg.Capture.Mode)
	}
	if fi["agent-socket"] != cfg.Socket {
		t.Errorf("conflist agentSocket %q, agent socket %q", fi["agent-socket"], cfg.Socket)
	}
	hostPaths := map[string]string{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	mounted := func(c corev1.Container, dir string) (string, bool) {
		for _, m := range c.VolumeMounts {
			if m.MountPath == dir {
				return m.Name, true
			}
		}
		return "", false
	}
	for _, c := range []corev1.Container{initC, watchC} {
		for flag := range map[string]bool{"cni-conf-dir": true, "cni-bin-dir": true} {
			if _, ok := mounted(c, fi[flag]); !ok {
				t.Errorf("%s: --%s=%s is not a mount", c.Name, flag, fi[flag])
			}
		}
		assertCaps(t, c, []corev1.Capability{"CHOWN", "DAC_OVERRIDE"})
	}

	// The agent: its socket's directory is the host's, so weir-cni on the
	// node reaches it; its probes reach the admin address on the node's loopback.
	agent := container(t, pod.Containers, "agent")
	assertCaps(t, agent, []corev1.Capability{"NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"})
	if vol, ok := mounted(agent, path.Dir(cfg.Socket)); !ok || hostPaths[vol] != path.Dir(cfg.Socket) {
		t.Errorf("agent socket dir %s is not the same host path in the container (volume %q -> %q)", path.Dir(cfg.Socket), vol, hostPaths[vol])
	}
	if _, ok := mounted(agent, "/etc/weir"); !ok || !slices.Contains(agent.Command, "--config=/etc/weir/config.yaml") {
		t.Error("agent does not read the mounted config")
	}
	host, port, _ := strings.Cut(cfg.Admin, ":")
	for name, p := range map[string]*corev1.Probe{"readiness": agent.ReadinessProbe, "liveness": agent.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Host != host || p.HTTPGet.Port.String() != port {
			t.Errorf("%s probe %+v does not target the admin address %s", name, p, cfg.Admin)
		}
	}
	if p := agent.ReadinessProbe; p != nil && p.HTTPGet != nil && p.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe path %q", p.HTTPGet.Path)
	}
	if !slices.ContainsFunc(agent.Env, func(e corev1.EnvVar) bool {
		return e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Error("agent lacks NODE_NAME from spec.nodeName")
	}
	for _, m := range agent.VolumeMounts {
		if m.Name == "netns" && (m.MountPropagation == nil || *m.MountPropagation != corev1.MountPropagationHostToContainer) {
			t.Error("netns mount needs HostToContainer propagation to see pods created after the agent")
		}
	}
	if pod.TerminationGracePeriodSeconds == nil {
		t.Error("no terminationGracePeriodSeconds")
	}

	// RBAC: exactly what the agent uses, bound to its ServiceAccount.
	role := find[*rbacv1.ClusterRole](t, objs, "ClusterRole", "weir-agent")
	got := map[string][]string{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				got[g+"/"+res] = append(got[g+"/"+res], r.Verbs...)
			}
		}
	}
	want := map[string][]string{
		"/namespaces":                          {"get", "list", "watch"},
		"/pods":                                {"get", "list", "watch", "patch"},
		"/services":                            {"list", "watch"},
		"discovery.k8s.io/endpointslices":      {"list", "watch"},
		"/events":                              {"create", "patch"},
		"/nodes":                               {"get", "patch"},
		"gateway.networking.k8s.io/httproutes": {"list", "watch"},
		"gateway.networking.k8s.io/grpcroutes": {"list", "watch"},
		"gateway.networking.k8s.io/httproutes/status": {"update"},
		"gateway.networking.k8s.io/grpcroutes/status": {"update"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ClusterRole grants %v, want exactly %v", got, want)
	}
	binding := find[*rbacv1.ClusterRoleBinding](t, objs, "ClusterRoleBinding", "weir-agent")
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 || binding.Subjects[0].Name != pod.ServiceAccountName ||
		binding.Subjects[0].Namespace != ds.Namespace {
		t.Errorf("binding %+v does not bind the role to the DaemonSet's ServiceAccount %s/%s", binding, ds.Namespace, pod.ServiceAccountName)
	}

	// The route status lease: a Role in the agent's namespace, nothing more.
	lease := find[*rbacv1.Role](t, objs, "Role", "weir-agent")
	wantLease := []rbacv1.PolicyRule{
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
		{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"weir-route-status"}, Verbs: []string{"get", "update"}},
	}
	if lease.Namespace != ds.Namespace || !reflect.DeepEqual(lease.Rules, wantLease) {
		t.Errorf("Role %s/%s grants %+v, want exactly %+v in %s", lease.Namespace, lease.Name, lease.Rules, wantLease, ds.Namespace)
	}
	rb := find[*rbacv1.RoleBinding](t, objs, "RoleBinding", "weir-agent")
	if rb.Namespace != ds.Namespace || rb.RoleRef.Kind != "Role" || rb.RoleRef.Name != lease.Name || len(rb.Subjects) != 1 ||
		rb.Subjects[0].Name != pod.ServiceAccountName || rb.Subjects[0].Namespace != ds.Namespace {
		t.Errorf("role binding %+v does not bind the lease Role to the DaemonSet's ServiceAccount", rb)
	}
}

func assertCaps(t *testing.T, c corev1.Container, add []corev1.Capability) {
	t.Helper()
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || !reflect.DeepEqual(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) {
		t.Errorf("%s: capabilities must drop ALL", c.Name)
		return
	}
	if !reflect.DeepEqual(sc.Capabilities.Add, add) {
		t.Errorf("%s: adds %v, want exactly %v", c.Name, sc.Capabilities.Add, add)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", c.Name)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: root filesystem is writable", c.Name)
	}
}

func TestPlainManifests(t *testing.T) {
	objs := readObjects(t, "weir.yaml")
	var keys []string
	for _, o := range objs {
		keys = append(keys, o.key)
	}
	want := "Namespace//weir-system ServiceAccount/weir-system/weir-agent ClusterRole//weir-agent " +
		"ClusterRoleBinding//weir-agent Role/weir-system/weir-agent RoleBinding/weir-system/weir-agent " +
		"ConfigMap/weir-system/weir-agent-config DaemonSet/weir-system/weir-agent"
	if got := strings.Join(keys, " "); got != want {
		t.Errorf("objects\n%s\nwant\n%s", got, want)
	}
	checkContract(t, objs)
}

func TestUninstallManifest(t *testing.T) {
	objs := readObjects(t, "weir-uninstall.yaml")
	ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "weir-cni-cleanup")
	c := container(t, ds.Spec.Template.Spec.InitContainers, "uninstall-cni")
	if got := strings.Join(c.Command[:2], " "); got != "weir-cni uninstall" {
		t.Errorf("cleanup runs %q", got)
	}
	plain := find[*appsv1.DaemonSet](t, readObjects(t, "weir.yaml"), "DaemonSet", "weir-agent")
	want := flags(container(t, plain.Spec.Template.Spec.InitContainers, "install-cni").Command[3:])
	got := flags(c.Command[2:])
	for _, f := range []string{"cni-conf-dir", "cni-bin-dir"} {
		if got[f] != want[f] {
			t.Errorf("cleanup --%s=%s, install uses %s", f, got[f], want[f])
		}
	}
	if !reflect.DeepEqual(ds.Spec.Template.Spec.Tolerations, plain.Spec.Template.Spec.Tolerations) {
		t.Error("cleanup must run wherever the agent ran: tolerations differ")
	}
}

// TestStrictDecodingRejects shows the structural check can fail.
func TestStrictDecodingRejects(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown field":  "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndatta:\n  a: b\n",
		"unknown kind":   "apiVersion: v1\nkind: Confmap\nmetadata:\n  name: x\n",
		"wrong type":     "apiVersion: apps/v1\nkind: DaemonSet\nmetadata:\n  name: x\nspec:\n  minReadySeconds: ten\n",
		"duplicate key":  "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n  name: y\n",
		"duplicate obj":  "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n",
		"nested unknown": "apiVersion: v1\nkind: Pod\nmetadata:\n  name: x\nspec:\n  containers:\n  - name: a\n    image: b\n    capabilities: {add: [NET_ADMIN]}\n",
	} {
		if _, err := parseStream([]byte(doc)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestDiffFindsChanges shows the render comparison can fail, and says where.
func TestDiffFindsChanges(t *testing.T) {
	plain := readObjects(t, "weir.yaml")
	data, _ := os.ReadFile("weir.yaml")
	changed, err := parseStream(bytes.Replace(data, []byte("maxUnavailable: 0"), []byte("maxUnavailable: 1"), 1))
	if err != nil {
		t.Fatal(err)
	}
	diffs := diffObjects(plain, changed)
	if len(diffs) != 1 || !strings.Contains(diffs[0], "DaemonSet/weir-system/weir-agent.spec.updateStrategy.rollingUpdate.maxUnavailable") {
		t.Errorf("diffs %v", diffs)
	}
	if d := diffObjects(plain, plain[1:]); len(d) != 1 || !strings.Contains(d[0], "Namespace//weir-system: missing") {
		t.Errorf("missing object not reported: %v", d)
	}
}

// helmBinary finds helm: $WEIR_HELM, else tools/helm/build.sh (which builds
// it once from the Go module proxy and caches it).
func helmBinary(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("WEIR_HELM"); p != "" {
		return p
	}
	cmd := exec.Command("bash", "../tools/helm/build.sh")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	lines := strings.Fields(string(out))
	if err != nil || len(lines) == 0 {
		requireTool(t, false, fmt.Sprintf("helm (tools/helm/build.sh failed: %v: %s)", err, lastLines(stderr.String(), 10)))
	}
	return lines[len(lines)-1]
}

// requireTool fails under CI=true and skips elsewhere: a skipped test proves nothing.
func requireTool(t *testing.T, ok bool, what string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("missing prerequisite: %s", what)
	}
	t.Skipf("missing prerequisite: %s", what)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func helm(t *testing.T, bin string, args ...string) ([]byte, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return out, nil
}

func TestHelmChart(t *testing.T) {
	bin := helmBinary(t)
	if _, err := helm(t, bin, "lint", "--strict", "helm/weir"); err != nil {
		t.Fatal(err)
	}

	t.Run("default render equals weir.yaml", func(t *testing.T) {
		out, err := helm(t, bin, "template", "weir", "helm/weir")
		if err != nil {
			t.Fatal(err)
		}
		rendered, err := parseStream(out)
		if err != nil {
			t.Fatalf("rendered chart: %v", err)
		}
		if diffs := diffObjects(readObjects(t, "weir.yaml"), rendered); len(diffs) > 0 {
			t.Errorf("chart's default render differs from weir.yaml:\n%s", strings.Join(diffs, "\n"))
		}
	})

	t.Run("settings reach every part", func(t *testing.T) {
		out, err := helm(t, bin, "template", "weir", "helm/weir",
			"--set", "capture.mode=tproxy", "--set", "agent.socket=/var/run/weir-b/agent.sock",
			"--set", "agent.admin=127.0.0.1:16020", "--set", "cni.primary=05-calico.conflist",
			"--set", "namespace.name=mesh", "--set", "namespace.create=false",
			"--set", "cni.confDir=/etc/cni/k3s")
		if err != nil {
			t.Fatal(err)
		}
		objs, err := parseStream(out)
		if err != nil {
			t.Fatalf("rendered chart: %v", err)
		}
		checkContract(t, objs)
		ds := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "weir-agent")
		if ds.Namespace != "mesh" {
			t.Errorf("namespace %q", ds.Namespace)
		}
		if f := flags(container(t, ds.Spec.Template.Spec.InitContainers, "install-cni").Command[3:]); f["primary"] != "05-calico.conflist" {
			t.Errorf("--primary not passed: %v", f)
		}
		for _, o := range objs {
			if strings.HasPrefix(o.key, "Namespace/") {
				t.Error("namespace rendered with namespace.create=false")
			}
		}
		if !slices.ContainsFunc(ds.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool {
			return v.HostPath != nil && v.HostPath.Path == "/etc/cni/k3s"
		}) {
			t.Error("cni.confDir not used as host path")
		}
	})

	t.Run("optional values render valid objects", func(t *testing.T) {
		out, err := helm(t, bin, "template", "weir", "helm/weir",
			"--set-json", `extraTolerations=[{"key":"dedicated","operator":"Equal","value":"infra","effect":"NoSchedule"}]`,
			"--set-json", `imagePullSecrets=[{"name":"regcred"}]`,
			"--set-json", `podAnnotations={"example.invalid/team":"mesh"}`,
			"--set", "priorityClassName=", "--set", "cni.logFile=")
		if err != nil {
			t.Fatal(err)
		}
		objs, err := parseStream(out)
		if err != nil {
			t.Fatalf("rendered chart: %v", err)
		}
		pod := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "weir-agent").Spec.Template
		if len(pod.Spec.Tolerations) != 4 || pod.Spec.Tolerations[3].Key != "dedicated" {
			t.Errorf("tolerations %v", pod.Spec.Tolerations)
		}
		if len(pod.Spec.ImagePullSecrets) != 1 || pod.Annotations["example.invalid/team"] != "mesh" || pod.Spec.PriorityClassName != "" {
			t.Errorf("pull secrets %v, annotations %v, priority class %q", pod.Spec.ImagePullSecrets, pod.Annotations, pod.Spec.PriorityClassName)
		}
		if f := flags(container(t, pod.Spec.InitContainers, "install-cni").Command[3:]); f["log-file"] != "" {
			t.Errorf("--log-file=%q, want empty", f["log-file"])
		}
	})

	t.Run("standby container", func(t *testing.T) {
		out, err := helm(t, bin, "template", "weir", "helm/weir",
			"--set", "agent.standby.enabled=true", "--set", "agent.standby.admin=127.0.0.1:16021")
		if err != nil {
			t.Fatal(err)
		}
		objs, err := parseStream(out)
		if err != nil {
			t.Fatalf("rendered chart: %v", err)
		}
		checkContract(t, objs)
		pod := find[*appsv1.DaemonSet](t, objs, "DaemonSet", "weir-agent").Spec.Template.Spec
		agentC, standbyC := container(t, pod.Containers, "agent"), container(t, pod.Containers, "agent-standby")
		// Same binary, same config file, same rights and mounts: only the
		// flag, the probes' port and the resources differ.
		if want := append(slices.Clone(agentC.Command), "--standby"); !reflect.DeepEqual(standbyC.Command, want) {
			t.Errorf("standby command %v, want %v", standbyC.Command, want)
		}
		if !reflect.DeepEqual(standbyC.SecurityContext, agentC.SecurityContext) || !reflect.DeepEqual(standbyC.VolumeMounts, agentC.VolumeMounts) {
			t.Error("the standby container's security context or mounts differ from the agent's")
		}
		for _, p := range []*corev1.Probe{standbyC.ReadinessProbe, standbyC.LivenessProbe} {
			if p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "127.0.0.1" || p.HTTPGet.Port.IntValue() != 16021 {
				t.Errorf("standby probe %+v, want 127.0.0.1:16021", p)
			}
		}
		var cfg struct {
			Standby struct {
				Admin string `json:"admin"`
			} `json:"standby"`
		}
		cm := find[*corev1.ConfigMap](t, objs, "ConfigMap", "weir-agent-config")
		if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil || cfg.Standby.Admin != "127.0.0.1:16021" {
			t.Errorf("config standby.admin %q (%v), want the probes' address", cfg.Standby.Admin, err)
		}
	})

	t.Run("bad values fail the render", func(t *testing.T) {
		for _, set := range []string{"capture.mode=ebpf", "agent.admin=localhost"} {
			if _, err := helm(t, bin, "template", "weir", "helm/weir", "--set", set); err == nil {
				t.Errorf("--set %s rendered", set)
			}
		}
	})
}
