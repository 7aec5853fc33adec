package redirect

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"time"
)

// lockWaitSeconds bounds how long a restore waits for the xtables lock that
// kube-proxy and other agents on the node share. A CNI ADD must not hang for
// ever behind a stuck holder; past this the ADD fails and is retried.
const lockWaitSeconds = "30"

// runTimeout kills a tool that neither finishes nor fails, so callers always
// get an answer. It is longer than the lock wait.
const runTimeout = 60 * time.Second

// runHook, when set (tests only), sees every program run starts.
var runHook func(argv []string)

// run executes one iptables tool with stdin and returns its stdout. Every
// iptables program weir starts goes through here, so every failure comes
// back as an *Error with the command line, exit status and stderr. It runs
// in the network namespace of the calling OS thread: callers inside
// ns.NetNS.Do get the pod's.
func run(argv []string, stdin []byte) ([]byte, error) {
	if runHook != nil {
		runHook(argv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	e := &Error{Argv: argv, ExitStatus: -1, Stderr: strings.TrimSpace(stderr.String()), Err: err}
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) && exitErr.ExitCode() >= 0 {
		e.ExitStatus = exitErr.ExitCode()
	}
	if ctx.Err() != nil {
		e.Err = errors.Join(err, ctx.Err())
	}
	return nil, e
}
