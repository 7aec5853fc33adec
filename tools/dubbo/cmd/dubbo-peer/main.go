// Command dubbo-peer is a real dubbo-go v3 provider or consumer for weir's
// end-to-end tests: it speaks the Dubbo 2 protocol (hessian2) with no
// registry, so the consumer dials the address it is given, as an
// application in a mesh dials a service address.
//
//	dubbo-peer provide -name p1 -port 20880 -export :  -export gold:1.0
//	dubbo-peer consume -url dubbo://10.96.0.50:20880 -calls 20 -group gold -version 1.0
//
// A provider exports the interface org.weir.Greeter once per -export
// group:version (":" is the default group and version) and answers
// Hello(x) with "<name> <group>/<version> <x>", so a test sees which
// provider and which export served each call. The consumer makes -calls
// calls over one reference and -conns connections (1 by default; dubbo-go's
// own default is 16) and prints each answer on a line, or with -parallel
// above 1 (a load generator) one line: the calls answered, the elapsed
// seconds and the p50 and p99 call latency in µs; any failed call exits 1.
//
// For timeout tests, a provider started with -stall D sleeps D before
// answering a call whose argument starts with "stall", and a consumer
// with -stall N names every Nth call "stall<i>" (the others "call<i>");
// with -report it prints one line per call, "ok <i> <ms> <answer>" or
// "err <i> <ms> <error>", and goes on past failed calls (exit 0).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"dubbo.apache.org/dubbo-go/v3/config"
	_ "dubbo.apache.org/dubbo-go/v3/imports"
)

const iface = "org.weir.Greeter"

// Greeter is one export (dubbo-go serves exported types only); dubbo-go keys providers by Reference().
type Greeter struct {
	ref, name, group, version string
	stall                     time.Duration
}

func (g *Greeter) Reference() string { return g.ref }

// Hello is the method consumers call.
func (g *Greeter) Hello(ctx context.Context, who string) (string, error) {
	if g.stall > 0 && strings.HasPrefix(who, "stall") {
		time.Sleep(g.stall)
	}
	return fmt.Sprintf("%s %s/%s %s", g.name, g.group, g.version, who), nil
}

// GreeterClient is filled in by dubbo-go with a proxy.
type GreeterClient struct {
	Hello func(ctx context.Context, who string) (string, error)
}

func (*GreeterClient) Reference() string { return "GreeterClient" }

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(s string) error { *l = append(*l, s); return nil }

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dubbo-peer provide|consume [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "provide":
		err = provide(os.Args[2:])
	case "consume":
		err = consume(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dubbo-peer:", err)
		os.Exit(1)
	}
}

func provide(args []string) error {
	fs := flag.NewFlagSet("provide", flag.ExitOnError)
	name := fs.String("name", "provider", "name in every answer")
	port := fs.String("port", "20880", "dubbo port")
	stall := fs.Duration("stall", 0, "sleep this long before answering a call whose argument starts with \"stall\"")
	var exports list
	fs.Var(&exports, "export", "group:version to export (repeatable; ':' is the default)")
	fs.Parse(args)
	if len(exports) == 0 {
		exports = list{":"}
	}
	pb := config.NewProviderConfigBuilder()
	for i, e := range exports {
		group, version, ok := strings.Cut(e, ":")
		if !ok {
			return fmt.Errorf("-export %q is not group:version", e)
		}
		g := &Greeter{ref: fmt.Sprintf("Greeter%d", i), name: *name, group: group, version: version, stall: *stall}
		config.SetProviderService(g)
		pb.AddService(g.ref, config.NewServiceConfigBuilder().
			SetInterface(iface).SetProtocolIDs("dubbo").SetSerialization("hessian2").
			SetGroup(group).SetVersion(version).SetNotRegister(true).Build())
	}
	rc := config.NewRootConfigBuilder().
		SetProvider(pb.Build()).
		AddProtocol("dubbo", config.NewProtocolConfigBuilder().SetName("dubbo").SetPort(*port).Build()).
		Build()
	if err := config.Load(config.WithRootConfig(rc)); err != nil {
		return fmt.Errorf("start provider: %w", err)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
	return nil
}

func consume(args []string) error {
	fs := flag.NewFlagSet("consume", flag.ExitOnError)
	url := fs.String("url", "", "dubbo://host:port of the service")
	calls := fs.Int("calls", 10, "sequential calls")
	group := fs.String("group", "", "group of the reference")
	version := fs.String("version", "", "version of the reference")
	conns := fs.Int("conns", 1, "connections to the address (dubbo-go's getty pool; its default is 16)")
	parallel := fs.Int("parallel", 1, "goroutines making the calls")
	stallEvery := fs.Int("stall", 0, "name every Nth call stall<i> (0: none)")
	report := fs.Bool("report", false, "print ok|err, call number, milliseconds and answer per call; go on past failures")
	fs.Parse(args)
	if *url == "" {
		return fmt.Errorf("-url is required")
	}
	c := &GreeterClient{}
	config.SetConsumerService(c)
	rc := config.NewRootConfigBuilder().
		SetConsumer(config.NewConsumerConfigBuilder().SetCheck(false).SetRequestTimeout("10s").
			AddReference("GreeterClient", config.NewReferenceConfigBuilder().
				SetInterface(iface).SetProtocol("dubbo").SetSerialization("hessian2").
				SetURL(*url).SetGroup(*group).SetVersion(*version).SetRetries("0").Build()).
			Build()).
		AddProtocol("dubbo", config.NewProtocolConfigBuilder().SetName("dubbo").
			SetParams(map[string]any{"connection-number": *conns}).Build()).
		Build()
	if err := config.Load(config.WithRootConfig(rc)); err != nil {
		return fmt.Errorf("start consumer: %w", err)
	}
	// Calls are numbered; each goroutine takes the next number.
	var (
		mu   sync.Mutex
		next int
		ferr error
		wg   sync.WaitGroup
		lat  = make([]time.Duration, 0, *calls)
	)
	start := time.Now()
	for range max(*parallel, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				mu.Lock()
				i := next
				next++
				stop := i >= *calls || ferr != nil
				mu.Unlock()
				if stop {
					return
				}
				arg := fmt.Sprintf("call%d", i)
				if *stallEvery > 0 && i%*stallEvery == 0 {
					arg = fmt.Sprintf("stall%d", i)
				}
				t0 := time.Now()
				s, err := c.Hello(context.Background(), arg)
				took := time.Since(t0)
				mu.Lock()
				lat = append(lat, took)
				if *report {
					if err != nil {
						fmt.Printf("err %d %d %s\n", i, took.Milliseconds(), strings.ReplaceAll(err.Error(), "\n", " "))
					} else {
						fmt.Printf("ok %d %d %s\n", i, took.Milliseconds(), s)
					}
				} else if err != nil && ferr == nil {
					ferr = fmt.Errorf("call %d: %w", i, err)
				} else if err == nil && *parallel <= 1 {
					fmt.Println(s)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if *parallel > 1 {
		elapsed := time.Since(start)
		slices.Sort(lat)
		pct := func(q float64) float64 {
			if len(lat) == 0 {
				return 0
			}
			return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds())
		}
		fmt.Printf("calls %d elapsed_s %.3f p50_us %.0f p99_us %.0f\n", len(lat), elapsed.Seconds(), pct(0.5), pct(0.99))
	}
	return ferr
}
