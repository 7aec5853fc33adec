package proxy

import (
	"context"
	"net/netip"

	"github.com/weir-mesh/weir/proxy/route"
)

// OnDemand lets routing arrive lazily: a source (the xDS client with
// on-demand clusters) knows up front which destinations it can route
// (listener addresses) but fetches their clusters only when a connection
// needs one. The engine asks it for every outbound connection before the
// route lookup.
type OnDemand interface {
	// Await marks what dst needs as used and, when some of it is not held
	// yet, requests it and blocks until it is routable or a bounded wait
	// (the source's own timeout, or ctx) ends. It returns nil at once for a
	// destination the source does not route on demand or whose routing is
	// already held; an error means dst's routing did not arrive in time.
	Await(ctx context.Context, dst netip.AddrPort) error
}

// lookup routes an outbound destination, waiting for on-demand routing
// first when the engine has a source for it. A destination whose routing
// did not arrive in time is refused rather than passed through to an
// address only the mesh can serve.
func (e *Engine) lookup(dst netip.AddrPort) route.Route {
	if e.OnDemand == nil {
		return e.Routes.Load().Lookup(dst)
	}
	if err := e.OnDemand.Await(e.ctx, dst); err != nil {
		e.Log.Debug("on-demand routing did not arrive", "dst", dst, "err", err)
		return route.Route{}
	}
	return e.Routes.Load().Lookup(dst)
}
