package podconfig

import (
	"reflect"
	"strings"
	"testing"

	"github.com/weir-mesh/weir/redirect"
)

func TestFromAnnotations(t *testing.T) {
	o, err := FromAnnotations(map[string]string{
		AnnotationMode:                 "tproxy",
		AnnotationExcludeInboundPorts:  "9090, 22",
		AnnotationExcludeOutboundPorts: "5432",
		AnnotationExcludeOutboundCIDRs: "10.0.0.0/8,fd00::/8",
		"other.io/x":                   "ignored",
	})
	if err != nil {
		t.Fatal(err)
	}
	want := Overrides{Mode: "tproxy", ExcludeInboundPorts: []uint16{22, 9090}, ExcludeOutboundPorts: []uint16{5432}, ExcludeOutboundCIDRs: []string{"10.0.0.0/8", "fd00::/8"}}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("got %+v want %+v", o, want)
	}
	for _, tc := range []struct {
		a    map[string]string
		want string
	}{
		{map[string]string{AnnotationMode: "fast"}, "mode"},
		{map[string]string{AnnotationExcludeInboundPorts: "http"}, AnnotationExcludeInboundPorts},
		{map[string]string{AnnotationExcludeOutboundPorts: "70000"}, AnnotationExcludeOutboundPorts},
		{map[string]string{AnnotationExcludeOutboundCIDRs: "10.0.0.0"}, "excludeOutboundCIDRs"},
		{map[string]string{AnnotationIncludeInboundPorts: "80", AnnotationExcludeInboundPorts: "22"}, "one or the other"},
	} {
		if _, err := FromAnnotations(tc.a); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("FromAnnotations(%v) = %v, want error naming %q", tc.a, err, tc.want)
		}
	}
}

func TestApply(t *testing.T) {
	base := redirect.Spec{Mode: redirect.ModeRedirect, ExcludeInboundPorts: []uint16{22}, ExcludeOutboundPorts: []uint16{53}}
	got := Overrides{IncludeInboundPorts: []uint16{8080}, Mode: "tproxy"}.Apply(base)
	if got.Mode != redirect.ModeTPROXY || got.ExcludeInboundPorts != nil || !reflect.DeepEqual(got.IncludeInboundPorts, []uint16{8080}) || !reflect.DeepEqual(got.ExcludeOutboundPorts, []uint16{53}) {
		t.Fatalf("Apply: %+v", got)
	}
	if !reflect.DeepEqual(Overrides{}.Apply(base), base) {
		t.Fatal("zero overrides changed the spec")
	}
}
