package route

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/weir-mesh/weir/proxy/cluster"
)

// TestRunHealthChecksLoopback checks real listeners on 127.0.0.1: closing
// one makes its checks fail and takes it out of rotation.
func TestRunHealthChecksLoopback(t *testing.T) {
	var lns []net.Listener
	var eps []cluster.Endpoint
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen on loopback: %v", err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		lns = append(lns, ln)
		eps = append(eps, cluster.Endpoint{Addr: netip.MustParseAddrPort(ln.Addr().String())})
	}
	hc := cluster.HealthCheckConfig{Enabled: true, Interval: cluster.Duration(20 * time.Millisecond), Timeout: cluster.Duration(time.Second), UnhealthyThreshold: 2}
	var tb Table
	tb.Store(mustBuild(t, Config{Services: []Service{{
		Name: "web", Addresses: []netip.AddrPort{ap("10.96.0.10:80")}, Endpoints: eps,
		Cluster: cluster.Config{HealthCheck: hc},
	}}}, nil))

	dial := func(ctx context.Context, a netip.AddrPort) (*net.TCPConn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", a.String())
		if err != nil {
			return nil, err
		}
		return c.(*net.TCPConn), nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); RunHealthChecks(ctx, &tb, dial, 10*time.Millisecond, 4) }()
	t.Cleanup(func() { cancel(); wg.Wait() })

	lns[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := tb.Load().Cluster("web").Stats()
		if s.Endpoints[0].HealthCheckFailing {
			if s.Endpoints[1].HealthCheckFailing {
				t.Fatal("the live endpoint is failing its checks too")
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed listener never marked failing: %+v", s.Endpoints[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
	for range 10 {
		conn, l, err := tb.Load().Lookup(ap("10.96.0.10:80")).Cluster.Connect(context.Background(), 0, dial)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		if l.Endpoint() == eps[0].Addr {
			t.Fatal("connected to the endpoint failing its checks")
		}
		l.Done(nil)
	}
}
