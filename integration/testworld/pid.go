package testworld

// Pid is the agent's process id, for accounting its CPU and memory from
// /proc/PID (the benchmarks do). `ip netns exec` replaces itself with
// weir-agent, so the started command's process is the agent itself. It is 0
// before the agent started.
func (a *Agent) Pid() int {
	if a.cmd == nil || a.cmd.Process == nil {
		return 0
	}
	return a.cmd.Process.Pid
}
