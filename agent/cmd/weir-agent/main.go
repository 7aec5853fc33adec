// Command weir-agent is weir's node daemon. See the README for its
// configuration file.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/weir-mesh/weir/agent"
	"github.com/weir-mesh/weir/agent/procs"
)

// init keeps the main goroutine on the process's first thread, so no
// other goroutine ever runs there. The agent moves threads into pod
// network namespaces (briefly, around socket()); /proc/self/ns/net and
// /proc/<pid>/ns/net name the first thread's namespace, and must always
// be the agent's own: the netns guard and anyone inspecting the agent rely
// on it.
func init() { runtime.LockOSThread() }

func main() {
	os.Exit(run())
}

func run() int {
	configPath := flag.String("config", "", "path of the YAML configuration file (empty: built-in defaults)")
	checkOnly := flag.Bool("check-config", false, "validate the configuration and exit")
	standby := flag.Bool("standby", false, "run as the hot standby of the agent on the config's socket (same as standby.enabled: true), so one config file serves both")
	probe := flag.String("probe", "", "ask this container's agent for /readyz or /healthz over the config's probeSocket and exit 0 if it answers 200 (an exec probe: the admin address may be shared with another agent during a takeover)")
	uninstallEBPF := flag.Bool("uninstall-ebpf", false, "remove the eBPF capture pinned under capture.ebpf.pinPath (detaching every program) and exit")
	flag.Parse()

	// Without a file, the defaults still go through ParseConfig: it derives
	// stateDir from the socket (DefaultConfig leaves it empty, which would
	// put the state file in the working directory).
	cfg, err := agent.ParseConfig(nil)
	if *configPath != "" {
		cfg, err = agent.LoadConfig(*configPath)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "weir-agent: %v\n", err)
		return 2
	}
	if *standby {
		cfg.Standby.Enabled = true
	}
	if *checkOnly {
		fmt.Println("configuration ok")
		return 0
	}
	if *probe != "" {
		if cfg.ProbeSocket == "" {
			fmt.Fprintln(os.Stderr, "weir-agent: --probe needs probeSocket in the configuration")
			return 2
		}
		if err := agent.Probe(agent.ProbeSocketPath(cfg), *probe, 4*time.Second); err != nil {
			fmt.Fprintf(os.Stderr, "weir-agent: %v\n", err)
			return 1
		}
		return 0
	}
	if *uninstallEBPF {
		if err := agent.UninstallEBPF(cfg); err != nil {
			fmt.Fprintf(os.Stderr, "weir-agent: %v\n", err)
			return 1
		}
		return 0
	}
	var level slog.Level
	level.UnmarshalText([]byte(cfg.LogLevel))
	log := slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	a, err := agent.New(cfg, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	stopProcs, err := sizeProcs(ctx, cfg.Runtime, a, log)
	if err != nil {
		log.Error("cannot start", "err", err)
		return 1
	}
	defer stopProcs()
	// SIGHUP re-reads the file and swaps in its services; a bad file is
	// logged and changes nothing.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			if *configPath == "" {
				continue
			}
			next, err := agent.LoadConfig(*configPath)
			if *standby {
				next.Standby.Enabled = true
			}
			if err == nil {
				err = a.Reload(next)
			}
			if err != nil {
				log.Error("reload refused, keeping the running config", "err", err)
			}
		}
	}()
	if err := a.Run(ctx); err != nil {
		log.Error("agent failed", "err", err)
		return 1
	}
	return 0
}

// sizeProcs applies runtime.procs: nothing for max, a fixed GOMAXPROCS for a
// number, the load-following controller for auto. The returned function
// stops the controller and waits for it.
func sizeProcs(ctx context.Context, rt agent.Runtime, a *agent.Agent, log *slog.Logger) (func(), error) {
	if err := a.RegisterMetrics(procs.ProcsGauge()); err != nil {
		return nil, err
	}
	def := runtime.GOMAXPROCS(0)
	if n, ok := rt.Procs.Fixed(); ok {
		runtime.GOMAXPROCS(n)
		log.Info("gomaxprocs fixed by runtime.procs", "procs", n, "runtimeDefault", def)
		return func() {}, nil
	}
	if rt.Procs != agent.ProcsAuto {
		return func() {}, nil
	}
	c, err := procs.New(procs.Settings{Min: rt.MinProcs, Max: def}, log)
	if err != nil {
		return nil, fmt.Errorf("runtime.procs auto: %w", err)
	}
	if err := a.RegisterMetrics(c.Collectors()...); err != nil {
		return nil, err
	}
	log.Info("gomaxprocs follows the load (runtime.procs: auto)", "min", min(rt.MinProcs, def), "max", def)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	return func() { cancel(); <-done }, nil
}
