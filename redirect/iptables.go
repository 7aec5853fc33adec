package redirect

import (
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"sync"
)

// label names a backend and family in messages the way an operator would
// type the command: "iptables", "ip6tables-legacy".
func (t tools) label(inUse bool) string {
	prog := "iptables"
	if t.family == ipv6 {
		prog = "ip6tables"
	}
	if !inUse {
		prog += "-" + t.backend
	}
	return prog
}

// read returns weir's part of the current rules of one backend and family in
// the calling thread's network namespace. It runs the save program without
// -t, so tables that do not exist yet are not created by looking at them.
func (t tools) read() (ruleSet, error) {
	out, err := run([]string{t.save}, nil)
	if err != nil {
		return nil, err
	}
	st, err := parseSave(out)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", t.save, err)
	}
	return weirView(st), nil
}

// reconcile turns the rules from cur (as read just before) into want with
// one iptables-restore --noflush. If that restore fails, reconcile puts back
// what it may have half-changed (legacy restore commits table by table) and
// returns the failure. If the rules changed under it between the read and
// the restore (another writer), it reads again and retries a few times.
func (t tools) reconcile(cur, want ruleSet) error {
	const attempts = 3
	orig := cur
	for i := 1; ; i++ {
		payload := restorePayload(cur, want)
		if payload == "" {
			return nil
		}
		err := t.restoreText(payload)
		if err == nil {
			return nil
		}
		now, rerr := t.read()
		if rerr != nil {
			return errors.Join(err, fmt.Errorf("read rules after failed restore: %w", rerr))
		}
		if sameRules(now, cur) {
			// Nothing committed: the restore failed as a whole.
			return err
		}
		if i >= attempts {
			// Part of it committed, or someone keeps changing the
			// chains: go back to what was there before we started.
			if back := restorePayload(now, orig); back != "" {
				if uerr := t.restoreText(back); uerr != nil {
					return errors.Join(err, fmt.Errorf("undo partial restore: %w", uerr))
				}
			}
			return err
		}
		slog.Debug("redirect: rules changed during restore, retrying", "tools", t.String(), "attempt", i, "error", err)
		cur = now
	}
}

// errorLine finds the line iptables-restore names in its error. It is
// compiled at the first failure, not at package init: every weir-cni
// process (each pod's ADD and DEL) would pay for it, and only a failing
// restore reads it.
var errorLine = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`[Ee]rror occurred at line: (\d+)`) })

// restoreText feeds payload to iptables-restore --noflush, waiting for the
// xtables lock. When the tool names the failing line, the error quotes it.
func (t tools) restoreText(payload string) error {
	_, err := run([]string{t.restore, "--noflush", "-w", lockWaitSeconds}, []byte(payload))
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		if m := errorLine().FindStringSubmatch(e.Stderr); m != nil {
			n, _ := strconv.Atoi(m[1])
			lines := strings.Split(payload, "\n")
			if n >= 1 && n <= len(lines) {
				return fmt.Errorf("restore line %d %q: %w", n, lines[n-1], err)
			}
		}
	}
	return err
}

func sameRules(a, b ruleSet) bool {
	return restorePayload(a, b) == ""
}
