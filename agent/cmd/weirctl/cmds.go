package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// The parts of the agent's /config_dump weirctl reads. Unknown fields are
// ignored, so an agent newer than weirctl still works.
type configDump struct {
	Config json.RawMessage `json:"config"`
	Routes routesDump      `json:"routes"`
	Pods   []podDump       `json:"pods"`
	XDS    json.RawMessage `json:"xds,omitempty"`
}

type podDump struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	ContainerID string   `json:"containerID"`
	Netns       string   `json:"netns"`
	Captured    bool     `json:"captured"`
	Reason      string   `json:"reason,omitempty"`
	Listeners   []string `json:"listeners"`
	Redirect    *struct {
		Mode    string `json:"mode"`
		Backend string `json:"backend"`
	} `json:"redirect,omitempty"`
}

type routesDump struct {
	Unknown  string            `json:"unknown"`
	Services []json.RawMessage `json:"services"`
}

type serviceDump struct {
	Name      string   `json:"name"`
	Addresses []string `json:"addresses"`
	Cluster   struct {
		Config struct {
			Balancer string `json:"balancer"`
		} `json:"config"`
		Connections     uint64         `json:"connections"`
		ConnectFailures uint64         `json:"connectFailures"`
		Retries         uint64         `json:"retries"`
		Active          int64          `json:"active"`
		Endpoints       []endpointDump `json:"endpoints"`
	} `json:"cluster"`
}

type endpointDump struct {
	Addr                string            `json:"addr"`
	Weight              uint32            `json:"weight"`
	Labels              map[string]string `json:"labels"`
	Health              string            `json:"health"`
	Active              int64             `json:"active"`
	Connections         uint64            `json:"connections"`
	ConnectFailures     uint64            `json:"connectFailures"`
	Errors              uint64            `json:"errors"`
	Ejections           uint64            `json:"ejections"`
	Ejected             bool              `json:"ejected"`
	EjectedFor          string            `json:"ejectedFor"`
	HealthCheckFailing  bool              `json:"healthCheckFailing"`
	HealthCheckFailures uint64            `json:"healthCheckFailures"`
	RTT                 string            `json:"rtt"`
}

// health is the endpoint's state in one word: what the agent was told
// (healthy, draining, unhealthy), overridden by active checks and ejection.
func (e endpointDump) state() string {
	switch {
	case e.Health != "" && e.Health != "healthy":
		return e.Health
	case e.HealthCheckFailing:
		return "check-failing"
	case e.Ejected:
		return "ejected"
	}
	return "healthy"
}

func (c *client) configDump(ctx context.Context) (configDump, error) {
	var d configDump
	err := c.getJSON(ctx, "/config_dump", &d)
	return d, err
}

func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 0, 3, ' ', 0)
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// short rounds a duration the agent wrote ("59.777319119s") to three or
// four significant digits ("59.8s"); anything else is returned as it is.
func short(s string) string {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return s
	}
	r := time.Duration(1)
	for d/r >= 1000 {
		r *= 10
	}
	return d.Round(r).String()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// podView is one row of weirctl pods (and its JSON form).
type podView struct {
	Namespace   string   `json:"namespace"`
	Name        string   `json:"name"`
	Captured    bool     `json:"captured"`
	Mode        string   `json:"mode,omitempty"`
	Backend     string   `json:"backend,omitempty"`
	Reason      string   `json:"reason,omitempty"`
	Netns       string   `json:"netns"`
	ContainerID string   `json:"containerID"`
	Listeners   []string `json:"listeners,omitempty"`
}

func cmdPods(ctx context.Context, c *client, o options, w io.Writer) error {
	d, err := c.configDump(ctx)
	if err != nil {
		return err
	}
	views := []podView{}
	for _, p := range d.Pods {
		v := podView{Namespace: p.Namespace, Name: p.Name, Captured: p.Captured, Reason: p.Reason,
			Netns: p.Netns, ContainerID: p.ContainerID, Listeners: p.Listeners}
		if p.Redirect != nil {
			v.Mode = p.Redirect.Mode
			if v.Mode != "ebpf" {
				v.Backend = p.Redirect.Backend
			}
		}
		views = append(views, v)
	}
	sort.SliceStable(views, func(i, j int) bool {
		if views[i].Namespace != views[j].Namespace {
			return views[i].Namespace < views[j].Namespace
		}
		return views[i].Name < views[j].Name
	})
	if o.output == "json" {
		return writeJSON(w, views)
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tCAPTURED\tMODE\tBACKEND\tWHY")
	for _, v := range views {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Namespace, v.Name, yesNo(v.Captured), dash(v.Mode), dash(v.Backend), dash(v.Reason))
	}
	return tw.Flush()
}

