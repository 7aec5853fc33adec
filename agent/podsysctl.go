package agent

import (
	"bytes"
	"errors"

	"github.com/weir-mesh/weir/internal/sysfile"
	"github.com/weir-mesh/weir/proxy/netns"
)

// sysctlRoots are where a pod's per-netns net.ipv4 sysctls can be read and
// written: /proc/sys is read-only in most containers, so the DaemonSet also
// mounts it under /host. A sysctl file serves the netns of the thread that
// opens it, so these are opened inside the pod's namespace.
var sysctlRoots = []string{"/proc/sys/net/ipv4/", "/host/proc/sys/net/ipv4/"}

// The values of capture.tcpTimestamps.
const (
	// timestampsMonotonic: REDIRECT pods get net.ipv4.tcp_timestamps=2.
	timestampsMonotonic = "monotonic"
	// timestampsKeep: the pod's setting is left alone.
	timestampsKeep = "keep"
)

// tunePod sets, in one visit to the pod's namespace, the sysctls capture
// relies on:
//   - tcp_migrate_req=1, so connections queued on a closing listener move
//     to the successor's SO_REUSEPORT listener in a takeover instead of
//     being reset;
//   - with monotonicTS, tcp_timestamps from 1 (a random clock offset per
//     source and destination address) to 2 (no offset). Under REDIRECT
//     every outbound connection of the pod ends at the agent's one
//     listener address, so the agent's TIME_WAIT sockets compare the
//     timestamps of connections the app made to different destinations;
//     with per-destination offsets PAWS drops a new SYN as old, and the
//     app's connect stalls for a second or more (docs/design.md, "REDIRECT
//     and TIME_WAIT"). Any value other than 1 is the operator's and stays.
func tunePod(ns *netns.Handle, monotonicTS bool) (migrate, timestamps error) {
	err := ns.Do(func() error {
		migrate = writeSysctl("tcp_migrate_req", "1")
		if monotonicTS {
			if v, err := readSysctl("tcp_timestamps"); err != nil {
				timestamps = err
			} else if v == "1" {
				timestamps = writeSysctl("tcp_timestamps", "2")
			}
		}
		return nil
	})
	if err != nil {
		return err, err
	}
	return migrate, timestamps
}

// restoreTimestamps gives a pod released from REDIRECT capture back the
// kernel's default, random timestamp offsets, when tunePod's value is
// still there.
func restoreTimestamps(ns *netns.Handle) error {
	return ns.Do(func() error {
		v, err := readSysctl("tcp_timestamps")
		if err != nil || v != "2" {
			return err
		}
		return writeSysctl("tcp_timestamps", "1")
	})
}

// readSysctl reads net.ipv4.<name> of the calling thread's namespace.
func readSysctl(name string) (string, error) {
	var errs []error
	for _, root := range sysctlRoots {
		var buf [32]byte
		b, err := sysfile.Read(root+name, buf[:])
		if err == nil {
			return string(bytes.TrimSpace(b)), nil
		}
		errs = append(errs, err)
	}
	return "", errors.Join(errs...)
}

// writeSysctl sets net.ipv4.<name> in the calling thread's namespace
// through the first root that takes it.
func writeSysctl(name, value string) error {
	var errs []error
	for _, root := range sysctlRoots {
		err := sysfile.Write(root+name, value)
		if err == nil {
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
