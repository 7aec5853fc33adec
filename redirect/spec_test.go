package redirect

import (
	"strings"
	"testing"
)

func TestWithDefaults(t *testing.T) {
	got := Spec{IPv4: true}.WithDefaults()
	if got.Mode != ModeRedirect || got.OutboundPort != DefaultOutboundPort || got.InboundPort != DefaultInboundPort ||
		got.Mark != DefaultMark || got.Mask != DefaultMask {
		t.Fatalf("defaults not filled: %+v", got)
	}
	if err := got.Validate(); err != nil {
		t.Fatalf("defaulted spec invalid: %v", err)
	}
	in := Spec{ExcludeInboundPorts: []uint16{22}}
	out := in.WithDefaults()
	out.ExcludeInboundPorts[0] = 23
	if in.ExcludeInboundPorts[0] != 22 {
		t.Fatal("WithDefaults shares list memory with its receiver")
	}
}

func TestValidate(t *testing.T) {
	valid := Spec{IPv4: true, IPv6: true}.WithDefaults()
	cases := []struct {
		name    string
		edit    func(*Spec)
		wantErr string // "" means valid
	}{
		{"defaults", func(*Spec) {}, ""},
		{"all options", func(s *Spec) {
			s.ExcludeInboundPorts = []uint16{22, 22}
			s.ExcludeOutboundPorts = []uint16{53}
			s.ExcludeOutboundCIDRs = []string{"10.0.0.0/8", "fd00::/8", "192.168.1.7/32"}
			s.Backend = BackendNFT
		}, ""},
		{"full mask", func(s *Spec) { s.Mark, s.Mask = 0x1, 0xffffffff }, ""},
		{"unknown mode", func(s *Spec) { s.Mode = "magic" }, `unknown mode "magic"`},
		{"empty mode", func(s *Spec) { s.Mode = "" }, "mode is empty"},
		{"tproxy", func(s *Spec) { s.Mode = ModeTPROXY }, ""},
		{"ebpf", func(s *Spec) { s.Mode = ModeEBPF }, ""},
		{"tproxy custom", func(s *Spec) {
			s.Mode = ModeTPROXY
			s.TPROXYMark, s.TPROXYMask, s.RouteTable, s.RulePriority = 0x10000, 0x10000, 5000, 32765
		}, ""},
		{"tproxy mark clashes", func(s *Spec) { s.Mode, s.TPROXYMark = ModeTPROXY, s.Mark }, "cannot be told apart"},
		{"tproxy mark inside bypass mark", func(s *Spec) {
			s.Mode, s.Mark, s.Mask, s.TPROXYMark, s.TPROXYMask = ModeTPROXY, 0x1, 0x1, 0x3, 0x3
		}, "cannot be told apart"},
		{"tproxy mark outside mask", func(s *Spec) { s.Mode, s.TPROXYMark = ModeTPROXY, 0x15800 }, "outside its mask"},
		{"tproxy main table", func(s *Spec) { s.Mode, s.RouteTable = ModeTPROXY, 254 }, "reserved"},
		{"tproxy local table", func(s *Spec) { s.Mode, s.RouteTable = ModeTPROXY, 255 }, "reserved"},
		{"tproxy priority after main", func(s *Spec) { s.Mode, s.RulePriority = ModeTPROXY, 32766 }, "before the main table"},
		{"tproxy priority 0", func(s *Spec) { s.Mode, s.RulePriority = ModeTPROXY, 0 }, "before the main table"},
		{"redirect ignores tproxy fields", func(s *Spec) { s.RouteTable = 254 }, ""},
		{"outbound port 0", func(s *Spec) { s.OutboundPort = 0 }, "outbound port is 0"},
		{"inbound port 0", func(s *Spec) { s.InboundPort = 0 }, "inbound port is 0"},
		{"same ports", func(s *Spec) { s.InboundPort = s.OutboundPort }, "both 15001"},
		{"mark outside mask", func(s *Spec) { s.Mark, s.Mask = 0x5701, 0xff00 }, "outside its mask"},
		{"zero mask", func(s *Spec) { s.Mask = 0 }, "mask is 0"},
		{"zero mark", func(s *Spec) { s.Mark = 0 }, "mark is 0"},
		{"no family", func(s *Spec) { s.IPv4, s.IPv6 = false, false }, "no IP family"},
		{"include and exclude", func(s *Spec) {
			s.IncludeInboundPorts = []uint16{80}
			s.ExcludeInboundPorts = []uint16{22}
		}, "both set"},
		{"port 0 in list", func(s *Spec) { s.ExcludeOutboundPorts = []uint16{80, 0} }, "excludeOutboundPorts holds port 0"},
		{"bad CIDR", func(s *Spec) { s.ExcludeOutboundCIDRs = []string{"10.0.0.0/33"} }, "excludeOutboundCIDRs"},
		{"address not CIDR", func(s *Spec) { s.ExcludeOutboundCIDRs = []string{"10.0.0.1"} }, "excludeOutboundCIDRs"},
		{"unknown backend", func(s *Spec) { s.Backend = "bpfilter" }, `unknown backend "bpfilter"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := valid.WithDefaults()
			c.edit(&s)
			err := s.Validate()
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("want valid, got %v", err)
			case c.wantErr != "" && err == nil:
				t.Fatalf("want error containing %q, got nil", c.wantErr)
			case c.wantErr != "" && !strings.Contains(err.Error(), c.wantErr):
				t.Fatalf("want error containing %q, got %v", c.wantErr, err)
			}
		})
	}
}