// rulesView is the agent's answer to GET /pods/{namespace}/{name}/rules.
type rulesView struct {
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Netns     string   `json:"netns"`
	Captured  bool     `json:"captured"`
	Mode      string   `json:"mode,omitempty"`
	Backend   string   `json:"backend,omitempty"`
	Reason    string   `json:"reason,omitempty"`
	Rules     []string `json:"rules"`
	Verified  bool     `json:"verified"`
	Problems  []string `json:"problems,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// errNotVerified makes weirctl rules exit 1 when a captured pod's rules
// are not what its capture needs (the output says why).
var errNotVerified = errors.New("rules not verified")

func cmdRules(ctx context.Context, c *client, o options, pod string, w io.Writer) error {
	ns, name, ok := strings.Cut(pod, "/")
	if !ok {
		// A bare name is fine when it is unique on the node.
		d, err := c.configDump(ctx)
		if err != nil {
			return err
		}
		var found []string
		for _, p := range d.Pods {
			if p.Name == pod {
				found = append(found, p.Namespace)
			}
		}
		switch len(found) {
		case 0:
			return fmt.Errorf("no pod named %q on this node (weirctl pods lists them)", pod)
		case 1:
			ns, name = found[0], pod
		default:
			sort.Strings(found)
			return usagef("pod %q is in several namespaces (%s): say namespace/name", pod, strings.Join(found, ", "))
		}
	}
	if ns == "" || name == "" {
		return usagef("rules %q: want namespace/name", pod)
	}
	var v rulesView
	err := c.getJSON(ctx, "/pods/"+url.PathEscape(ns)+"/"+url.PathEscape(name)+"/rules", &v)
	var nf *notFoundError
	if errors.As(err, &nf) {
		return fmt.Errorf("%s (weirctl pods lists them)", nf.msg)
	}
	if err != nil {
		return err
	}
	bad := v.Captured && !v.Verified
	if o.output == "json" {
		if err := writeJSON(w, v); err != nil {
			return err
		}
	} else {
		tw := newTable(w)
		fmt.Fprintf(tw, "POD\t%s/%s\n", v.Namespace, v.Name)
		fmt.Fprintf(tw, "NETNS\t%s\n", v.Netns)
		fmt.Fprintf(tw, "CAPTURED\t%s\n", yesNo(v.Captured))
		fmt.Fprintf(tw, "MODE\t%s\n", dash(v.Mode))
		fmt.Fprintf(tw, "BACKEND\t%s\n", dash(v.Backend))
		fmt.Fprintf(tw, "WHY\t%s\n", dash(v.Reason))
		switch {
		case !v.Captured:
			fmt.Fprintf(tw, "VERIFIED\t- (not captured: weir keeps no rules there)\n")
		case v.Verified:
			fmt.Fprintf(tw, "VERIFIED\tyes: exactly the rules its capture needs\n")
		case v.Error != "":
			fmt.Fprintf(tw, "VERIFIED\tno: %s\n", v.Error)
		default:
			fmt.Fprintf(tw, "VERIFIED\tno: %d problem(s); the agent repairs them at its next reconcile\n", len(v.Problems))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if len(v.Problems) > 0 {
			fmt.Fprintln(w, "\nPROBLEMS")
			for _, p := range v.Problems {
				fmt.Fprintln(w, "  "+p)
			}
		}
		fmt.Fprintln(w, "\nRULES")
		if len(v.Rules) == 0 {
			fmt.Fprintln(w, "  (none)")
		}
		for _, r := range v.Rules {
			fmt.Fprintln(w, "  "+r)
		}
	}
	if bad {
		return errNotVerified
	}
	return nil
}

// services decodes the route snapshot's services, keeping each one's raw
// JSON for -o json.
func services(d configDump) ([]serviceDump, error) {
	out := make([]serviceDump, len(d.Routes.Services))
	for i, raw := range d.Routes.Services {
		if err := json.Unmarshal(raw, &out[i]); err != nil {
			return nil, fmt.Errorf("the agent's route snapshot: %v", err)
		}
	}
	return out, nil
}

func findService(svcs []serviceDump, name string) (int, error) {
	for i, s := range svcs {
		if s.Name == name {
			return i, nil
		}
	}
	return -1, fmt.Errorf("no service %q in the agent's routes (weirctl routes lists them)", name)
}

func healthyCount(eps []endpointDump) int {
	n := 0
	for _, e := range eps {
		if e.state() == "healthy" {
			n++
		}
	}
	return n
}

func cmdRoutes(ctx context.Context, c *client, o options, only string, w io.Writer) error {
	d, err := c.configDump(ctx)
	if err != nil {
		return err
	}
	svcs, err := services(d)
	if err != nil {
		return err
	}
	idx := make([]int, 0, len(svcs))
	if only != "" {
		i, err := findService(svcs, only)
		if err != nil {
			return err
		}
		idx = append(idx, i)
	} else {
		for i := range svcs {
			idx = append(idx, i)
		}
		sort.SliceStable(idx, func(a, b int) bool { return svcs[idx[a]].Name < svcs[idx[b]].Name })
	}
	if o.output == "json" {
		raw := make([]json.RawMessage, 0, len(idx))
		for _, i := range idx {
			raw = append(raw, d.Routes.Services[i])
		}
		if only != "" {
			return writeJSON(w, raw[0])
		}
		return writeJSON(w, map[string]any{"unknown": d.Routes.Unknown, "services": raw})
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "SERVICE\tADDRESSES\tBALANCER\tENDPOINTS\tACTIVE\tCONNECTIONS\tFAILURES\tRETRIES")
	for _, i := range idx {
		s := svcs[i]
		addrs := "-"
		if len(s.Addresses) > 0 {
			addrs = strings.Join(s.Addresses, ",")
		}
		cl := s.Cluster
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d healthy\t%d\t%d\t%d\t%d\n", s.Name, addrs, dash(cl.Config.Balancer),
			healthyCount(cl.Endpoints), len(cl.Endpoints), cl.Active, cl.Connections, cl.ConnectFailures, cl.Retries)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if only == "" && d.Routes.Unknown != "" {
		fmt.Fprintf(w, "\nconnections to no service: %s\n", d.Routes.Unknown)
	}
	return nil
}

func cmdEndpoints(ctx context.Context, c *client, o options, name string, w io.Writer) error {
	d, err := c.configDump(ctx)
	if err != nil {
		return err
	}
	svcs, err := services(d)
	if err != nil {
		return err
	}
	i, err := findService(svcs, name)
	if err != nil {
		return err
	}
	eps := svcs[i].Cluster.Endpoints
	if o.output == "json" {
		// The agent's own view of each endpoint, unchanged.
		var raw struct {
			Cluster struct {
				Endpoints []json.RawMessage `json:"endpoints"`
			} `json:"cluster"`
		}
		if err := json.Unmarshal(d.Routes.Services[i], &raw); err != nil {
			return err
		}
		if raw.Cluster.Endpoints == nil {
			raw.Cluster.Endpoints = []json.RawMessage{}
		}
		return writeJSON(w, map[string]any{"service": name, "endpoints": raw.Cluster.Endpoints})
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "ENDPOINT\tWEIGHT\tHEALTH\tEJECTED\tEJECTIONS\tACTIVE\tCONNECTIONS\tCONNECT-FAILURES\tERRORS\tRTT\tZONE")
	for _, e := range eps {
		weight := e.Weight
		if weight == 0 {
			weight = 1
		}
		ejected := "no"
		if e.Ejected {
			ejected = "yes"
			if e.EjectedFor != "" {
				ejected += " (" + short(e.EjectedFor) + " left)"
			}
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", e.Addr, weight, e.state(), ejected,
			e.Ejections, e.Active, e.Connections, e.ConnectFailures, e.Errors, dash(short(e.RTT)), dash(e.Labels["zone"]))
	}
	return tw.Flush()
}

func cmdConfig(ctx context.Context, c *client, o options, w io.Writer) error {
	d, err := c.configDump(ctx)
	if err != nil {
		return err
	}
	if o.output == "json" {
		out := map[string]json.RawMessage{"config": d.Config}
		if len(d.XDS) > 0 && string(d.XDS) != "null" {
			out["xds"] = d.XDS
		}
		return writeJSON(w, out)
	}
	var rows [][2]string
	if err := flatten("", d.Config, &rows); err != nil {
		return fmt.Errorf("the agent's config: %v", err)
	}
	if len(d.XDS) > 0 && string(d.XDS) != "null" {
		if err := flatten("xdsStatus", d.XDS, &rows); err != nil {
			return fmt.Errorf("the agent's xDS status: %v", err)
		}
	}
	tw := newTable(w)
	fmt.Fprintln(tw, "KEY\tVALUE")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// flatten turns a JSON document into key/value rows: objects by dotted
// key, lists of objects by index, lists of plain values joined by commas.
func flatten(prefix string, raw json.RawMessage, rows *[][2]string) error {
	var v any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&v); err != nil {
		return err
	}
	flattenValue(prefix, v, rows)
	return nil
}

func flattenValue(key string, v any, rows *[][2]string) {
	join := func(k string) string {
		if key == "" {
			return k
		}
		return key + "." + k
	}
	switch t := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(t))
		for k := range t {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			flattenValue(join(k), t[k], rows)
		}
		if len(t) == 0 && key != "" {
			*rows = append(*rows, [2]string{key, "{}"})
		}
	case []any:
		plain := true
		for _, e := range t {
			switch e.(type) {
			case map[string]any, []any:
				plain = false
			}
		}
		if plain {
			parts := make([]string, len(t))
			for i, e := range t {
				parts[i] = scalar(e)
			}
			*rows = append(*rows, [2]string{key, "[" + strings.Join(parts, ", ") + "]"})
			return
		}
		for i, e := range t {
			flattenValue(key+"["+strconv.Itoa(i)+"]", e, rows)
		}
	default:
		*rows = append(*rows, [2]string{key, scalar(v)})
	}
}

func scalar(v any) string {
	switch t := v.(type) {
	case nil:
		return "-"
	case string:
		if t == "" {
			return `""`
		}
		return t
	case json.Number:
		return t.String()
	case bool:
		return strconv.FormatBool(t)
	}
	return fmt.Sprint(v)
}
