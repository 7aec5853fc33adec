package kbtf

import (
	"strings"
	"testing"
)

// TestRequireRdonlyCast: this kernel (6.18) has what the acceleration and
// the splice read, and a missing struct or field is named.
func TestRequireRdonlyCast(t *testing.T) {
	if err := RequireRdonlyCast(Struct{Name: "sock", Fields: []string{"sk_user_data", "sk_sndbuf"}}); err != nil {
		t.Fatal(err)
	}
	// skc_daddr sits in an anonymous struct inside a union.
	if err := RequireRdonlyCast(Struct{Name: "sock_common", Fields: []string{"skc_daddr"}}, Struct{Name: "sk_psock", Fields: []string{"ingress_skb"}}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		s    Struct
		want string
	}{
		{Struct{Name: "weir_no_such_struct"}, "kernel struct weir_no_such_struct"},
		{Struct{Name: "sock", Fields: []string{"weir_no_such_field"}}, "kernel struct sock has no field weir_no_such_field"},
	} {
		err := RequireRdonlyCast(tc.s)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("RequireRdonlyCast(%v) = %v, want an error naming %q", tc.s, err, tc.want)
		}
	}
}
