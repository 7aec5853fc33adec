package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// now is the clock top's rates divide by (tests replace it).
var now = time.Now

// sample is one series of a /metrics scrape.
type sample struct {
	labels map[string]string
	value  float64
}

// scrape is a /metrics answer by metric name, and when it was taken.
type scrape struct {
	at     time.Time
	series map[string][]sample
}

// parseMetrics reads the Prometheus text exposition format: one
// `name{label="value",...} value [timestamp]` per line, comments skipped.
func parseMetrics(text string) (map[string][]sample, error) {
	out := map[string][]sample{}
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		labels := map[string]string{}
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		if strings.HasPrefix(rest, "{") {
			var err error
			labels, rest, err = parseLabels(rest[1:])
			if err != nil {
				return nil, fmt.Errorf("line %d: %v", n+1, err)
			}
		}
		fields := strings.Fields(rest)
		if name == "" || len(fields) == 0 {
			return nil, fmt.Errorf("line %d: no value in %q", n+1, line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("line %d: value %q: %v", n+1, fields[0], err)
		}
		out[name] = append(out[name], sample{labels: labels, value: v})
	}
	return out, nil
}

// parseLabels reads `a="x",b="y"}` and returns the labels and what follows
// the closing brace.
func parseLabels(s string) (map[string]string, string, error) {
	labels := map[string]string{}
	for {
		s = strings.TrimLeft(s, " ,")
		if strings.HasPrefix(s, "}") {
			return labels, s[1:], nil
		}
		eq := strings.Index(s, "=")
		if eq < 0 || len(s) < eq+2 || s[eq+1] != '"' {
			return nil, "", fmt.Errorf("bad labels at %q", s)
		}
		key := strings.TrimSpace(s[:eq])
		s = s[eq+2:]
		var b strings.Builder
		closed := false
		for i := 0; i < len(s); i++ {
			switch c := s[i]; {
			case c == '\\' && i+1 < len(s):
				i++
				if s[i] == 'n' {
					b.WriteByte('\n')
				} else {
					b.WriteByte(s[i])
				}
			case c == '"':
				labels[key] = b.String()
				s, closed = s[i+1:], true
			default:
				b.WriteByte(c)
			}
			if closed {
				break
			}
		}
		if !closed {
			return nil, "", fmt.Errorf("unterminated label value for %s", key)
		}
	}
}

func (c *client) scrape(ctx context.Context) (scrape, error) {
	body, err := c.get(ctx, "/metrics")
	if err != nil {
		return scrape{}, err
	}
	series, err := parseMetrics(string(body))
	if err != nil {
		return scrape{}, fmt.Errorf("%s /metrics is not Prometheus text (%v): wrong address? %s", c.addr, err, hint)
	}
	return scrape{at: now(), series: series}, nil
}

// sum adds the series of name whose labels include match.
func (s scrape) sum(name string, match map[string]string) float64 {
	var t float64
	for _, smp := range s.series[name] {
		ok := true
		for k, v := range match {
			if smp.labels[k] != v {
				ok = false
				break
			}
		}
		if ok {
			t += smp.value
		}
	}
	return t
}

// values lists the distinct values of label among the series of name.
func (s scrape) values(name, label string) []string {
	seen := map[string]bool{}
	var out []string
	for _, smp := range s.series[name] {
		if v, ok := smp.labels[label]; ok && !seen[v] {
			seen[v] = true
			out = append(out, v)
		}
	}
	sort.Strings(out)
	return out
}

// delta is a counter's increase from a to b; a counter that went down was
// reset (a restarted agent), so its whole value is the increase.
func delta(a, b float64) float64 {
	if b < a {
		return b
	}
	return b - a
}

// topView is one screen of weirctl top (and its JSON form).
type topView struct {
	Time     time.Time      `json:"time"`
	Interval float64        `json:"intervalSeconds"`
	Conns    []directionTop `json:"connections"`
	Clusters []clusterTop   `json:"clusters"`
	HTTP     []httpTop      `json:"http"`
	Routes   []routeTop     `json:"routes"`
}

// routeTop is one route rule of one service (route "" is the service's
// requests when it has no HTTP routes), over every cluster it sent to.
type routeTop struct {
	Service string `json:"service"`
	Route   string `json:"route"`
	requestTop
}

// requestTop is the request rates and latency of a protocol or a route.
type requestTop struct {
	PerSecond float64            `json:"requestsPerSecond"`
	ByClass   map[string]float64 `json:"perSecondByClass"`
	Mean      *float64           `json:"meanSeconds,omitempty"`
	P50       *float64           `json:"p50Seconds,omitempty"`
	P99       *float64           `json:"p99Seconds,omitempty"`
	Total     float64            `json:"requestsTotal"`
}

// latency fills r's mean, p50 and p99 from the histogram name (without
// its suffixes) over the series matching m.
func (r *requestTop) latency(a, b scrape, name string, m map[string]string) {
	n := delta(a.sum(name+"_count", m), b.sum(name+"_count", m))
	if n <= 0 {
		return
	}
	mean := delta(a.sum(name+"_sum", m), b.sum(name+"_sum", m)) / n
	r.Mean = &mean
	buckets := bucketDeltas(a, b, name+"_bucket", m)
	r.P50, r.P99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
}

