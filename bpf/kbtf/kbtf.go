// Package kbtf checks the running kernel's BTF for what a weir eBPF program
// reads through bpf_rdonly_cast and CO-RE: such a program still loads on a
// kernel that lacks a field (bpf_core_field_exists turns the read off), so
// the loader asks first and names what is missing instead of running a
// program that silently does nothing.
package kbtf

import (
	"fmt"

	"github.com/cilium/ebpf/btf"
)

// Struct names a kernel structure and the fields a program reads of it.
type Struct struct {
	Name   string
	Fields []string
}

// RequireRdonlyCast reports, naming it, the first thing the running
// kernel lacks: its BTF, the kfunc bpf_rdonly_cast (Linux 6.2), one of
// structs or one of their fields; nil when it has them all.
func RequireRdonlyCast(structs ...Struct) error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("kernel BTF: %w", err)
	}
	var fn *btf.Func
	if err := spec.TypeByName("bpf_rdonly_cast", &fn); err != nil {
		return fmt.Errorf("kfunc bpf_rdonly_cast (Linux 6.2): %w", err)
	}
	for _, want := range structs {
		var st *btf.Struct
		if err := spec.TypeByName(want.Name, &st); err != nil {
			return fmt.Errorf("kernel struct %s: %w", want.Name, err)
		}
		for _, m := range want.Fields {
			if !hasMember(st.Members, m) {
				return fmt.Errorf("kernel struct %s has no field %s", want.Name, m)
			}
		}
	}
	return nil
}

// hasMember reports whether members hold a field named name, looking into
// anonymous structs and unions as CO-RE does.
func hasMember(members []btf.Member, name string) bool {
	for _, m := range members {
		if m.Name == name {
			return true
		}
		if m.Name != "" {
			continue
		}
		switch c := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			if hasMember(c.Members, name) {
				return true
			}
		case *btf.Union:
			if hasMember(c.Members, name) {
				return true
			}
		}
	}
	return false
}
