package bench

import (
	"fmt"
	"os"
	"runtime"
	"strconv"

	"golang.org/x/sys/unix"
)

// pinCPU is the CPU the pinned workloads run on: the last one, so the
// first keeps the machine's other work.
func pinCPU() int { return runtime.NumCPU() - 1 }

// pinPath pins every thread of the path's proxy processes (with their
// children) and of the servers it uses to pinCPU, and returns what puts
// each thread back on the CPUs it had. Threads started while pinned
// inherit the pin; the restore gives them their process's old set.
func pinPath(p *path) (restore func(), err error) {
	roots, err := p.procs.pids()
	if err != nil {
		return nil, err
	}
	for _, d := range p.deps {
		roots = append(roots, d.pid())
	}
	var pids []int
	seen := map[int]bool{}
	for len(roots) > 0 {
		pid := roots[0]
		roots = roots[1:]
		if seen[pid] {
			continue
		}
		seen[pid] = true
		pids = append(pids, pid)
		c, err := children(pid)
		if err != nil {
			return nil, err
		}
		roots = append(roots, c...)
	}
	var one unix.CPUSet
	one.Set(pinCPU())
	saved := map[int]unix.CPUSet{} // by pid: its first thread's set
	restore = func() {
		for _, pid := range pids {
			set, ok := saved[pid]
			if !ok {
				continue
			}
			for _, tid := range threads(pid) {
				unix.SchedSetaffinity(tid, &set) // best effort: a thread may have exited
			}
		}
	}
	for _, pid := range pids {
		for _, tid := range threads(pid) {
			var set unix.CPUSet
			if err := unix.SchedGetaffinity(tid, &set); err != nil {
				continue // exited meanwhile
			}
			if _, ok := saved[pid]; !ok {
				saved[pid] = set
			}
			if err := unix.SchedSetaffinity(tid, &one); err != nil {
				restore()
				return nil, fmt.Errorf("pin thread %d of pid %d to CPU %d: %w", tid, pid, pinCPU(), err)
			}
		}
	}
	return restore, nil
}

// threads lists a process's thread ids (none when it has exited).
func threads(pid int) []int {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil
	}
	var tids []int
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids
}
