package install

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

// Main runs `weir-cni install [flags]` or `weir-cni uninstall [flags]`: args
// are the command line after the program name, starting with the verb.
// weir-cni's main calls it when CNI_COMMAND is not set, and exits with the
// code it returns (0 done, 1 failed, 2 bad usage). SIGINT and SIGTERM stop a
// watching installer cleanly; weir's entry stays in place, so pods created
// while the installer restarts still reach weir-cni.
func Main(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: weir-cni install|uninstall [flags]  (-h for the flags)")
		return 2
	}
	o, err := ParseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if args[0] == "uninstall" {
		err = Uninstall(o)
	} else {
		err = Run(ctx, o)
	}
	if err != nil {
		o.Logger.Error("weir-cni "+args[0]+" failed", "err", err)
		return 1
	}
	return 0
}

// ParseFlags parses a command line that starts with the verb, "install" or
// "uninstall", into Options based on DefaultOptions. It checks the flags
// against each other but touches nothing on disk.
func ParseFlags(args []string) (Options, error) {
	o := DefaultOptions()
	if len(args) == 0 || (args[0] != "install" && args[0] != "uninstall") {
		return o, errors.New(`want "install" or "uninstall" as the first argument`)
	}
	verb := args[0]
	fs := flag.NewFlagSet("weir-cni "+verb, flag.ContinueOnError)
	fs.StringVar(&o.ConfDir, "cni-conf-dir", o.ConfDir, "the node's CNI conf dir, as mounted in this container")
	fs.StringVar(&o.BinDir, "cni-bin-dir", o.BinDir, "the node's CNI bin dir, as mounted in this container")
	fs.StringVar(&o.PluginType, "plugin-type", o.PluginType, "the plugin's conflist type and file name in the bin dir")
	level := fs.String("log-level", "info", "debug, info, warn or error")
	var once bool
	if verb == "install" {
		fs.StringVar(&o.BinarySource, "binary", "", "weir-cni binary to copy into the bin dir (default: this executable)")
		fs.StringVar(&o.Primary, "primary", "", "file in the conf dir to chain into (default: the first by name, as the runtime picks)")
		fs.StringVar(&o.AgentSocket, "agent-socket", o.AgentSocket, "agent socket path on the host, written into the conflist entry")
		fs.StringVar(&o.Mode, "mode", o.Mode, "capture mode written into the conflist entry: redirect or tproxy")
		fs.StringVar(&o.LogFile, "log-file", o.LogFile, `weir-cni log file on the host, written into the conflist entry ("" for none)`)
		fs.BoolVar(&once, "once", false, "install, then exit (the default)")
		fs.BoolVar(&o.Watch, "watch", false, "install, then keep repairing the conflist until stopped")
		fs.DurationVar(&o.WaitTimeout, "wait-timeout", 0, "give up if no CNI configuration appears within this time (0: wait forever)")
		fs.DurationVar(&o.Debounce, "debounce", o.Debounce, "quiet time after a change of the conf dir before it is re-read")
		fs.DurationVar(&o.Resync, "resync", o.Resync, "re-check the conflist this often even without a change event (0: never)")
	} else {
		fs.BoolVar(&o.RemoveBinary, "remove-binary", false, "also delete the plugin binary from the bin dir")
	}
	if err := fs.Parse(args[1:]); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("weir-cni %s: unexpected argument %q", verb, fs.Arg(0))
	}
	if once && o.Watch {
		return o, fmt.Errorf("weir-cni %s: --once and --watch exclude each other", verb)
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return o, fmt.Errorf("weir-cni %s: --log-level: %w", verb, err)
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lv}))
	if verb == "install" {
		if err := o.validate(); err != nil {
			return o, fmt.Errorf("weir-cni %s: %w", verb, err)
		}
	}
	return o, nil
}
