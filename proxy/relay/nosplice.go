package relay

// NoSplice makes the relay h is then bound to (RelayWith) copy with read
// and write in both directions for its whole life, never splice. A socket
// in an eBPF sockmap (eBPF mode's acceleration of local pairs) receives
// what its peer sends into the sockmap's queue, which recvmsg reads and
// splice never sees: spliced, such a direction stalls or delivers bytes
// out of order (the integration test saw a different stream arrive). Call
// it before RelayWith.
func (h *Handle) NoSplice() { h.noSplice = true }
