package xds

import (
	"fmt"
	"net/netip"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"

	"github.com/weir-mesh/weir/proxy/route"
)

// Type URLs of the terminal network filters weir understands.
const (
	tcpProxyType = "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
	hcmType      = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
)

// listenerEntry is an LDS resource as the destinations it claims and where
// each chain sends them. skip marks listeners that describe capture itself
// (use_original_dst) or inbound traffic: weir does both on its own.
type listenerEntry struct {
	skip   bool
	chains []chainEntry
}

// chainEntry is one usable filter chain: destinations (exact addresses and
// wildcard prefixes with a port) and its target: a cluster (tcp_proxy) or
// HTTP routes (RDS name or inline).
type chainEntry struct {
	addrs []netip.AddrPort
	cidrs []route.CIDRRoute
	// cluster is the tcp_proxy's xDS cluster name.
	cluster string
	// rds names the RouteConfiguration; inline holds an inline one.
	rds      string
	inline   *routeEntry
	protocol route.Protocol
}

// convertListener maps a Listener's address and filter chains.
func convertListener(l *listenerv3.Listener) (*listenerEntry, notes) {
	var n notes
	e := &listenerEntry{}
	if l.GetUseOriginalDst().GetValue() || l.GetTrafficDirection() == corev3.TrafficDirection_INBOUND {
		// Capture and inbound delivery are weir's own job.
		e.skip = true
		return e, n
	}
	if l.GetApiListener() != nil {
		n.fail("api_listener is not supported")
		return e, n
	}
	n.ignored(l, "", "name", "address", "additional_addresses", "filter_chains", "default_filter_chain",
		"use_original_dst", "traffic_direction",
		// Sniffing and socket options of Envoy's own listening socket:
		// weir sniffs itself and listens inside each pod.
		"listener_filters", "listener_filters_timeout", "continue_on_listener_filters_timeout",
		"bind_to_port", "deprecated_v1", "stat_prefix", "metadata", "transparent", "freebind",
		"socket_options", "reuse_port", "enable_reuse_port", "tcp_backlog_size", "connection_balance_config")
	var base []netip.AddrPort
	addOne := func(p string, a *corev3.Address) {
		sa := a.GetSocketAddress()
		if sa == nil {
			n.fail("%s: only socket addresses are supported", p)
			return
		}
		ip, err := netip.ParseAddr(sa.GetAddress())
		if err != nil {
			n.fail("%s %q is not an IP address", p, sa.GetAddress())
			return
		}
		pv := sa.GetPortValue()
		if pv == 0 || pv > 65535 {
			n.fail("%s needs a port_value between 1 and 65535", p)
			return
		}
		base = append(base, netip.AddrPortFrom(ip.Unmap(), uint16(pv)))
	}
	addOne("address", l.GetAddress())
	for i, a := range l.GetAdditionalAddresses() {
		addOne(fmt.Sprintf("additional_addresses[%d].address", i), a.GetAddress())
	}
	if len(n.errs) > 0 {
		return e, n
	}
	chains := l.GetFilterChains()
	if d := l.GetDefaultFilterChain(); d != nil {
		chains = append(chains[:len(chains):len(chains)], d)
	}
	claimed := map[string]bool{}
	for i, fc := range chains {
		p := fmt.Sprintf("filter_chains[%d].", i)
		if i == len(l.GetFilterChains()) {
			p = "default_filter_chain."
		}
		c, ok := convertChain(&n, p, fc, base)
		if !ok {
			continue
		}
		// The first chain claiming a destination wins, as the most
		// specific Envoy chain would for the matches weir supports.
		keep := c.addrs[:0]
		for _, a := range c.addrs {
			if !claimed[a.String()] {
				claimed[a.String()] = true
				keep = append(keep, a)
			}
		}
		c.addrs = keep
		keepC := c.cidrs[:0]
		for _, r := range c.cidrs {
			k := fmt.Sprintf("%s:%d", r.Prefix, r.Port)
			if !claimed[k] {
				claimed[k] = true
				keepC = append(keepC, r)
			}
		}
		c.cidrs = keepC
		if len(c.addrs)+len(c.cidrs) > 0 {
			e.chains = append(e.chains, c)
		}
	}
	if len(e.chains) == 0 && len(n.errs) == 0 {
		n.fail("no filter chain weir can use")
	}
	return e, n
}

