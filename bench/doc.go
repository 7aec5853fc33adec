// Package bench is weir's side-by-side performance suite (`make bench`).
//
// It builds a test world of network namespaces with integration/testworld
// (a node, a server pod, a captured client pod per weir mode and an
// uncaptured one, all attached through the real CNI chain) and drives the
// same loads over every path: direct, weir in each interception mode (its
// L7 half, on services of protocol auto, and its L4 relay, on the same
// services declared tcp), and peer proxies placed where weir's listener
// sits (nginx stream and http, haproxy tcp and http, a plain Go splice
// relay), reached through the same kind of iptables REDIRECT rule weir-cni
// installs. Loads are keep-alive HTTP/1.1 and a connection per request
// (wrk), keep-alive HTTP/2 with prior knowledge (h2load), single-stream
// bulk (iperf3) and small-message ping-pong (a Go client and echo server
// of its own).
//
// Cells run interleaved over several rounds; the report has medians of the
// client's rate and latency and of the proxy's own CPU per unit of work
// (/proc/PID/stat) and peak RSS (VmHWM), ratios to the best peer, and weir's
// performance targets. With a profile directory it also counts each
// proxy's syscalls and context switches with perf and samples weir-agent:
// its CPU, and every context switch and wake-up with its call chain
// (<path>-<workload>.sched.txt), which says which runtime or kernel path
// parks and wakes the agent's threads.
//
// Every load is bounded in time and only reaches addresses inside the
// namespaces the bench created. Run needs root and the Debian packages
// hack/deps.sh installs; the helper programs run by re-executing the
// binary, so a program or test binary embedding the bench must call
// HelperMain first.
package bench
