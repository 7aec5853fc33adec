package route

import (
	"net/netip"
	"strings"
	"testing"
)

// upstreamProtocol http2 reaches the route; anything else, or http2 on a
// service whose clients cannot speak HTTP, is refused with the service
// named.
func TestUpstreamProtocol(t *testing.T) {
	vip := netip.MustParseAddrPort("10.96.0.1:80")
	cfg := l7Config(nil)
	cfg.Services[0].UpstreamProtocol = HTTP2
	snap, err := Build(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := snap.Lookup(vip).UpstreamProtocol; got != HTTP2 {
		t.Errorf("route's upstream protocol %q, want http2", got)
	}
	for _, tc := range []struct {
		proto, up Protocol
		want      string
	}{
		{HTTP, "h3", `upstreamProtocol "h3" is not one of auto, http2`},
		{TCP, HTTP2, "upstreamProtocol http2 needs protocol auto, http, http2 or grpc, not tcp"},
		{Dubbo, HTTP2, "not dubbo"},
	} {
		cfg := l7Config(nil)
		cfg.Services[0].Protocol, cfg.Services[0].UpstreamProtocol = tc.proto, tc.up
		_, err := Build(cfg, nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), cfg.Services[0].Name) {
			t.Errorf("protocol %q upstreamProtocol %q: %v, want an error naming the service with %q", tc.proto, tc.up, err, tc.want)
		}
	}
	for in, want := range map[string]Protocol{"": Auto, "auto": Auto, "HTTP2": HTTP2} {
		if got, err := ParseUpstreamProtocol(in); err != nil || got != want {
			t.Errorf("ParseUpstreamProtocol(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseUpstreamProtocol("http"); err == nil {
		t.Error("ParseUpstreamProtocol(http) accepted")
	}
}