type directionTop struct {
	Direction string  `json:"direction"`
	PerSecond float64 `json:"perSecond"`
	Active    float64 `json:"active"`
}

type clusterTop struct {
	Cluster          string  `json:"cluster"`
	PerSecond        float64 `json:"connectionsPerSecond"`
	FailuresPerSec   float64 `json:"connectFailuresPerSecond"`
	RetriesPerSecond float64 `json:"retriesPerSecond"`
	Active           float64 `json:"active"`
	Total            float64 `json:"connectionsTotal"`
}

type httpTop struct {
	Protocol string `json:"protocol"`
	requestTop
}

// rates computes one screen from two scrapes.
func rates(a, b scrape) topView {
	secs := b.at.Sub(a.at).Seconds()
	if secs <= 0 {
		secs = math.SmallestNonzeroFloat64
	}
	v := topView{Time: b.at.UTC(), Interval: math.Round(secs*1000) / 1000,
		Conns: []directionTop{}, Clusters: []clusterTop{}, HTTP: []httpTop{}, Routes: routeRates(a, b, secs)}
	for _, dir := range b.values("weir_connections_total", "direction") {
		m := map[string]string{"direction": dir}
		v.Conns = append(v.Conns, directionTop{Direction: dir,
			PerSecond: delta(a.sum("weir_connections_total", m), b.sum("weir_connections_total", m)) / secs,
			Active:    b.sum("weir_connections_active", m)})
	}
	for _, cl := range b.values("weir_cluster_connections_total", "cluster") {
		m := map[string]string{"cluster": cl}
		rate := func(name string) float64 { return delta(a.sum(name, m), b.sum(name, m)) / secs }
		v.Clusters = append(v.Clusters, clusterTop{Cluster: cl,
			PerSecond:        rate("weir_cluster_connections_total"),
			FailuresPerSec:   rate("weir_cluster_connect_failures_total"),
			RetriesPerSecond: rate("weir_cluster_retries_total"),
			Active:           b.sum("weir_cluster_active_connections", m),
			Total:            b.sum("weir_cluster_connections_total", m)})
	}
	sort.SliceStable(v.Clusters, func(i, j int) bool {
		if v.Clusters[i].PerSecond != v.Clusters[j].PerSecond {
			return v.Clusters[i].PerSecond > v.Clusters[j].PerSecond
		}
		return v.Clusters[i].Cluster < v.Clusters[j].Cluster
	})
	for _, proto := range b.values("weir_http_requests_total", "protocol") {
		m := map[string]string{"protocol": proto}
		total := b.sum("weir_http_requests_total", m)
		if total == 0 {
			continue
		}
		h := httpTop{Protocol: proto, requestTop: requestTop{Total: total, ByClass: map[string]float64{},
			PerSecond: delta(a.sum("weir_http_requests_total", m), total) / secs}}
		for _, class := range b.values("weir_http_requests_total", "code") {
			mc := map[string]string{"protocol": proto, "code": class}
			if d := delta(a.sum("weir_http_requests_total", mc), b.sum("weir_http_requests_total", mc)); d > 0 {
				h.ByClass[class] = d / secs
			}
		}
		h.latency(a, b, "weir_http_request_duration_seconds", m)
		v.HTTP = append(v.HTTP, h)
	}
	return v
}

// routeRates is the per-route part of a screen, from weir_route_*: the
// busiest first.
func routeRates(a, b scrape, secs float64) []routeTop {
	out := []routeTop{}
	seen := map[[2]string]bool{}
	for _, smp := range b.series["weir_route_requests_total"] {
		k := [2]string{smp.labels["service"], smp.labels["route"]}
		if seen[k] {
			continue
		}
		seen[k] = true
		m := map[string]string{"service": k[0], "route": k[1]}
		total := b.sum("weir_route_requests_total", m)
		r := routeTop{Service: k[0], Route: k[1], requestTop: requestTop{Total: total, ByClass: map[string]float64{},
			PerSecond: delta(a.sum("weir_route_requests_total", m), total) / secs}}
		for _, s := range b.series["weir_route_requests_total"] {
			if s.labels["service"] != k[0] || s.labels["route"] != k[1] {
				continue
			}
			mc := map[string]string{"service": k[0], "route": k[1], "cluster": s.labels["cluster"], "code": s.labels["code"], "grpc_status": s.labels["grpc_status"]}
			if d := delta(a.sum("weir_route_requests_total", mc), s.value); d > 0 {
				r.ByClass[statusClass(s.labels["code"])] += d / secs
			}
		}
		r.latency(a, b, "weir_route_request_duration_seconds", m)
		out = append(out, r)
	}
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].PerSecond != out[j].PerSecond {
			return out[i].PerSecond > out[j].PerSecond
		}
		if out[i].Service != out[j].Service {
			return out[i].Service < out[j].Service
		}
		return out[i].Route < out[j].Route
	})
	return out
}

