package agent

import (
	"context"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/weir-mesh/weir/bpf/splice"
	"github.com/weir-mesh/weir/proxy/relay"
)

// loadSplicer loads the in-kernel splice of L4 relays when
// capture.ebpf.splice asks for it and hands it to the engine. A kernel that
// lacks what it needs runs without, with a warning, as for the
// acceleration.
func (a *Agent) loadSplicer() {
	if !a.cfg.Capture.EBPF.Splice {
		return
	}
	s, err := splice.Load()
	if err != nil {
		a.log.Warn("in-kernel splice of L4 relays left off", "err", err)
		return
	}
	a.splicer = s
	a.reg.MustRegister(&spliceCollector{s: s})
	a.engine.Splice = a.spliceRelay
	a.log.Info("in-kernel splice of L4 relays on")
}

// spliceRelay is the engine's Engine.Splice: it splices the pair and
// relays what the kernel leaves to user space (FIN, errors, a direction
// that fell back) until both directions end.
func (a *Agent) spliceRelay(ctx context.Context, client, upstream *net.TCPConn) (relay.Result, bool) {
	p, err := a.splicer.Splice(client, upstream)
	if err != nil {
		a.log.Debug("L4 relay not spliced", "err", err)
		return relay.Result{}, false
	}
	if err := p.Degraded(); err != nil {
		a.log.Debug("L4 relay spliced one way only", "err", err)
	}
	r := p.Relay(ctx)
	return relay.Result{Up: r.AToB, Down: r.BToA, UpErr: r.Err}, true
}

// closeSplicer releases the splice program and maps once the engine has
// drained (pairs still spliced end with the process anyway).
func (a *Agent) closeSplicer() {
	if a.splicer != nil {
		a.splicer.Close()
	}
}

// spliceCollector exports the splice program's per-CPU counters.
type spliceCollector struct{ s *splice.Splicer }

var spliceDesc = prometheus.NewDesc("weir_ebpf_splice_total",
	"In-kernel splice of L4 relays (capture.ebpf.splice), counted in the kernel: skbs and bytes sent straight to the peer socket, skbs that found no peer, directions that fell back to user space because the peer was full, bytes handed to user space after a fallback, bytes of retransmitted segments cut off, and segments that could not be cut (the pair is reset).",
	[]string{"event"}, nil)

func (c *spliceCollector) Describe(ch chan<- *prometheus.Desc) { ch <- spliceDesc }

func (c *spliceCollector) Collect(ch chan<- prometheus.Metric) {
	st, err := c.s.Stats()
	if err != nil {
		return
	}
	for k, v := range st {
		ch <- prometheus.MustNewConstMetric(spliceDesc, prometheus.CounterValue, float64(v), k)
	}
}