func convertChain(n *notes, p string, fc *listenerv3.FilterChain, base []netip.AddrPort) (chainEntry, bool) {
	var c chainEntry
	n.ignored(fc, p, "filter_chain_match", "filters", "name", "metadata")
	m := fc.GetFilterChainMatch()
	httpALPN := plaintextHTTP(m)
	if len(m.GetServerNames()) > 0 || m.GetTransportProtocol() == "tls" || (len(m.GetApplicationProtocols()) > 0 && !httpALPN) ||
		len(m.GetSourcePrefixRanges()) > 0 || len(m.GetDirectSourcePrefixRanges()) > 0 || len(m.GetSourcePorts()) > 0 ||
		m.GetSourceType() != listenerv3.FilterChainMatch_ANY {
		n.warn("%s ignored: filter_chain_match on server names, TLS, application protocols other than plaintext HTTP, or sources is not supported", strings.TrimSuffix(p, "."))
		return c, false
	}
	n.ignored(m, p+"filter_chain_match.", "destination_port", "prefix_ranges", "transport_protocol", "application_protocols")
	port := uint16(0)
	if dp := m.GetDestinationPort(); dp != nil {
		if dp.GetValue() == 0 || dp.GetValue() > 65535 {
			n.fail("%sfilter_chain_match.destination_port %d is not a port", p, dp.GetValue())
			return c, false
		}
		port = uint16(dp.GetValue())
	}
	if len(m.GetPrefixRanges()) > 0 {
		for i, r := range m.GetPrefixRanges() {
			ip, err := netip.ParseAddr(r.GetAddressPrefix())
			bits := int(r.GetPrefixLen().GetValue())
			if r.GetPrefixLen() == nil {
				bits = ip.BitLen()
			}
			pfx, perr := ip.Unmap().Prefix(bits)
			if err != nil || perr != nil {
				n.fail("%sfilter_chain_match.prefix_ranges[%d] %s/%d is not a prefix", p, i, r.GetAddressPrefix(), bits)
				return c, false
			}
			for _, b := range base {
				pt := b.Port()
				if port != 0 {
					pt = port
				}
				if pfx.Bits() == pfx.Addr().BitLen() {
					c.addrs = append(c.addrs, netip.AddrPortFrom(pfx.Addr(), pt))
				} else {
					c.cidrs = append(c.cidrs, route.CIDRRoute{Prefix: pfx, Port: pt})
				}
			}
		}
	} else {
		for _, b := range base {
			if port != 0 {
				b = netip.AddrPortFrom(b.Addr(), port)
			}
			if b.Addr().IsUnspecified() {
				// 0.0.0.0:80 holds every destination on port 80.
				pfx := netip.PrefixFrom(b.Addr(), 0)
				c.cidrs = append(c.cidrs, route.CIDRRoute{Prefix: pfx, Port: b.Port()})
				continue
			}
			c.addrs = append(c.addrs, b)
		}
	}
	filters := fc.GetFilters()
	if len(filters) == 0 {
		n.warn("%s ignored: no filters", strings.TrimSuffix(p, "."))
		return c, false
	}
	for i, f := range filters[:len(filters)-1] {
		n.warn("%sfilters[%d] %s ignored: only the terminal tcp_proxy or http_connection_manager is applied", p, i, f.GetName())
	}
	last := filters[len(filters)-1]
	fp := fmt.Sprintf("%sfilters[%d].", p, len(filters)-1)
	if last.GetConfigDiscovery() != nil {
		n.fail("%sconfig_discovery is not supported", fp)
		return c, false
	}
	switch t := last.GetTypedConfig().GetTypeUrl(); t {
	case tcpProxyType:
		var tp tcpv3.TcpProxy
		if err := last.GetTypedConfig().UnmarshalTo(&tp); err != nil {
			n.fail("%styped_config: %v", fp, err)
			return c, false
		}
		n.ignored(&tp, fp+"tcp_proxy.", "stat_prefix", "cluster", "weighted_clusters")
		c.protocol = route.TCP
		switch cs := tp.GetClusterSpecifier().(type) {
		case *tcpv3.TcpProxy_Cluster:
			c.cluster = cs.Cluster
		case *tcpv3.TcpProxy_WeightedClusters:
			var best uint32
			for _, w := range cs.WeightedClusters.GetClusters() {
				if c.cluster == "" || w.GetWeight() > best {
					c.cluster, best = w.GetName(), w.GetWeight()
				}
			}
			n.warn("%stcp_proxy.weighted_clusters: every connection goes to the heaviest cluster %q (weir splits connections by weight only in HTTP and TLS routes)", fp, c.cluster)
		}
		if c.cluster == "" {
			n.fail("%stcp_proxy names no cluster", fp)
			return c, false
		}
	case hcmType:
		if httpALPN {
			// Envoy's http_inspector picks this chain for plaintext HTTP
			// (Istio's outbound HTTP and protocol-sniffing listeners);
			// weir sniffs on its own and routes a destination one way.
			n.warn("%s: the chain for plaintext HTTP takes every connection to its destinations (weir sniffs HTTP itself; chains after it for other protocols on the same destinations are not used)", strings.TrimSuffix(p, "."))
		}
		var h hcmv3.HttpConnectionManager
		if err := last.GetTypedConfig().UnmarshalTo(&h); err != nil {
			n.fail("%styped_config: %v", fp, err)
			return c, false
		}
		hp := fp + "http_connection_manager."
		n.ignored(&h, hp, "stat_prefix", "codec_type", "rds", "route_config", "http_filters")
		for i, hf := range h.GetHttpFilters() {
			if hf.GetName() != "envoy.filters.http.router" && !strings.HasSuffix(hf.GetTypedConfig().GetTypeUrl(), ".router.v3.Router") {
				n.warn("%shttp_filters[%d] %s ignored", hp, i, hf.GetName())
			}
		}
		switch h.GetCodecType() {
		case hcmv3.HttpConnectionManager_HTTP1:
			c.protocol = route.HTTP
		case hcmv3.HttpConnectionManager_HTTP2:
			c.protocol = route.HTTP2
		case hcmv3.HttpConnectionManager_AUTO:
			// Declared HTTP: the connection waits for the client's
			// first bytes with no sniffing deadline (a loaded node must
			// not turn a slow request into an L4 relay to a service
			// that only holds routes), and the bytes still tell HTTP/1
			// from HTTP/2.
			c.protocol = route.HTTP
		default:
			n.fail("%scodec_type %s is not supported", hp, h.GetCodecType())
			return c, false
		}
		switch rs := h.GetRouteSpecifier().(type) {
		case *hcmv3.HttpConnectionManager_Rds:
			c.rds = rs.Rds.GetRouteConfigName()
			if c.rds == "" {
				n.fail("%srds.route_config_name is empty", hp)
				return c, false
			}
		case *hcmv3.HttpConnectionManager_RouteConfig:
			re, rn := convertRouteConfig(rs.RouteConfig)
			for _, w := range rn.warnings {
				n.warn("%sroute_config.%s", hp, w)
			}
			if len(rn.errs) > 0 {
				for _, e := range rn.errs {
					n.fail("%sroute_config.%s", hp, e)
				}
				return c, false
			}
			c.inline = re
		default:
			n.fail("%s: only rds and route_config are supported", strings.TrimSuffix(hp, "."))
			return c, false
		}
	default:
		n.warn("%s ignored: terminal filter %s (%s) is not supported", strings.TrimSuffix(p, "."), last.GetName(), t)
		return c, false
	}
	if httpALPN && c.protocol == route.TCP {
		n.warn("%s ignored: a tcp_proxy chain for plaintext HTTP application protocols is not supported", strings.TrimSuffix(p, "."))
		return c, false
	}
	return c, true
}

// plaintextHTTP reports whether a filter chain match selects plaintext
// HTTP by application protocol (what Envoy's http_inspector detects):
// application protocols among http/1.0, http/1.1 and h2c, over raw_buffer
// or any transport.
func plaintextHTTP(m *listenerv3.FilterChainMatch) bool {
	if len(m.GetApplicationProtocols()) == 0 || (m.GetTransportProtocol() != "" && m.GetTransportProtocol() != "raw_buffer") {
		return false
	}
	for _, p := range m.GetApplicationProtocols() {
		switch p {
		case "http/1.0", "http/1.1", "h2c":
		default:
			return false
		}
	}
	return true
}
