package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTick is USER_HZ, the unit of utime and stime in /proc/PID/stat. Linux
// fixes it at 100 on every architecture weir runs on.
const clockTick = 10 * time.Millisecond

// procCPU returns the user+system CPU time a process has used so far, all
// its threads included (live and exited), from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("read cpu of pid %d: %w", pid, err)
	}
	return parseStatCPU(b)
}

// procTimes returns the user and the system CPU time a process has used
// so far, as procCPU counts them.
func procTimes(pid int) (user, sys time.Duration, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("read cpu of pid %d: %w", pid, err)
	}
	return parseStatTimes(b)
}

// parseStatCPU reads utime and stime (fields 14 and 15) out of a
// /proc/PID/stat line, summed.
func parseStatCPU(b []byte) (time.Duration, error) {
	ut, st, err := parseStatTimes(b)
	return ut + st, err
}

// parseStatTimes reads utime and stime (fields 14 and 15) out of a
// /proc/PID/stat line. The command name (field 2) may hold spaces and
// parentheses, so fields are counted from its closing parenthesis.
func parseStatTimes(b []byte) (user, sys time.Duration, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("parse /proc stat: no command name in %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3 (state); utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("parse /proc stat: %d fields after the name", len(f))
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("parse stime: %w", err)
	}
	return time.Duration(ut) * clockTick, time.Duration(st) * clockTick, nil
}

// procHWM returns a process's peak resident set size (VmHWM) in bytes.
func procHWM(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of pid %d: %w", pid, err)
	}
	return parseHWM(b)
}

func parseHWM(b []byte) (int64, error) {
	for _, line := range strings.Split(string(b), "\n") {
		rest, ok := strings.CutPrefix(line, "VmHWM:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("parse VmHWM %q", line)
		}
		kb, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse VmHWM %q: %w", line, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("no VmHWM in /proc status")
}

// resetHWM starts a new peak-RSS window: writing 5 to clear_refs sets VmHWM
// back to the current RSS.
func resetHWM(pid int) error {
	if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
		return fmt.Errorf("reset peak rss of pid %d: %w", pid, err)
	}
	return nil
}

// children lists the direct children of pid (nginx's workers).
func children(pid int) ([]int, error) {
	var out []int
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, fmt.Errorf("list threads of pid %d: %w", pid, err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		if err != nil {
			continue // the thread exited meanwhile
		}
		for _, f := range strings.Fields(string(b)) {
			c, err := strconv.Atoi(f)
			if err != nil {
				return nil, fmt.Errorf("parse children of pid %d: %w", pid, err)
			}
			out = append(out, c)
		}
	}
	return out, nil
}

// procGroup is the set of processes that make up one proxy: the agent
// alone, nginx's master and workers, haproxy's one process.
type procGroup struct {
	root        int
	withWorkers bool
}

func (g procGroup) pids() ([]int, error) {
	if g.root == 0 {
		return nil, nil
	}
	pids := []int{g.root}
	if g.withWorkers {
		c, err := children(g.root)
		if err != nil {
			return nil, err
		}
		pids = append(pids, c...)
	}
	return pids, nil
}

// usage is one accounting snapshot of a proxy's processes.
type usage struct {
	pids []int
	cpu  map[int]time.Duration
}

// begin resets the peak RSS of every process and records its CPU so far.
func (g procGroup) begin() (*usage, error) {
	pids, err := g.pids()
	if err != nil {
		return nil, err
	}
	u := &usage{pids: pids, cpu: map[int]time.Duration{}}
	for _, p := range pids {
		if err := resetHWM(p); err != nil {
			return nil, err
		}
		c, err := procCPU(p)
		if err != nil {
			return nil, err
		}
		u.cpu[p] = c
	}
	return u, nil
}

// end returns the CPU the processes used since begin and the sum of their
// peak RSS since then.
func (u *usage) end() (time.Duration, int64, error) {
	var cpu time.Duration
	var rss int64
	for _, p := range u.pids {
		c, err := procCPU(p)
		if err != nil {
			return 0, 0, err
		}
		cpu += c - u.cpu[p]
		h, err := procHWM(p)
		if err != nil {
			return 0, 0, err
		}
		rss += h
	}
	return cpu, rss, nil
}

// machineBusy returns the CPU time the whole machine has spent busy so far
// (every CPU), from /proc/stat.
func machineBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("read machine cpu: %w", err)
	}
	return parseMachineBusy(b)
}

// parseMachineBusy sums user, nice, system, irq, softirq and steal of the
// aggregate "cpu" line of /proc/stat (idle and iowait are not busy; guest
// time is already counted in user).
func parseMachineBusy(b []byte) (time.Duration, error) {
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, fmt.Errorf("parse /proc/stat: first line %q is not the aggregate cpu line", line)
	}
	var sum uint64
	for _, i := range []int{1, 2, 3, 6, 7, 8} { // user nice system irq softirq steal
		v, err := strconv.ParseUint(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse /proc/stat field %d: %w", i, err)
		}
		sum += v
	}
	return time.Duration(sum) * clockTick, nil
}
