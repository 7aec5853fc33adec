package redis

import (
	"bytes"
	"strconv"

	"github.com/weir-mesh/weir/proxy/rpc"
)

// upper copies a command name folded to upper case into buf; names longer
// than buf come back empty (no command that matters here is that long).
func upper(name []byte, buf *[24]byte) []byte {
	if len(name) > len(buf) {
		return nil
	}
	for i, c := range name {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(name)]
}

// pinning lists the commands that cannot be balanced one by one, and why:
//
//   - transactions (MULTI, WATCH): the commands queued after MULTI and the
//     EXEC, and the keys WATCH watches, belong to one server connection;
//   - subscriptions (SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE) and MONITOR turn
//     the connection into a stream of messages nobody asked for;
//   - blocking reads (BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BLMPOP, BZPOPMIN,
//     BZPOPMAX, BZMPOP, and XREAD or XREADGROUP with BLOCK) would stall
//     every other client's replies behind them on a shared connection;
//   - connection state (SELECT, AUTH, HELLO, CLIENT, RESET, READONLY,
//     READWRITE, ASKING) would change the shared connection for everyone
//     (HELLO 3 also switches it to RESP3 pushes; CLIENT REPLY OFF stops
//     replies);
//   - WAIT and WAITAOF wait for this connection's own writes; QUIT closes
//     the connection it is sent on; SYNC and PSYNC make it a replica link.
//
// A switch, not a map: the compiler turns it into a search by length and
// bytes, with no hash of the name per command.
func pinning(name []byte) bool {
	switch string(name) {
	case "MULTI", "WATCH",
		"SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR",
		"BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BLMPOP",
		"BZPOPMIN", "BZPOPMAX", "BZMPOP",
		"SELECT", "AUTH", "HELLO", "CLIENT", "RESET",
		"READONLY", "READWRITE", "ASKING",
		"WAIT", "WAITAOF", "QUIT", "SYNC", "PSYNC":
		return true
	}
	return false
}

// Pinning command names are 4 to 10 bytes long (XREAD and XREADGROUP
// included): a name of another length needs no closer look.
const minPinning, maxPinning = 4, 10

// pins reports whether a command must pin its connection.
func pins(f *Frame) bool {
	name := f.Arg(0)
	if len(name) < minPinning || len(name) > maxPinning {
		return false
	}
	var buf [24]byte
	name = upper(name, &buf)
	if pinning(name) {
		return true
	}
	if string(name) == "XREAD" || string(name) == "XREADGROUP" {
		for i := 1; i < f.nargs; i++ {
			a := upper(f.Arg(i), &buf)
			switch string(a) {
			case "BLOCK":
				return true
			case "STREAMS":
				return false
			}
		}
	}
	return false
}

// keyless are commands with no key argument: they are balanced by the
// client's address, not by a key.
var keyless = map[string]bool{
	"PING": true, "ECHO": true, "INFO": true, "DBSIZE": true, "TIME": true,
	"FLUSHALL": true, "FLUSHDB": true, "SCAN": true, "KEYS": true, "RANDOMKEY": true,
	"CONFIG": true, "COMMAND": true, "SCRIPT": true, "FUNCTION": true, "LASTSAVE": true,
	"PUBLISH": true, "SPUBLISH": true, "PUBSUB": true, "SLOWLOG": true, "LATENCY": true,
	"MEMORY": true, "OBJECT": true, "DEBUG": true, "SAVE": true, "BGSAVE": true,
	"BGREWRITEAOF": true, "ROLE": true, "LOLWUT": true, "SWAPDB": true,
	"UNSUBSCRIBE": true, "PUNSUBSCRIBE": true, "SUNSUBSCRIBE": true,
	"EXEC": true, "DISCARD": true, "UNWATCH": true,
}

// firstKey finds a command's first key: argument 1 for most commands; the
// first after numkeys for EVAL and FCALL and their variants; the first
// after STREAMS for XREAD and XREADGROUP; none for keyless ones.
func (f *Frame) firstKey() []byte {
	if f.kind != rpc.Request || f.nargs < 2 {
		return nil
	}
	var buf [24]byte
	name := upper(f.Arg(0), &buf)
	switch string(name) {
	case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
		if n, err := strconv.Atoi(string(f.Arg(2))); err != nil || n < 1 {
			return nil
		}
		return f.Arg(3)
	case "XREAD", "XREADGROUP":
		for i := 1; i < f.nargs-1; i++ {
			if bytes.EqualFold(f.Arg(i), []byte("STREAMS")) {
				return f.Arg(i + 1)
			}
		}
		return nil
	case "BITOP":
		return f.Arg(2)
	}
	if keyless[string(name)] {
		return nil
	}
	return f.Arg(1)
}

// hashKey hashes a key for the hash balancers, the same on every node
// (FNV-1a, then a finalizer to spread it over the ring). As in Redis
// Cluster, a key with a non-empty {tag} hashes only the tag, so keys that
// share one land together.
func hashKey(k []byte) uint64 {
	if i := bytes.IndexByte(k, '{'); i >= 0 {
		if j := bytes.IndexByte(k[i+1:], '}'); j > 0 {
			k = k[i+1 : i+1+j]
		}
	}
	h := uint64(14695981039346656037)
	for _, c := range k {
		h ^= uint64(c)
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}
