package cluster

import "math"

// outcome records one outcome on e for success-rate detection and, on
// the first outcome after an interval ended, evaluates that interval.
func (c *Cluster) outcome(e *endpoint, ok bool, now int64) {
	if !c.srOn {
		return
	}
	e.st.srTotal.Add(1)
	if !ok {
		e.st.srFailed.Add(1)
	}
	interval := int64(c.cfg.Outlier.SuccessRate.Interval)
	next := c.st.srNext.Load()
	switch {
	case next == 0:
		c.st.srNext.CompareAndSwap(0, now+interval)
	case now >= next && c.st.srNext.CompareAndSwap(next, now+interval):
		c.evaluateSuccessRate(now)
	}
}

// evaluateSuccessRate ejects the endpoints whose success rate over the
// interval just ended is below mean − stdevFactor × standard deviation
// of those with enough volume (Envoy's success_rate detection), and
// starts the next interval's counts. Endpoints already ejected are
// neither judged nor part of the mean.
func (c *Cluster) evaluateSuccessRate(now int64) {
	sr := &c.cfg.Outlier.SuccessRate
	type judged struct {
		e    *endpoint
		rate float64
	}
	var all []judged
	sum := 0.0
	for _, e := range c.eps {
		// failed first: an outcome landing between the two swaps then
		// counts its total here and its failure next time, never a
		// failure without its total.
		failed := e.st.srFailed.Swap(0)
		total := e.st.srTotal.Swap(0)
		if e.st.ejected(now) || total == 0 || total < uint64(sr.RequestVolume) {
			continue
		}
		rate := 1 - float64(min(failed, total))/float64(total)
		all = append(all, judged{e, rate})
		sum += rate
	}
	if len(all) == 0 || len(all) < sr.MinimumHosts {
		return
	}
	mean := sum / float64(len(all))
	variance := 0.0
	for _, j := range all {
		variance += (j.rate - mean) * (j.rate - mean)
	}
	threshold := mean - sr.StdevFactor*math.Sqrt(variance/float64(len(all)))
	for _, j := range all {
		if j.rate < threshold {
			c.eject(j.e, now)
		}
	}
}
