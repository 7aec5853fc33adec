package route

import (
	"github.com/weir-mesh/weir/proxy/cluster"
)

// Mirror is a compiled RequestMirror filter: where a rule's copies go and
// which share of its requests is copied.
type Mirror struct {
	// Service names the mirror backend in logs.
	Service string
	// Cluster takes the copies; balanced, ejected and counted as any
	// cluster is, so a dead mirror backend costs a connect attempt per
	// copy only until it is ejected.
	Cluster *cluster.Cluster
	at      threshold
}

// Sampled reports whether this request is to be copied.
func (m *Mirror) Sampled() bool { return m.at.pick() }

// compileMirror checks one RequestMirror filter at fw and resolves its
// backend; nil when it is invalid (reported through bad) or its backend
// is unresolved (nothing to copy to, as Gateway API has it for an invalid
// mirror backendRef: the rule itself still works).
func compileMirror(f *RequestMirror, clusterOf func(string) *cluster.Cluster, fw string, bad func(string, ...any)) *Mirror {
	if f == nil {
		bad("%s.requestMirror is missing", fw)
		return nil
	}
	percent := 100.0
	switch {
	case f.Percent != nil && f.Fraction != nil:
		bad("%s.requestMirror has both percent and fraction", fw)
		return nil
	case f.Percent != nil:
		if *f.Percent < 0 || *f.Percent > 100 {
			bad("%s.requestMirror.percent %d is not in 0-100", fw, *f.Percent)
			return nil
		}
		percent = float64(*f.Percent)
	case f.Fraction != nil:
		den := int32(100)
		if f.Fraction.Denominator != nil {
			den = *f.Fraction.Denominator
		}
		if den < 1 || f.Fraction.Numerator < 0 || f.Fraction.Numerator > den {
			bad("%s.requestMirror.fraction %d/%d is not a share (0 <= numerator <= denominator, denominator >= 1)", fw, f.Fraction.Numerator, den)
			return nil
		}
		percent = 100 * float64(f.Fraction.Numerator) / float64(den)
	}
	if f.BackendRef.Unresolved != "" {
		return nil
	}
	c := clusterOf(f.BackendRef.Service)
	if c == nil {
		bad("%s.requestMirror.backendRef.service %q is not a service", fw, f.BackendRef.Service)
		return nil
	}
	return &Mirror{Service: f.BackendRef.Service, Cluster: c, at: newThreshold(percent)}
}
