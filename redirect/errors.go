package redirect

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNetnsNotExist is wrapped by every error about a network namespace path
// that does not exist (the pod is gone). Remove treats it as success so a CNI
// DEL after the sandbox died still succeeds; Apply and Verify return it.
var ErrNetnsNotExist = errors.New("network namespace does not exist")

// Error is a failed run of an iptables tool. It keeps the whole command line,
// the exit status and what the tool printed on stderr, because iptables
// explains itself only there.
type Error struct {
	// Argv is the command as run, program first.
	Argv []string
	// ExitStatus is the tool's exit code, or -1 when it did not run or was killed.
	ExitStatus int
	// Stderr is what the tool printed on stderr, trimmed.
	Stderr string
	// Err is the underlying error from os/exec.
	Err error
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("%s: exit status %d", strings.Join(e.Argv, " "), e.ExitStatus)
	if e.ExitStatus < 0 && e.Err != nil {
		msg = fmt.Sprintf("%s: %v", strings.Join(e.Argv, " "), e.Err)
	}
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// IsNotExist reports whether the tool failed because a chain, rule or table
// it was asked about is absent, which teardown can treat as done.
func (e *Error) IsNotExist() bool {
	for _, s := range []string{
		"No chain/target/match by that name",
		"does a matching rule exist",
		"Couldn't load target",
		"Table does not exist",
		"No such file or directory",
	} {
		if strings.Contains(e.Stderr, s) {
			return true
		}
	}
	return false
}

// IsNotExist reports whether err means the thing it is about is already gone:
// a network namespace path that does not exist or an iptables object that is
// absent.
func IsNotExist(err error) bool {
	if errors.Is(err, ErrNetnsNotExist) {
		return true
	}
	var e *Error
	return errors.As(err, &e) && e.IsNotExist()
}

// VerifyError lists everything Verify found missing or out of place, one
// problem per entry, each naming the table, chain and rule (or route) at
// fault.
type VerifyError struct {
	Problems []string
}

func (e *VerifyError) Error() string {
	return "redirect incomplete: " + strings.Join(e.Problems, "; ")
}
