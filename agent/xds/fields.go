package xds

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// notes collects what one resource's conversion could not honour: errors
// make the resource unusable (it is NACKed and not applied), warnings are
// fields weir ignores (logged, the resource applies without them).
type notes struct {
	errs     []string
	warnings []string
}

func (n *notes) fail(format string, args ...any) {
	n.errs = append(n.errs, fmt.Sprintf(format, args...))
}
func (n *notes) warn(format string, args ...any) {
	n.warnings = append(n.warnings, fmt.Sprintf(format, args...))
}

// ignored warns about every field set in m that is not listed in known,
// naming it by its path from the resource (prefix) and proto field name,
// so nothing the control plane sent is dropped without a word.
func (n *notes) ignored(m proto.Message, prefix string, known ...string) {
	if m == nil {
		return
	}
	r := m.ProtoReflect()
	if !r.IsValid() {
		return
	}
	var names []string
	r.Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(known, string(fd.Name())) {
			names = append(names, prefix+string(fd.Name()))
		}
		return true
	})
	if len(names) > 0 {
		slices.Sort(names)
		n.warn("ignored (not supported): %s", strings.Join(names, ", "))
	}
}

// unsupported fails on every field set in m that is not listed in known:
// for conditions (route matches) whose absence would widen what matches.
func (n *notes) unsupported(m proto.Message, prefix string, known ...string) {
	if m == nil || !m.ProtoReflect().IsValid() {
		return
	}
	m.ProtoReflect().Range(func(fd protoreflect.FieldDescriptor, _ protoreflect.Value) bool {
		if !slices.Contains(known, string(fd.Name())) {
			n.fail("%s%s is not supported", prefix, fd.Name())
		}
		return true
	})
}

// err returns the errors as one message, or "" when there are none.
func (n *notes) err() string { return strings.Join(n.errs, "; ") }

// duration converts a protobuf duration, keeping zero (take the default)
// when it is unset.
func duration(d *durationpb.Duration) cluster.Duration {
	if d == nil {
		return 0
	}
	return cluster.Duration(d.AsDuration())
}

// positiveDuration is duration that rejects negative values.
func positiveDuration(n *notes, field string, d *durationpb.Duration) cluster.Duration {
	if d == nil {
		return 0
	}
	if err := d.CheckValid(); err != nil {
		n.fail("%s: %v", field, err)
		return 0
	}
	v := d.AsDuration()
	if v < 0 {
		n.fail("%s must not be negative, got %s", field, v)
		return 0
	}
	if v == 0 {
		// weir reads zero as "default"; the smallest real value keeps
		// the control plane's intent of "as short as possible".
		v = time.Millisecond
	}
	return cluster.Duration(v)
}