// statusClass names an HTTP status's class as weir_http_requests_total
// does ("2xx"; "none" for 0).
func statusClass(code string) string {
	if len(code) != 3 || code[0] < '1' || code[0] > '5' {
		return "none"
	}
	return code[:1] + "xx"
}

type bucket struct{ le, count float64 }

// bucketDeltas is a histogram's cumulative buckets over the interval.
func bucketDeltas(a, b scrape, name string, match map[string]string) []bucket {
	var out []bucket
	for _, smp := range b.series[name] {
		ok := true
		for k, v := range match {
			if smp.labels[k] != v {
				ok = false
			}
		}
		if !ok {
			continue
		}
		le, err := strconv.ParseFloat(smp.labels["le"], 64)
		if err != nil {
			continue
		}
		m := map[string]string{"le": smp.labels["le"]}
		for k, v := range match {
			m[k] = v
		}
		if i := slices.IndexFunc(out, func(bk bucket) bool { return bk.le == le }); i >= 0 {
			// Another series of the match (a route's other cluster):
			// its sum already counts this bucket.
			continue
		}
		out = append(out, bucket{le: le, count: delta(a.sum(name, m), b.sum(name, m))})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].le < out[j].le })
	return out
}

// quantile estimates q from cumulative buckets, interpolating linearly
// inside the bucket that holds it (as Prometheus' histogram_quantile does);
// in the +Inf bucket it answers the highest finite bound.
func quantile(bs []bucket, q float64) *float64 {
	if len(bs) == 0 || bs[len(bs)-1].count == 0 {
		return nil
	}
	rank := q * bs[len(bs)-1].count
	lower, below := 0.0, 0.0
	for _, bk := range bs {
		if bk.count >= rank {
			if math.IsInf(bk.le, 1) {
				v := lower
				return &v
			}
			v := lower
			if in := bk.count - below; in > 0 {
				v = lower + (bk.le-lower)*(rank-below)/in
			}
			return &v
		}
		lower, below = bk.le, bk.count
	}
	return nil
}

func cmdTop(ctx context.Context, c *client, o options, w io.Writer) error {
	prev, err := c.scrape(ctx)
	if err != nil {
		return err
	}
	for i := 0; i < o.count; i++ {
		t := time.NewTimer(o.interval)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		cur, err := c.scrape(ctx)
		if err != nil {
			return err
		}
		v := rates(prev, cur)
		prev = cur
		if o.output == "json" {
			if err := writeJSON(w, v); err != nil {
				return err
			}
			continue
		}
		if i > 0 {
			fmt.Fprintln(w)
		}
		if err := printTop(w, v); err != nil {
			return err
		}
	}
	return nil
}

func printTop(w io.Writer, v topView) error {
	fmt.Fprintf(w, "%s, rates over %.1fs\n", v.Time.Format(time.RFC3339), v.Interval)
	var conns []string
	for _, d := range v.Conns {
		conns = append(conns, fmt.Sprintf("%s %.1f/s (%.0f open)", d.Direction, d.PerSecond, d.Active))
	}
	if len(conns) > 0 {
		fmt.Fprintf(w, "connections: %s\n", strings.Join(conns, ", "))
	}
	fmt.Fprintln(w)
	tw := newTable(w)
	fmt.Fprintln(tw, "CLUSTER\tCONN/S\tFAIL/S\tRETRY/S\tACTIVE\tTOTAL")
	for _, c := range v.Clusters {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.0f\t%.0f\n", c.Cluster, c.PerSecond, c.FailuresPerSec, c.RetriesPerSecond, c.Active, c.Total)
	}
	if len(v.Clusters) == 0 {
		fmt.Fprintln(tw, "(no cluster)\t\t\t\t\t")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(v.HTTP) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "PROTOCOL\tREQ/S\t2XX/S\t4XX/S\t5XX/S\tMEAN\tP50\tP99\tTOTAL")
	for _, h := range v.HTTP {
		fmt.Fprintf(tw, "%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%.0f\n", h.Protocol, h.PerSecond,
			h.ByClass["2xx"], h.ByClass["4xx"], h.ByClass["5xx"], seconds(h.Mean), seconds(h.P50), seconds(h.P99), h.Total)
	}
	if err := tw.Flush(); err != nil || len(v.Routes) == 0 {
		return err
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	fmt.Fprintln(tw, "SERVICE\tROUTE\tREQ/S\t2XX/S\t4XX/S\t5XX/S\tMEAN\tP50\tP99\tTOTAL")
	for _, r := range v.Routes {
		rt := r.Route
		if rt == "" {
			rt = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.1f\t%.1f\t%.1f\t%s\t%s\t%s\t%.0f\n", r.Service, rt, r.PerSecond,
			r.ByClass["2xx"], r.ByClass["4xx"], r.ByClass["5xx"], seconds(r.Mean), seconds(r.P50), seconds(r.P99), r.Total)
	}
	return tw.Flush()
}

func seconds(s *float64) string {
	if s == nil {
		return "-"
	}
	return time.Duration(*s * float64(time.Second)).Round(10 * time.Microsecond).String()
}
