// Command weirctl is weir's node CLI: it asks the weir-agent on this node
// (its admin endpoint, 127.0.0.1:15020 by default) what it captures,
// routes and balances, and shows it as tables or JSON. Inside the agent's
// DaemonSet pod (hostNetwork) the default address works as it is:
//
//	kubectl exec -n weir-system ds/weir-agent -- weirctl pods
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const defaultAdmin = "127.0.0.1:15020"

const usage = `weirctl: ask the weir-agent on this node what it does.

Usage: weirctl COMMAND [ARGS] [FLAGS]

Commands:
  pods               known pods: captured or not, mode, why
  rules POD          weir's rules in a pod's netns (namespace/name), verified against its capture
  routes [SERVICE]   services: addresses, balancer, endpoints healthy/total, connections
  endpoints SERVICE  a service's endpoints: health, ejection, active connections
  top                live per-cluster, per-protocol and per-route rates from /metrics
  config             the agent's configuration
  help               this text

Flags (anywhere on the line):
  --admin ADDR       the agent's admin endpoint, host:port or unix:/path (default $WEIR_ADMIN, else 127.0.0.1:15020)
  -o table|json      output form (default table)
  --timeout D        bound on each call to the agent (default 5s)
  --interval D       top: time between two samples (default 2s)
  --count N          top: how many screens to print before exiting (default 1)
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr))
}

// options are the flags every command accepts.
type options struct {
	admin    string
	output   string
	timeout  time.Duration
	interval time.Duration
	count    int
}

// usageError is a mistake on the command line (exit status 2).
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// parse reads flags anywhere among the arguments and returns the
// positional ones.
func parse(args []string, getenv func(string) string) (options, []string, error) {
	o := options{admin: defaultAdmin}
	if a := getenv("WEIR_ADMIN"); a != "" {
		o.admin = a
	}
	fs := flag.NewFlagSet("weirctl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&o.admin, "admin", o.admin, "")
	fs.StringVar(&o.output, "o", "table", "")
	fs.StringVar(&o.output, "output", "table", "")
	fs.DurationVar(&o.timeout, "timeout", 5*time.Second, "")
	fs.DurationVar(&o.interval, "interval", 2*time.Second, "")
	fs.IntVar(&o.count, "count", 1, "")
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return o, []string{"help"}, nil
			}
			return o, nil, usagef("%v", err)
		}
		args = fs.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	switch {
	case o.output != "table" && o.output != "json":
		return o, nil, usagef("-o %q: want table or json", o.output)
	case o.admin == "":
		return o, nil, usagef("--admin is empty: want host:port or unix:/path")
	case o.timeout <= 0:
		return o, nil, usagef("--timeout must be positive")
	case o.interval <= 0:
		return o, nil, usagef("--interval must be positive")
	case o.count < 1:
		return o, nil, usagef("--count must be at least 1")
	}
	return o, pos, nil
}

// run is the whole command; it returns the exit status: 0 done, 1 failed
// (including rules that do not verify), 2 bad command line.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	o, pos, err := parse(args, getenv)
	if err == nil && len(pos) == 0 {
		err = usagef("no command given")
	}
	if err != nil {
		fmt.Fprintf(stderr, "weirctl: %v\n\n%s", err, usage)
		return 2
	}
	c := newClient(o.admin, o.timeout)
	cmd, rest := pos[0], pos[1:]
	argc := func(min, max int) error {
		if len(rest) < min || len(rest) > max {
			return usagef("%s: wrong number of arguments", cmd)
		}
		return nil
	}
	switch cmd {
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	case "pods":
		if err = argc(0, 0); err == nil {
			err = cmdPods(ctx, c, o, stdout)
		}
	case "rules":
		if err = argc(1, 1); err == nil {
			err = cmdRules(ctx, c, o, rest[0], stdout)
		}
	case "routes":
		if err = argc(0, 1); err == nil {
			err = cmdRoutes(ctx, c, o, strings.Join(rest, ""), stdout)
		}
	case "endpoints":
		if err = argc(1, 1); err == nil {
			err = cmdEndpoints(ctx, c, o, rest[0], stdout)
		}
	case "top":
		if err = argc(0, 0); err == nil {
			err = cmdTop(ctx, c, o, stdout)
		}
	case "config":
		if err = argc(0, 0); err == nil {
			err = cmdConfig(ctx, c, o, stdout)
		}
	default:
		err = usagef("unknown command %q", cmd)
	}
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "weirctl: %v\n\n%s", err, usage)
		return 2
	case errors.Is(err, errNotVerified):
		return 1
	case err != nil:
		fmt.Fprintf(stderr, "weirctl: %v\n", err)
		return 1
	}
	return 0
}
